"""The shortcut study (config section `shortcut:`): confounded splits, counterfactuals that break
the correlation, one classifier per arm, and the per-group report."""

SHORTCUT = config["shortcut"]
SC = f"{RESULTS}/shortcut/{{dataset}}"


wildcard_constraints:
    arm="confounded|augmented|balanced|counterfactual",
    cfgroup="a_only|b_only",


localrules:
    shortcut_study,


def sc_section(name):
    """A params function: one `shortcut:` sub-section as JSON, with the global seed."""

    def params(wildcards):
        return as_json({"seed": config["seed"], **SHORTCUT.get(name, {})})

    return params


def sc_tables(wildcards):
    """The raw CheXpert tables the splits read (train.csv, valid.csv)."""
    prep = dataset_config(wildcards).get("prepare", {})
    folder = f"{raw_root(wildcards)}/{prep.get('dataset_dir', 'CheXpert-v1.0-small')}"
    return [f"{folder}/{name}" for name in prep.get("csvs", ["train.csv", "valid.csv"])]


def sc_table_options(wildcards):
    return " ".join(f"--table {shlex.quote(t)}" for t in sc_tables(wildcards))


def sc_raw_input(wildcards):
    """The twin's folder, or the real tables (so a changed CSV reruns the splits)."""
    if is_synthetic(wildcards.dataset):
        return [raw_root(wildcards)]
    return [t for t in sc_tables(wildcards) if Path(t).exists()]


CF = SHORTCUT.get("counterfactuals", {})
CF_KEYS = ("swap_step", "per_group", "filter", "threshold", "truth_detector")


def sc_traverse_params(wildcards):
    """The traverse settings of one counterfactual group: its prompt, one swap step, no Bezier."""
    attribute = CF["prompts"][wildcards.cfgroup]
    params = {
        **CF.get("traverse", {}),
        "swap_steps": [CF.get("swap_step", 10)],
        "bezier_frames": 0,
        "neutral": CF["neutral"],
        "attribute": attribute,
    }
    return as_json(params)


def sc_arm_params(wildcards):
    return as_json({"seed": config["seed"], **{k: CF[k] for k in CF_KEYS if k in CF}})


def sc_counterfactuals(wildcards):
    if wildcards.arm not in ("augmented", "counterfactual"):
        return []
    return [
        f"{RESULTS}/shortcut/{wildcards.dataset}/counterfactuals/{g}"
        for g in ("a_only", "b_only")
    ]


def sc_filter(wildcards):
    """The real-data classifiers that filter the counterfactuals, when `filter: true`."""
    if not CF.get("filter", False) or wildcards.arm not in (
        "augmented",
        "counterfactual",
    ):
        return []
    return classifier_dirs(wildcards)


def sc_option(flag, paths):
    return f"{flag} " + " ".join(shlex.quote(p) for p in paths) if paths else ""


def sc_shards_option(wildcards, input):
    return sc_option("--counterfactuals", input.counterfactuals)


def sc_filter_option(wildcards, input):
    return sc_option("--filter-classifier", input.filter)


def sc_classifier_params(wildcards):
    """One classifier setting for every arm (same budget and seed)."""
    base = dataset_config(wildcards).get("classifiers", {}).get("params", {})
    return as_json(
        {
            "seed": config["seed"],
            "preset": wildcards.dataset,
            **base,
            **SHORTCUT.get("classifier", {}),
        }
    )


def sc_attributes(wildcards):
    splits = SHORTCUT.get("splits", {})
    names = (splits.get("a", "Pleural Effusion"), splits.get("b", "Support Devices"))
    return ",".join(n.strip().lower().replace(" ", "_") for n in names)


def sc_arms():
    return SHORTCUT.get("arms", ["confounded", "augmented", "balanced"])


def sc_report_input(wildcards):
    inputs = {
        "splits": f"{RESULTS}/shortcut/{wildcards.dataset}/splits",
        "data": f"{RESULTS}/data/{wildcards.dataset}/prepared",
        "classifiers": [
            f"{RESULTS}/shortcut/{wildcards.dataset}/classifiers/{a}" for a in sc_arms()
        ],
        "src": stage_code("shortcut-report"),
    }
    if is_synthetic(wildcards.dataset):
        inputs["raw"] = raw_root(wildcards)
    return inputs


def sc_report_options(wildcards, input):
    arms = " ".join(
        f"--arm {a}={shlex.quote(c)}" for a, c in zip(sc_arms(), input.classifiers)
    )
    if is_synthetic(wildcards.dataset):
        arms += f" --factors {shlex.quote(input.raw + '/factors.parquet')}"
    return arms


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
        " --params {params.traverse:q} > {log:q} 2>&1"


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
    resources:
        gpu=1,
    params:
        attributes=sc_attributes,
        classifier=sc_classifier_params,
    shell:  # one --name for every arm: the same initial weights and batch order
        "medtraverse train-classifier --manifest {input.arm:q}/manifest.parquet"
        " --attributes {params.attributes:q} --name shortcut --out {output:q}"
        " --params {params.classifier:q} > {log:q} 2>&1"


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
