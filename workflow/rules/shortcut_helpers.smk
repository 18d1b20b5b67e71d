"""Helpers of the shortcut study's rules (shortcut.smk): config sub-sections as params, inputs
and shell options."""

SHORTCUT = config["shortcut"]
SC = f"{RESULTS}/shortcut/{{dataset}}"


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
    """The counterfactual settings for the arms that add counterfactuals; the real-only arms
    get the seed alone, so changing the counterfactuals (filter, swap step, ...) leaves them.
    """
    if wildcards.arm not in ("augmented", "counterfactual"):
        return as_json({"seed": config["seed"]})
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
    return " ".join([flag, *(shlex.quote(p) for p in paths)]) if paths else ""


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
        factors = shlex.quote(str(Path(input.raw, "factors.parquet")))
        arms = f"{arms} --factors {factors}"
    return arms
