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
    conda:
        "../../envs/medtraverse.yaml"
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
        " --params {params.traverse:q} > {log:q} 2>&1"
