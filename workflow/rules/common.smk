"""Helpers for the stage files: paths, per-dataset config sections, shards, targets."""

import json
import math
import shlex
from dataclasses import fields
from pathlib import Path

from medtraverse.cli import STAGES
from medtraverse.config import check_real_data
from medtraverse.config import threads as config_threads
from medtraverse.core.imports import module_closure
from medtraverse.evaluation.score import ScoreParams

RESULTS = f"{config['results']}/{config['run']}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
SRC = Path(workflow.basedir) / "src" / "medtraverse"


localrules:
    all,


wildcard_constraints:
    dataset="chexpert|isic",
    trajectory="[a-z0-9_]+",
    classifier="[a-z0-9_]+",
    shard=r"\d{4}",


def dataset_config(wildcards):
    """The config section of the job's dataset."""
    return config["datasets"][wildcards.dataset]


def as_json(value):
    """Canonical JSON, so equal config gives equal params and no spurious reruns."""
    return json.dumps(value, sort_keys=True)


def section(name):
    """A params function returning one config section of the job's dataset as JSON."""

    def params(wildcards):
        return as_json(dataset_config(wildcards).get(name, {}))

    return params


THREADS = config_threads(config)


def rule_threads(name):
    """A heavy rule's `threads:`: config `threads.<name>`, defaults in config.Threads;
    the stage gets it as --threads and sets torch's threads."""
    return getattr(THREADS, name)


def stage_code(stage):
    """The files of every package module the stage runs (derived from its imports): editing
    any of them reruns exactly that stage's jobs."""
    return [str(p) for p in module_closure(STAGES[stage][0], SRC)]


# --- data -------------------------------------------------------------------------------------


def is_synthetic(dataset):
    return config["datasets"][dataset]["source"]["kind"] == "synthetic"


def raw_root(wildcards):
    """Where the raw dataset lives: the synthetic twin's folder or the user's copy."""
    if is_synthetic(wildcards.dataset):
        return f"{RESULTS}/data/{wildcards.dataset}/raw"
    return dataset_config(wildcards)["source"]["root"]


def raw_input(wildcards):
    """The raw tables prepare reads (so a changed CSV reruns preparation)."""
    extra = [ANNOTATED] if annotates(wildcards.dataset) else []
    if is_synthetic(wildcards.dataset):
        return [f"{RESULTS}/data/{wildcards.dataset}/raw", *extra]
    src = dataset_config(wildcards)["source"]
    if wildcards.dataset == "isic":
        tables = [
            f"{src['root']}/ISIC_2019_Training_GroundTruth.csv",
            f"{src['root']}/ISIC_2019_Training_Metadata.csv",
            src.get("artifacts", ""),
        ]
    else:
        prep = dataset_config(wildcards).get("prepare", {})
        folder = prep.get("dataset_dir", "CheXpert-v1.0-small")
        tables = [
            f"{src['root']}/{folder}/{name}" for name in ("train.csv", "valid.csv")
        ]
    # Tables not there (a dry run away from the data) are left to prepare, which names them.
    return [t for t in tables if t and Path(t).exists()] + extra


ANNOTATED = f"{RESULTS}/data/isic/artifacts"
TWIN_TABLES = {
    "flags": "isic_bias.csv",
    "soft": "isic_bias_soft.csv",
    "merged": "ISIC2019_Artifacts_merged.csv",
    "annotate": "isic_bias.csv",
}


def annotates(dataset):
    """Whether ISIC's prepare reads pseudo-labels from annotate_artifacts: the twin with
    `artifacts: annotate`, or a real table that is not the authors' merged table."""
    if dataset != "isic":
        return False
    src = config["datasets"][dataset]["source"]
    if is_synthetic(dataset):
        return src.get("artifacts") == "annotate"
    table = Path(src.get("artifacts", ""))
    if src.get("artifacts") and table.is_file():
        from medtraverse.data.prepare.isic import table_format

        return table_format(table) != "merged"
    return True


def annotations_table(wildcards):
    """The annotations annotate_artifacts learns from (Bissoto's table, or the twin's)."""
    src = config["datasets"]["isic"]["source"]
    if is_synthetic("isic"):
        return f"{RESULTS}/data/isic/raw/isic_bias.csv"
    return src.get("artifacts", "")


def annotate_root(wildcards):
    if is_synthetic("isic"):
        return f"{RESULTS}/data/isic/raw"
    return config["datasets"]["isic"]["source"]["root"]


def annotate_input(wildcards):
    if is_synthetic("isic"):
        return [f"{RESULTS}/data/isic/raw"]
    tables = [annotations_table(wildcards)]
    return [t for t in tables if t and Path(t).exists()]


