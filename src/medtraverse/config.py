"""The workflow config, checked when the Snakefile loads: every stage's section against its
settings dataclass, then across sections (targets the classifiers predict, real data present).
A problem is one line naming the key and exit status 2, before any job starts."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medtraverse.core.errors import InputError, bad_input
from medtraverse.core.formats import CHEXPERT_LABELS, ISIC_ARTIFACTS, ISIC_CLASSES, snake
from medtraverse.core.params import describe, parse_params, setting

# Config section (dotted, inside ``datasets.<name>``) -> its stage's settings, as
# "module:attribute". The attribute is a dataclass (checked with `parse_params`) or a function
# ``check(raw, where, dataset)`` for a section whose settings differ per dataset. A new stage
# adds one line here; imported only when the section is checked (the Snakefile stays quick).
STAGE_SETTINGS: dict[str, str] = {
    "source": "medtraverse.data.synth:check_source",
    "prepare": "medtraverse.data.prepare:check_params",
    "model.tiny": "medtraverse.models.pipeline:TinyArch",
    "model.vae": "medtraverse.models.vae:VaeParams",
    "cache": "medtraverse.models.cache:CacheParams",
    "finetune": "medtraverse.models.finetune:FinetuneParams",
    "samples": "medtraverse.models.samples:SampleParams",
    "traverse.params": "medtraverse.traversal.engine:TraverseParams",
    "classifiers.params": "medtraverse.evaluation.classify:ClassifierParams",
    "score": "medtraverse.evaluation.score:ScoreParams",
    "metrics": "medtraverse.report.aggregate:MetricsParams",
    "viewer": "medtraverse.report.viewer:ViewerParams",
    "invert.params": "medtraverse.traversal.invert:InvertParams",
    "invert.traverse": "medtraverse.traversal.engine:TraverseParams",
    "annotate": "medtraverse.evaluation.artifacts:AnnotateParams",
}

# Keys of a stage section that the workflow reads itself (not passed to the stage).
WORKFLOW_KEYS: dict[str, tuple[str, ...]] = {"finetune": ("gpus",)}


@dataclass(frozen=True)
class Threads:
    """CPU threads of each heavy rule (``threads:``): its ``--threads`` and torch's threads.
    Two where a second thread pays (the VAE: 1.6x; the cache), one elsewhere: the tiny U-Net's
    steps gain little from a second thread (1.2-1.7x, docs/benchmarks.md), so on a 2-core laptop
    fine-tuning runs beside a classifier and traversal shards run two at a time. A cluster
    profile raises them (``cpus_per_task`` follows)."""

    synth: int = setting(1, min=1, help="writing the synthetic twin")
    prepare: int = setting(2, min=1, help="resizing images (thread pool)")
    train_vae: int = setting(2, min=1, help="tiny VAE training (demo)")
    cache: int = setting(2, min=1, help="encoding images and prompts")
    finetune: int = setting(1, min=1, help="U-Net fine-tuning (per process)")
    sample_grid: int = setting(1, min=1, help="the neutral-vs-attribute sample grid")
    traverse: int = setting(1, min=1, help="one traversal shard")
    train_classifier: int = setting(1, min=1, help="one classifier")
    score: int = setting(1, min=1, help="scoring one shard")
    aggregate: int = setting(1, min=1, help="metrics, LPIPS, FID, t-SNE")
    invert: int = setting(1, min=1, help="one inversion shard (null-text: a backward pass a step)")
    annotate: int = setting(1, min=1, help="ISIC artifact pseudo-labels (classifier)")


def _key(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def _schema_check(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise one InputError line for the most relevant schema violation of ``config``."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    expected = error.schema.get("description") if error.validator == "required" else None
    message = f"config key {_key(error.absolute_path)}: {error.message}"
    if error.validator == "propertyNames":
        message = f"config key {_key(error.absolute_path)}: unknown name {error.instance!r}"
        allowed = error.schema.get("propertyNames", {}).get("enum")
        if allowed:
            message += f"; expected one of {', '.join(allowed)}"
    elif expected:
        message += f" ({expected})"
    raise InputError(message)


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _get(section: Mapping[str, Any], dotted: str) -> Any:
    value: Any = section
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def stage_params(config: Mapping[str, Any], dataset: str, section: str) -> dict[str, Any]:
    """The settings the rule passes to the stage: the section less the workflow's own keys,
    with the values the workflow adds (the global seed; classifiers: the preset; metrics: the
    dataset and trajectory targets)."""
    ds = config["datasets"][dataset]
    raw = dict(_get(ds, section) or {})
    for key in WORKFLOW_KEYS.get(section, ()):
        raw.pop(key, None)
    seed = config.get("seed", 0)
    if section in ("prepare", "model.vae", "finetune", "classifiers.params", "metrics"):
        raw = {"seed": seed, **raw}
    if section == "classifiers.params":
        raw = {"preset": dataset, **raw}
    if section == "metrics":
        raw.update(seed=seed, dataset=dataset)
        raw["trajectories"] = {
            name: traj["target"] for name, traj in ds["traverse"]["trajectories"].items()
        }
    return raw


def check_stage_sections(config: Mapping[str, Any]) -> None:
    """Every registered section of every dataset checked by its stage's settings."""
    for dataset, ds in config["datasets"].items():
        for section, target in STAGE_SETTINGS.items():
            if _get(ds, section) is None:
                continue
            where = f"datasets.{dataset}.{section}"
            checker = _resolve(target)
            raw = stage_params(config, dataset, section)
            if hasattr(checker, "from_dict"):  # the stage's own entry (aliases, normalising)
                checker.from_dict(raw, where)
            elif dataclasses.is_dataclass(checker):
                parse_params(checker, raw, where)  # type: ignore[arg-type]
            else:
                checker(raw, where, dataset)


