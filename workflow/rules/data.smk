"""Raw data to manifest: the synthetic twins (demo, tests) and dataset preparation."""


rule synthesize_dataset:
    input:
        src=stage_code("synth"),
    output:
        directory(f"{RESULTS}/data/{{dataset}}/raw"),
    log:
        f"{LOGS}/synthesize_dataset/{{dataset}}.log",
    benchmark:
        f"{BENCH}/synthesize_dataset/{{dataset}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("synth")
    params:
        synth=synth_params,
    shell:
        "medtraverse synth --dataset {wildcards.dataset} --out {output:q}"
        " --params {params.synth:q} --threads {threads} > {log:q} 2>&1"


rule annotate_artifacts:
    input:
        raw=annotate_input,
        src=stage_code("annotate-artifacts"),
    output:
        directory(ANNOTATED),
    log:
        f"{LOGS}/annotate_artifacts/isic.log",
    benchmark:
        f"{BENCH}/annotate_artifacts/isic.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("annotate")
    resources:
        gpu=1,
    params:
        root=annotate_root,
        annotations=annotations_table,
        annotate=annotate_params,
    shell:
        "medtraverse annotate-artifacts --root {params.root:q}"
        " --annotations {params.annotations:q} --out {output:q}"
        " --params {params.annotate:q} --threads {threads} > {log:q} 2>&1"


rule prepare_dataset:
    input:
        raw=raw_input,
        src=stage_code("prepare"),
    output:
        directory(f"{RESULTS}/data/{{dataset}}/prepared"),
    log:
        f"{LOGS}/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{BENCH}/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("prepare")
    params:
        root=raw_root,
        artifacts=artifacts_option,
        prepare=prepare_params,
    shell:
        "medtraverse prepare --dataset {wildcards.dataset} --root {params.root:q}"
        " {params.artifacts} --out {output:q} --params {params.prepare:q}"
        " --threads {threads} > {log:q} 2>&1"
