"""A bad config stops `snakemake -n` when the Snakefile loads: one line naming the key, exit
status 2, nothing written; plus the checks themselves, in process (fast)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from medtraverse.config import (
    STAGE_SETTINGS,
    Threads,
    check_config,
    check_sources,
    stage_params,
    threads,
)
from medtraverse.core.errors import InputError
from tests.oneline import assert_one_line_error, one_line_input_error
from tests.workflow_utils import ROOT, snakemake

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
SMOKE = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())


def _cx(config: dict[str, Any]) -> dict[str, Any]:
    return config["datasets"]["chexpert"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        del node[last]

    return edit


# (edit of the smoke config, text the one line must hold)
BAD: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "swap step >= steps": (
        _set("datasets.chexpert.traverse.params.swap_steps", [2, 10]),
        "datasets.chexpert.traverse.params.swap_steps: got step 10",
    ),
    "unknown traverse key": (
        _set("datasets.chexpert.traverse.params.swap_step", [2]),
        "datasets.chexpert.traverse.params.swap_step: unknown key",
    ),
    "lambdas of the wrong length": (
        lambda c: _cx(c)["traverse"]["params"].update(schedule="mix", lambdas=[0.5] * 3),
        "datasets.chexpert.traverse.params.lambdas",
    ),
    "target no classifier predicts": (
        _set("datasets.chexpert.traverse.trajectories.support_devices.target", "cardiomegaly"),
        "datasets.chexpert.traverse.trajectories.support_devices.target: got 'cardiomegaly'",
    ),
    "typo in a classifier attribute": (
        _set("datasets.chexpert.classifiers.models.support_devices", ["suport_devices"]),
        "datasets.chexpert.classifiers.models.support_devices[0]: unknown attribute",
    ),
    "typo in metrics.attributes": (
        _set("datasets.chexpert.metrics.attributes", ["support_devices", "pleural_efusion"]),
        "datasets.chexpert.metrics.attributes[1]: got 'pleural_efusion'",
    ),
    "negative classifier learning rate": (
        _set("datasets.chexpert.classifiers.params.learning_rate", -1),
        "datasets.chexpert.classifiers.params.learning_rate: got -1.0; expected a value > 0",
    ),
    "score flag as a string": (
        _set("datasets.chexpert.score.amp", "false"),
        "datasets.chexpert.score.amp: got 'false'; expected true or false",
    ),
    "finetune typo": (
        _set("datasets.chexpert.finetune.learnin_rate", 1e-3),
        "datasets.chexpert.finetune.learnin_rate: unknown key",
    ),
    "metrics threshold out of range": (
        _set("datasets.chexpert.metrics.threshold", 2),
        "datasets.chexpert.metrics.threshold: got 2.0",
    ),
    "twin option out of range": (
        _set("datasets.chexpert.source.options.no_finding_prob", 3),
        "datasets.chexpert.source.options.no_finding_prob",
    ),
    "prepare policy": (
        _set("datasets.chexpert.prepare.uncertain", "maybe"),
        "datasets.chexpert.prepare.uncertain",
    ),
    "real source without a root": (
        _set("datasets.chexpert.source", {"kind": "real"}),
        "datasets.chexpert.source.root: missing for kind real",
    ),
    "threads of zero": (_set("threads.traverse", 0), "threads.traverse: got 0"),
    "schema: wrong type": (_set("seed", "abc"), "config key seed:"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_is_one_line_in_process(name: str) -> None:
    edit, needle = BAD[name]
    config = copy.deepcopy(SMOKE)
    edit(config)
    with one_line_input_error(needle):
        check_config(config, SCHEMA)


def test_shipped_configs_pass() -> None:
    for name in ("demo", "demo-isic", "smoke"):
        config = yaml.safe_load((ROOT / f"config/{name}.yaml").read_text())
        assert check_config(config, SCHEMA) == []


def test_every_registered_section_resolves() -> None:
    import importlib

    for target in STAGE_SETTINGS.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name))


def test_stage_params_add_what_the_rule_adds() -> None:
    config = copy.deepcopy(SMOKE)
    assert "gpus" not in stage_params(config, "chexpert", "finetune")
    assert stage_params(config, "chexpert", "classifiers.params")["preset"] == "chexpert"
    metrics = stage_params(config, "chexpert", "metrics")
    assert metrics["trajectories"]["support_devices"] == "support_devices"
    assert metrics["dataset"] == "chexpert" and metrics["seed"] == 0


def test_threads_section_defaults_and_overrides() -> None:
    assert threads({}) == Threads()
    assert threads({"threads": {"finetune": 8}}).finetune == 8


def test_real_source_tables_named(tmp_path: Path) -> None:
    config = copy.deepcopy(SMOKE)
    _cx(config)["source"] = {"kind": "real", "root": str(tmp_path)}
    with pytest.raises(InputError, match="CheXpert-v1.0-small/train.csv not found"):
        check_sources(config)
    notes = check_sources(config, dry_run=True)
    assert len(notes) == 2 and "dry run" in notes[0]
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir()
    for name in ("train.csv", "valid.csv"):
        (folder / name).write_text("Path\n")
    assert check_sources(config) == []


# --- through Snakemake: the Snakefile's own exit ------------------------------------------------

SUBPROCESS_CASES = [
    "swap step >= steps",
    "target no classifier predicts",
    "typo in metrics.attributes",
    "real source without a root",
    "negative classifier learning rate",
]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_snakemake_dry_run_stops_in_one_line(name: str, tmp_path: Path) -> None:
    edit, needle = BAD[name]
    config = copy.deepcopy(SMOKE)
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake("-n", "--configfile", str(path), workdir=work)
    line = assert_one_line_error(proc, needle, untouched=[work / "results", work / ".snakemake"])
    assert line.startswith("medtraverse config: error: ")


def test_missing_real_tables_stop_before_the_first_job(tmp_path: Path) -> None:
    """A dry run plans away from the data (a note); a real run stops in `onstart`, exit 2."""
    config = copy.deepcopy(SMOKE)
    _cx(config)["source"] = {"kind": "real", "root": str(tmp_path / "nowhere")}
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    dry = snakemake("-n", "--configfile", str(path), workdir=work)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "note: datasets.chexpert.source.root" in dry.stderr
    proc = snakemake("-c1", "--configfile", str(path), workdir=work)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "medtraverse config: error: datasets.chexpert.source.root: "
        f"{tmp_path / 'nowhere'}/CheXpert-v1.0-small/train.csv not found; "
        "expected the dataset's tables"
    ], proc.stderr[-2000:]
    assert not (work / "results").exists()


def test_readme_tables_are_generated_from_the_dataclasses() -> None:
    """config/README.md holds one generated table per settings dataclass, as generated now
    (`python -m medtraverse.config` rewrites them)."""
    from medtraverse.config import README_BEGIN, documented_sections, readme_with_tables

    text = (ROOT / "config/README.md").read_text()
    for section in documented_sections():
        assert README_BEGIN.format(section=section) in text, f"no table for {section}"
    assert readme_with_tables(text) == text, "run: python -m medtraverse.config"
