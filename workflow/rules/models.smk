"""Base model, the tiny base's VAE, the encoder cache, U-Net fine-tuning and a sample grid."""


rule build_base:
    input:
        src=stage_code("build-base"),
    output:
        directory(f"{RESULTS}/models/{{dataset}}/base"),
    log:
        f"{LOGS}/build_base/{{dataset}}.log",
    benchmark:
        f"{BENCH}/build_base/{{dataset}}.tsv"
    priority: 10  # the critical path: classifiers fill the other cores meanwhile
    conda:
        "../../envs/medtraverse.yaml"
    params:
        base=base_params,
    shell:
        "medtraverse build-base --out {output:q} --params {params.base:q} > {log:q} 2>&1"


rule train_vae:
    input:
        base=f"{RESULTS}/models/{{dataset}}/base",
        data=f"{RESULTS}/data/{{dataset}}/prepared",
        src=stage_code("train-vae"),
    output:
        directory(f"{RESULTS}/models/{{dataset}}/base-vae"),
    log:
        f"{LOGS}/train_vae/{{dataset}}.log",
    benchmark:
        f"{BENCH}/train_vae/{{dataset}}.tsv"
    priority: 10  # the critical path: classifiers fill the other cores meanwhile
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("train_vae")
    params:
        vae=vae_params,
    shell:
        "medtraverse train-vae --base {input.base:q} --manifest {input.data:q}/manifest.parquet"
        " --out {output:q} --params {params.vae:q} --threads {threads} > {log:q} 2>&1"


rule cache_encoders:
    input:
        base=base_pipeline,
        data=f"{RESULTS}/data/{{dataset}}/prepared",
        src=stage_code("cache"),
    output:
        directory(f"{RESULTS}/models/{{dataset}}/cache"),
    log:
        f"{LOGS}/cache_encoders/{{dataset}}.log",
    benchmark:
        f"{BENCH}/cache_encoders/{{dataset}}.tsv"
    priority: 10  # the critical path: classifiers fill the other cores meanwhile
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("cache")
    params:
        cache=section("cache"),
    shell:
        "medtraverse cache --base {input.base:q} --manifest {input.data:q}/manifest.parquet"
        " --out {output:q} --params {params.cache:q} --threads {threads} > {log:q} 2>&1"


rule finetune_unet:
    input:
        base=base_pipeline,
        cache=f"{RESULTS}/models/{{dataset}}/cache",
        src=stage_code("finetune"),
    output:
        directory(f"{RESULTS}/models/{{dataset}}/pipeline"),
    log:
        f"{LOGS}/finetune_unet/{{dataset}}.log",
    benchmark:
        f"{BENCH}/finetune_unet/{{dataset}}.tsv"
    priority: 10  # the critical path: classifiers fill the other cores meanwhile
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("finetune")
    resources:
        gpu=finetune_gpus,
    params:
        finetune=finetune_params,
        launcher=launcher,
        checkpoints=f"{RESULTS}/models/{{dataset}}/checkpoints",
    shell:
        "{params.launcher} finetune --base {input.base:q} --cache {input.cache:q}"
        " --checkpoints {params.checkpoints:q} --out {output:q} --params {params.finetune:q}"
        " --threads {threads} > {log:q} 2>&1"


rule sample_grid:
    input:
        model=f"{RESULTS}/models/{{dataset}}/pipeline",
        src=stage_code("sample-grid"),
    output:
        report(
            f"{RESULTS}/models/{{dataset}}/samples.png",
            category="Models",
            labels={"dataset": "{dataset}", "figure": "neutral vs attribute samples"},
        ),
    log:
        f"{LOGS}/sample_grid/{{dataset}}.log",
    benchmark:
        f"{BENCH}/sample_grid/{{dataset}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("sample_grid")
    params:
        samples=section("samples"),
    shell:
        "medtraverse sample-grid --model {input.model:q} --out {output:q}"
        " --params {params.samples:q} --threads {threads} > {log:q} 2>&1"