def known_attributes(dataset: str) -> set[str]:
    """Manifest columns a classifier of ``dataset`` may predict (core/formats.py)."""
    if dataset == "chexpert":
        return {snake(n) for n in CHEXPERT_LABELS}
    return {snake(n) for n in (*ISIC_CLASSES, *ISIC_ARTIFACTS)}


def check_attributes(config: Mapping[str, Any]) -> None:
    """Classifier attributes are known labels; trajectory targets and metrics attributes are
    attributes some classifier predicts."""
    for dataset, ds in config["datasets"].items():
        where = f"datasets.{dataset}"
        known = known_attributes(dataset)
        predicted: set[str] = set()
        for name, attrs in (ds.get("classifiers", {}).get("models") or {}).items():
            for i, attr in enumerate(attrs):
                if attr not in known:
                    raise bad_input(
                        f"{where}.classifiers.models.{name}[{i}]",
                        f"unknown attribute {attr!r}",
                        f"one of {', '.join(sorted(known))}",
                    )
            predicted.update(attrs)
        offered = ", ".join(sorted(predicted)) or "(no classifiers.models)"
        for name, traj in ds["traverse"]["trajectories"].items():
            targets = traj["target"] if isinstance(traj["target"], list) else [traj["target"]]
            for target in targets:  # a composed trajectory names several
                if target not in predicted:
                    raise bad_input(
                        f"{where}.traverse.trajectories.{name}.target",
                        f"got {target!r}, which no classifier predicts",
                        f"an attribute of classifiers.models: {offered}",
                    )
        for i, attr in enumerate((ds.get("metrics") or {}).get("attributes") or []):
            if attr not in predicted:
                raise bad_input(
                    f"{where}.metrics.attributes[{i}]",
                    f"got {attr!r}, which no classifier predicts",
                    f"an attribute of classifiers.models: {offered}",
                )


def real_tables(dataset: str, ds: Mapping[str, Any]) -> list[tuple[str, Path]]:
    """(config key, path) of each table prepare reads from a real source."""
    src, prep = ds["source"], ds.get("prepare") or {}
    root = Path(src["root"])
    if dataset == "isic":
        from medtraverse.data.prepare.isic import IsicParams

        gt = prep.get("ground_truth", IsicParams.ground_truth)
        tables = [("root", root / gt)]
        if src.get("artifacts"):
            tables.append(("artifacts", Path(src["artifacts"])))
        return tables
    from medtraverse.data.prepare.chexpert import ChexpertParams

    folder = root / prep.get("dataset_dir", ChexpertParams.dataset_dir)
    return [("root", folder / name) for name in prep.get("csvs", ChexpertParams.csvs)]


def check_sources(config: Mapping[str, Any], dry_run: bool = False) -> list[str]:
    """A real source names its root, and the tables prepare reads are there. In a dry run
    (planning away from the data) a missing table is a note, returned, not an error."""
    notes = []
    for dataset, ds in config["datasets"].items():
        src, where = ds["source"], f"datasets.{dataset}.source"
        if src["kind"] != "real":
            continue
        if not src.get("root"):
            raise bad_input(f"{where}.root", "missing for kind real", "the dataset's folder")
        for key, table in real_tables(dataset, ds):
            if not table.is_file():
                error = bad_input(f"{where}.{key}", f"{table} not found", "the dataset's tables")
                if not dry_run:
                    raise error
                notes.append(f"{error} (dry run: planned anyway)")
    return notes


def threads(config: Mapping[str, Any]) -> Threads:
    """The config's ``threads`` section with its defaults."""
    return parse_params(Threads, config.get("threads"), "threads")