def annotate_params(wildcards):
    """The `annotate` section, with prepare's table and image locations unless it sets its own."""
    ds = config["datasets"]["isic"]
    prep = ds.get("prepare", {})
    shared = ("ground_truth", "image_dir", "image_ext", "metadata")
    return as_json(
        {
            "seed": config["seed"],
            **{k: prep[k] for k in shared if k in prep},
            **ds.get("annotate", {}),
        }
    )


def artifacts_option(wildcards):
    """`--artifacts <table>` for ISIC: the pseudo-labels annotate_artifacts wrote, the user's
    table, or the twin's (`flags`, `soft`, `merged`); else ''."""
    if wildcards.dataset != "isic":
        return ""
    src = dataset_config(wildcards)["source"]
    if annotates(wildcards.dataset):
        table = f"{ANNOTATED}/ISIC2019_Artifacts_merged.csv"
    elif is_synthetic(wildcards.dataset):
        name = TWIN_TABLES.get(src.get("artifacts", "flags"), "isic_bias.csv")
        table = f"{RESULTS}/data/isic/raw/{name}"
    else:
        table = src.get("artifacts", "")
    return f"--artifacts {shlex.quote(table)}"


def synth_params(wildcards):
    src = dataset_config(wildcards)["source"]
    keys = ("n", "size", "seed")
    return as_json({**src.get("options", {}), **{k: src[k] for k in keys if k in src}})


def prepare_params(wildcards):
    return as_json(
        {"seed": config["seed"], **dataset_config(wildcards).get("prepare", {})}
    )


# --- models -----------------------------------------------------------------------------------


def base_is_tiny(dataset):
    return config["datasets"][dataset]["model"]["base"] == "tiny"  # schema default


def base_pipeline(wildcards):
    """The pipeline fine-tuning starts from: the tiny base with its trained VAE, or the real base."""
    if base_is_tiny(wildcards.dataset):
        return f"{RESULTS}/models/{wildcards.dataset}/base-vae"
    return f"{RESULTS}/models/{wildcards.dataset}/base"


def base_params(wildcards):
    model = dataset_config(wildcards).get("model", {})
    return as_json(
        {
            "base": model["base"],
            "seed": config["seed"],
            **model.get("tiny", {}),
        }
    )


def vae_params(wildcards):
    return as_json(
        {
            "seed": config["seed"],
            **dataset_config(wildcards).get("model", {}).get("vae", {}),
        }
    )


def finetune_params(wildcards):
    params = dict(dataset_config(wildcards).get("finetune", {}))
    params.pop("gpus", None)
    return as_json({"seed": config["seed"], **params})


def finetune_gpus(wildcards):
    return dataset_config(wildcards)["finetune"]["gpus"]  # schema default


def launcher(wildcards, resources):
    """`accelerate launch` across the job's GPUs when it has more than one, else a plain call."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    if gpus > 1:
        return f"accelerate launch --num_processes {gpus} -m medtraverse"
    return "medtraverse"


# --- traversal --------------------------------------------------------------------------------


def seed_config(dataset):
    return config["datasets"][dataset]["traverse"]["seeds"]


def shards(dataset):
    """Shard ids of a dataset: contiguous seed ranges of `shard_size`."""
    seeds = seed_config(dataset)
    return [f"{i:04d}" for i in range(math.ceil(seeds["count"] / seeds["shard_size"]))]


def shard_seeds(wildcards):
    """(first seed, number of seeds) of the job's shard."""
    seeds = seed_config(wildcards.dataset)
    size = seeds["shard_size"]  # start and shard_size: schema defaults
    first = int(wildcards.shard) * size
    return seeds["start"] + first, min(size, seeds["count"] - first)


def seed_start(wildcards):
    return shard_seeds(wildcards)[0]


def seed_count(wildcards):
    return shard_seeds(wildcards)[1]


def trajectory(wildcards):
    return dataset_config(wildcards)["traverse"]["trajectories"][wildcards.trajectory]


def traverse_params(wildcards):
    """Sampler settings plus the trajectory's prompts: passed as JSON, never raw to a shell."""
    traj = trajectory(wildcards)
    params = dict(dataset_config(wildcards)["traverse"].get("params", {}))
    params.update(neutral=traj["neutral"], attribute=traj["attribute"])
    return as_json(params)


def trajectories(dataset):
    return list(config["datasets"][dataset]["traverse"]["trajectories"])


def shard_dirs(dataset, trajectory_name):
    return [
        f"{RESULTS}/traversals/{dataset}/{trajectory_name}/shard-{s}"
        for s in shards(dataset)
    ]


# --- real images: inversion shards over the prepared split's images -------------------------


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


def real_sampler(wildcards):
    """The dataset's traverse params with the invert section's `traverse` over them: the
    sampler of the traversals from real images."""
    ds = dataset_config(wildcards)
    return {
        **ds["traverse"].get("params", {}),
        **invert_config(wildcards.dataset).get("traverse", {}),
    }


