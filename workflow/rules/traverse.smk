"""Traversal: one job per shard (a contiguous seed range of one trajectory)."""


rule traverse_shard:
    input:
        model=f"{RESULTS}/models/{{dataset}}/pipeline",
        src=stage_code("traverse"),
    output:
        directory(f"{RESULTS}/traversals/{{dataset}}/{{trajectory}}/shard-{{shard}}"),
    log:
        f"{LOGS}/traverse_shard/{{dataset}}/{{trajectory}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/traverse_shard/{{dataset}}/{{trajectory}}/{{shard}}.tsv"
    priority: 5  # the longest chain after fine-tuning; real images and the grid fill gaps
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("traverse")
    resources:
        gpu=1,
    params:
        traverse=traverse_params,
        seed_start=seed_start,
        seed_count=seed_count,
    shell:
        "medtraverse traverse --model {input.model:q} --out {output:q}"
        " --dataset {wildcards.dataset} --trajectory {wildcards.trajectory}"
        " --seed-start {params.seed_start} --seed-count {params.seed_count}"
        " --params {params.traverse:q} --threads {threads} > {log:q} 2>&1"


# --- real images: inversion, one job per shard of the prepared split's images ----------------


rule invert_shard:
    input:
        model=f"{RESULTS}/models/{{dataset}}/pipeline",
        data=f"{RESULTS}/data/{{dataset}}/prepared",
        src=stage_code("invert"),
    output:
        directory(f"{RESULTS}/inversions/{{dataset}}/shard-{{shard}}"),
    log:
        f"{LOGS}/invert_shard/{{dataset}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/invert_shard/{{dataset}}/{{shard}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("invert")
    resources:
        gpu=1,
    params:
        invert=invert_params,
        start=invert_start,
        image_count=invert_count,
    shell:
        "medtraverse invert --model {input.model:q} --out {output:q}"
        " --dataset {wildcards.dataset} --manifest {input.data:q}"
        " --start {params.start} --count {params.image_count}"
        " --params {params.invert:q} --threads {threads} > {log:q} 2>&1"


rule traverse_real_shard:
    input:
        model=f"{RESULTS}/models/{{dataset}}/pipeline",
        inversion=f"{RESULTS}/inversions/{{dataset}}/shard-{{shard}}",
        src=stage_code("traverse-real"),
    output:
        directory(f"{RESULTS}/real/{{dataset}}/{{trajectory}}/shard-{{shard}}"),
    log:
        f"{LOGS}/traverse_real_shard/{{dataset}}/{{trajectory}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/traverse_real_shard/{{dataset}}/{{trajectory}}/{{shard}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("traverse")
    resources:
        gpu=1,
    params:
        traverse=traverse_real_params,
    shell:
        "medtraverse traverse-real --model {input.model:q} --inversion {input.inversion:q}"
        " --out {output:q} --dataset {wildcards.dataset} --trajectory {wildcards.trajectory}"
        " --params {params.traverse:q} --threads {threads} > {log:q} 2>&1"
