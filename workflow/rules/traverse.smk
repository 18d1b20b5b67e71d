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


def invert_config(dataset):
    return config["datasets"][dataset].get("invert", {})


def invert_shards(dataset):
    """Shard ids of a dataset's inversion: contiguous image ranges of `shard_size`."""
    inv = invert_config(dataset)
    if not inv:
        return []
    return [
        f"{i:04d}" for i in range(math.ceil(inv["count"] / inv.get("shard_size", 16)))
    ]


def invert_range(wildcards):
    """(first row, number of rows) of the job's shard in the sorted selection."""
    inv = invert_config(wildcards.dataset)
    size = inv.get("shard_size", 16)
    first = int(wildcards.shard) * size
    return first, min(size, inv["count"] - first)


def invert_params(wildcards):
    return as_json(invert_config(wildcards.dataset).get("params", {}))


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
    resources:
        gpu=1,
    params:
        invert=invert_params,
        start=lambda wildcards: invert_range(wildcards)[0],
        image_count=lambda wildcards: invert_range(wildcards)[1],
    shell:
        "medtraverse invert --model {input.model:q} --out {output:q}"
        " --dataset {wildcards.dataset} --manifest {input.data:q}"
        " --start {params.start} --count {params.image_count}"
        " --params {params.invert:q} > {log:q} 2>&1"


def traverse_real_params(wildcards):
    """The dataset's sampler settings and the trajectory's attribute prompt; no neutral prompt:
    each image's own inversion prompt is its neutral one (the neutral run is its reconstruction).
    """
    params = dict(dataset_config(wildcards)["traverse"].get("params", {}))
    params.pop("neutral", None)
    params.update(attribute=trajectory(wildcards)["attribute"])
    return as_json(params)


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
    resources:
        gpu=1,
    params:
        traverse=traverse_real_params,
    shell:
        "medtraverse traverse-real --model {input.model:q} --inversion {input.inversion:q}"
        " --out {output:q} --dataset {wildcards.dataset} --trajectory {wildcards.trajectory}"
        " --params {params.traverse:q} > {log:q} 2>&1"