# The shortcut study's sub-sections and the stage settings each becomes (shortcut_helpers.smk).
SHORTCUT_SETTINGS: dict[str, str] = {
    "splits": "medtraverse.data.shortcut:SplitParams",
    "report": "medtraverse.report.shortcut:ReportParams",
    "classifier": "medtraverse.evaluation.classify:ClassifierParams",
    "counterfactuals.traverse": "medtraverse.traversal.engine:TraverseParams",
}
SHORTCUT_ARMS = ("confounded", "augmented", "balanced", "counterfactual")


def check_shortcut(config: Mapping[str, Any]) -> None:
    """The ``shortcut:`` section (when configured): each sub-section by its stage's settings,
    the counterfactual settings by the arm's, and the arms by name."""
    study = config.get("shortcut")
    if not study:
        return
    from medtraverse.evaluation.shortcut import ArmParams

    seed = config.get("seed", 0)
    for section, target in SHORTCUT_SETTINGS.items():
        raw = _get(study, section)
        if raw is None:
            continue
        extra = {"seed": seed} if section != "counterfactuals.traverse" else {}
        parse_params(_resolve(target), {**extra, **raw}, f"shortcut.{section}")  # type: ignore[arg-type]
    cf = study.get("counterfactuals", {})
    arm_keys = {f.name for f in dataclasses.fields(ArmParams)} - {"seed"}
    parse_params(
        ArmParams, {k: v for k, v in cf.items() if k in arm_keys}, "shortcut.counterfactuals"
    )
    for i, arm in enumerate(study.get("arms", [])):
        if arm not in SHORTCUT_ARMS:
            raise bad_input(
                f"shortcut.arms[{i}]", f"got {arm!r}", f"one of {', '.join(SHORTCUT_ARMS)}"
            )


def check_config(config: dict[str, Any], schema_path: str | Path) -> list[str]:
    """Raise one InputError line for the first problem of ``config``: its schema, every stage
    section, then across sections. A real source's missing tables are returned as notes (a dry
    run plans away from the data); `check_real_data` makes them errors when jobs start."""
    _schema_check(config, schema_path)
    threads(config)
    check_stage_sections(config)
    check_shortcut(config)
    check_attributes(config)
    return check_sources(config, dry_run=True)


def _exit_on_error(check: Any, *args: Any) -> Any:
    try:
        return check(*args)
    except InputError as err:
        print(f"medtraverse config: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_or_exit(config: dict[str, Any], schema_path: str | Path) -> None:
    """For the Snakefile: a bad config prints one line and exits with status 2 (Snakemake
    would wrap an exception in a block with its stack and exit 1)."""
    for note in _exit_on_error(check_config, config, schema_path):
        print(f"medtraverse config: note: {note}", file=sys.stderr, flush=True)


def check_real_data(config: dict[str, Any]) -> None:
    """For ``onstart`` (not run by a dry run): a real source's missing table is one line and
    exit status 2 before the first job."""
    _exit_on_error(check_sources, config, False)


# --- config/README.md's key tables, generated from the dataclasses -------------------------------

README_BEGIN = "<!-- BEGIN generated settings: {section} (python -m medtraverse.config) -->"
README_END = "<!-- END generated settings -->"


def _cell(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value) + "`"


def settings_table(cls: type) -> str:
    """A Markdown table of a settings dataclass: key, default, allowed values, meaning."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for row in describe(cls):
        allowed = [row["type"]]
        if row["choices"] is not None:
            allowed = ["one of " + ", ".join(_cell(c) for c in row["choices"])]
        if row["above"] is not None:
            allowed.append(f"> {row['above']}")
        if row["min"] is not None:
            allowed.append(f">= {row['min']}")
        if row["max"] is not None:
            allowed.append(f"<= {row['max']}")
        lines.append(
            f"| `{row['name']}` | {_cell(row['default'])} | {', '.join(allowed)} | {row['help']} |"
        )
    return "\n".join(lines)


def documented_sections() -> dict[str, type]:
    """Sections whose README table is generated: every registered dataclass, and ``threads``."""
    out: dict[str, type] = {}
    for section, target in STAGE_SETTINGS.items():
        checker = _resolve(target)
        if dataclasses.is_dataclass(checker):
            out[section] = checker  # type: ignore[assignment]
    out["threads"] = Threads
    return out


def readme_with_tables(text: str) -> str:
    """``text`` with each generated block (between its markers) rewritten from the dataclass."""
    for section, cls in documented_sections().items():
        begin = README_BEGIN.format(section=section)
        if begin not in text:
            continue
        head, rest = text.split(begin, 1)
        _, tail = rest.split(README_END, 1)
        text = f"{head}{begin}\n{settings_table(cls)}\n{README_END}{tail}"
    return text


def main() -> None:
    """Rewrite config/README.md's generated tables (``python -m medtraverse.config``)."""
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "config/README.md")
    path.write_text(readme_with_tables(path.read_text()))
    print(f"{path}: settings tables regenerated")


if __name__ == "__main__":
    main()