def invert_params(wildcards):
    """The invert section's params; steps and guidance default to the real-image sampler's
    (traverse-real needs them equal)."""
    sampler = real_sampler(wildcards)
    params = {k: sampler[k] for k in ("steps", "guidance") if k in sampler}
    params.update(invert_config(wildcards.dataset).get("params", {}))
    return as_json(params)


def invert_start(wildcards):
    return invert_range(wildcards)[0]


def invert_count(wildcards):
    return invert_range(wildcards)[1]


def traverse_real_params(wildcards):
    """The real-image sampler's settings and the trajectory's attribute prompt; no neutral prompt:
    each image's own inversion prompt is its neutral one (the neutral run is its reconstruction).
    """
    params = real_sampler(wildcards)
    params.pop("neutral", None)
    params.update(attribute=trajectory(wildcards)["attribute"])
    return as_json(params)


# --- evaluation -------------------------------------------------------------------------------


def classifier_models(dataset):
    return config["datasets"][dataset].get("classifiers", {}).get("models", {})


def classifier_attributes(wildcards):
    return ",".join(classifier_models(wildcards.dataset)[wildcards.classifier])


def classifier_params(wildcards):
    params = dataset_config(wildcards).get("classifiers", {}).get("params", {})
    return as_json({"seed": config["seed"], "preset": wildcards.dataset, **params})


def classifier_dirs(wildcards):
    """Sorted, so reordering the config's models does not rerun scoring."""
    return [
        f"{RESULTS}/classifiers/{wildcards.dataset}/{c}"
        for c in sorted(classifier_models(wildcards.dataset))
    ]


def score_files(wildcards):
    return [
        f"{RESULTS}/scores/{wildcards.dataset}/{t}/shard-{s}.parquet"
        for t in trajectories(wildcards.dataset)
        for s in shards(wildcards.dataset)
    ]


def all_shard_dirs(wildcards):
    return [
        d
        for t in trajectories(wildcards.dataset)
        for d in shard_dirs(wildcards.dataset, t)
    ]


def real_shard_dirs(wildcards):
    """Traversal shards from the dataset's inverted real images (none without `invert:`)."""
    return [
        f"{RESULTS}/real/{wildcards.dataset}/{t}/shard-{s}"
        for t in trajectories(wildcards.dataset)
        for s in invert_shards(wildcards.dataset)
    ]


def real_score_files(wildcards):
    return [
        f"{RESULTS}/scores-real/{wildcards.dataset}/{t}/shard-{s}.parquet"
        for t in trajectories(wildcards.dataset)
        for s in invert_shards(wildcards.dataset)
    ]


def inversion_dirs(wildcards):
    return [
        f"{RESULTS}/inversions/{wildcards.dataset}/shard-{s}"
        for s in invert_shards(wildcards.dataset)
    ]


def classifier_options(wildcards):
    """`--classifier <dir>` for each classifier of the job's dataset, quoted for the shell."""
    return " ".join(
        f"--classifier {shlex.quote(d)}" for d in classifier_dirs(wildcards)
    )


def metrics_params(wildcards):
    ds = dataset_config(wildcards)
    params = {
        "seed": config["seed"],
        "dataset": wildcards.dataset,
        **ds.get("metrics", {}),
    }
    params["trajectories"] = {
        name: traj["target"] for name, traj in ds["traverse"]["trajectories"].items()
    }
    return as_json(params)


# the score stage's LPIPS settings (backbone, weights, seed, batch), named by its dataclass
LPIPS_KEYS = tuple(f.name for f in fields(ScoreParams) if f.name.startswith("lpips"))


def real_score_params(wildcards):
    """The score section, with the metrics' LPIPS trunk when the section names none: real
    shards need LPIPS per image (to the reconstruction and to the real image) at scoring.
    """
    ds = dataset_config(wildcards)
    params = dict(ds.get("score", {}))
    if params.get("lpips_backbone") is None:
        metrics = ds.get("metrics", {})
        params.update({k: v for k, v in metrics.items() if k in LPIPS_KEYS})
        params.setdefault("lpips_backbone", "alex")
    return as_json(params)


def check_backbones_early():
    """Stop before any GPU work when a backbone a metric needs (LPIPS AlexNet) is missing."""
    from medtraverse.evaluation.backbones import check_backbones

    for name, ds in config["datasets"].items():
        for line in check_backbones({**ds.get("metrics", {}), **ds.get("score", {})}):
            print(f"{name}: {line}")


def all_targets():
    targets = []
    for dataset in config["datasets"]:
        targets.append(f"{RESULTS}/models/{dataset}/samples.png")
        targets.append(f"{RESULTS}/metrics/{dataset}")
        targets.append(f"{RESULTS}/viewer/{dataset}.html")
        if invert_shards(dataset):
            targets.append(f"{RESULTS}/metrics-real/{dataset}")
    return targets
