"""The shortcut study (config section `shortcut:`): confounded splits, counterfactuals that break
the correlation, one classifier per arm, and the per-group report."""


include: "shortcut_helpers.smk"


wildcard_constraints:
    arm="confounded|augmented|balanced|counterfactual",
    cfgroup="a_only|b_only",


localrules:
    shortcut_study,


rule shortcut_study:
    input:
        f"{RESULTS}/shortcut/{SHORTCUT['dataset']}/report",


rule shortcut_splits:
    input:
        data=f"{RESULTS}/data/{{dataset}}/prepared",
        raw=sc_raw_input,
        src=stage_code("shortcut-splits"),
    output:
        directory(f"{SC}/splits"),
    log:
        f"{LOGS}/shortcut_splits/{{dataset}}.log",
    benchmark:
        f"{BENCH}/shortcut_splits/{{dataset}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    params:
        splits=sc_section("splits"),
        tables=sc_table_options,
    shell:
        "medtraverse shortcut-splits --manifest {input.data:q}/manifest.parquet"
        " {params.tables} --out {output:q} --params {params.splits:q} > {log:q} 2>&1"


rule shortcut_counterfactuals:
    input:
        model=f"{RESULTS}/models/{{dataset}}/pipeline",
        src=stage_code("traverse"),
    output:
        directory(f"{SC}/counterfactuals/{{cfgroup}}"),
    log:
        f"{LOGS}/shortcut_counterfactuals/{{dataset}}/{{cfgroup}}.log",
    benchmark:
        f"{BENCH}/shortcut_counterfactuals/{{dataset}}/{{cfgroup}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("traverse")
    resources:
        gpu=1,
    params:
        traverse=sc_traverse_params,
        seed_start=CF.get("seeds", {}).get("start", 0),
        seed_count=CF.get("seeds", {}).get("count", 0),
    shell:
        "medtraverse traverse --model {input.model:q} --out {output:q}"
        " --dataset {wildcards.dataset} --trajectory {wildcards.cfgroup}"
        " --seed-start {params.seed_start} --seed-count {params.seed_count}"
        " --params {params.traverse:q} --threads {threads} > {log:q} 2>&1"


rule shortcut_arm:
    input:
        splits=f"{SC}/splits",
        data=f"{RESULTS}/data/{{dataset}}/prepared",
        counterfactuals=sc_counterfactuals,
        filter=sc_filter,
        src=stage_code("shortcut-arm"),
    output:
        directory(f"{SC}/arms/{{arm}}"),
    log:
        f"{LOGS}/shortcut_arm/{{dataset}}/{{arm}}.log",
    benchmark:
        f"{BENCH}/shortcut_arm/{{dataset}}/{{arm}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    resources:
        gpu=1,
    params:
        arm=sc_arm_params,
        shards=sc_shards_option,
        filter=sc_filter_option,
    shell:
        "medtraverse shortcut-arm --splits {input.splits:q} --prepared {input.data:q}"
        " --arm {wildcards.arm} {params.shards} {params.filter} --out {output:q}"
        " --params {params.arm:q} > {log:q} 2>&1"


rule shortcut_train:
    input:
        arm=f"{SC}/arms/{{arm}}",
        src=stage_code("train-classifier"),
    output:
        directory(f"{SC}/classifiers/{{arm}}"),
    log:
        f"{LOGS}/shortcut_train/{{dataset}}/{{arm}}.log",
    benchmark:
        f"{BENCH}/shortcut_train/{{dataset}}/{{arm}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("train_classifier")
    resources:
        gpu=1,
    params:
        attributes=sc_attributes,
        classifier=sc_classifier_params,
    shell:  # one --name for every arm: the same initial weights and batch order
        "medtraverse train-classifier --manifest {input.arm:q}/manifest.parquet"
        " --attributes {params.attributes:q} --name shortcut --out {output:q}"
        " --params {params.classifier:q} --threads {threads} > {log:q} 2>&1"


rule shortcut_report:
    input:
        unpack(sc_report_input),
    output:
        report(
            directory(f"{SC}/report"),
            patterns=["{name}.png", "{name}.csv"],
            category="Shortcut study",
            subcategory="{dataset}",
        ),
    log:
        f"{LOGS}/shortcut_report/{{dataset}}.log",
    benchmark:
        f"{BENCH}/shortcut_report/{{dataset}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    resources:
        gpu=1,
    params:
        report=sc_section("report"),
        options=sc_report_options,
    shell:
        "medtraverse shortcut-report --splits {input.splits:q} --prepared {input.data:q}"
        " {params.options} --out {output:q} --params {params.report:q} > {log:q} 2>&1"
