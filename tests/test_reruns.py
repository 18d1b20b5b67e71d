"""Reruns and numbers you can trust: every stage reads exactly the files its rule passes.

Fast tests call ``medtraverse aggregate`` on fake shards and scores: folders are refused, only
the named files are read, a score file without a classifier column is an error naming it.
Slow tests run the smoke workflow once (from a copy of the project in a temporary folder, as
test_e2e does) and then change config copies and source files: each change reruns only what
it must (dry-run job counts), and after the rerun the metrics hold exactly the configured seeds,
trajectories and classifiers. The slow tests run in file order: dry runs on the untouched run
first, then the tests that rerun the workflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.oneline import assert_one_line_error, run_cli
from tests.test_aggregate import PARAMS, write_trajectory
from tests.workflow_utils import copy_project, job_counts, run_workflow

SMOKE = "config/smoke.yaml"
RUN = "results/smoke"


# --- aggregate reads exactly its inputs (fast) -------------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trajectories, two shards each (seeds 0-2 and 3-5), as in test_aggregate."""
    root = tmp_path_factory.mktemp("fake")
    for trajectory in ("support_devices", "pleural_effusion"):
        write_trajectory(root, "chexpert", trajectory, truth=False)
    return root


def _scores(root: Path, trajectory: str = "support_devices") -> list[Path]:
    return sorted((root / "scores" / "chexpert" / trajectory).glob("shard-*.parquet"))


def _aggregate(out: Path, *args: str) -> subprocess.CompletedProcess:
    params = json.dumps({**PARAMS, "figures": False, "n_boot": 20})
    return run_cli("aggregate", "--out", str(out), "--params", params, *args)


def _cfrt(out: Path) -> pd.DataFrame:
    cfrt = pd.read_csv(out / "cfrt.csv")
    return cfrt[(cfrt["source"] == "classifier") & (cfrt["variant"] == "authors")]


def test_a_folder_of_scores_is_refused(fake: Path, tmp_path: Path) -> None:
    folder = fake / "scores" / "chexpert"
    proc = _aggregate(tmp_path / "m", "--scores", str(folder))
    assert_one_line_error(proc, str(folder), "is a folder", untouched=[tmp_path / "m"])


def test_traversals_must_name_shard_folders(fake: Path, tmp_path: Path) -> None:
    trajectory = fake / "traversals" / "chexpert" / "support_devices"
    args = ("--scores", *map(str, _scores(fake)), "--traversals", str(trajectory))
    proc = _aggregate(tmp_path / "m", *args)
    assert_one_line_error(
        proc, str(trajectory), "not a traversal shard folder", untouched=[tmp_path / "m"]
    )
    score = _scores(fake)[0]
    proc = _aggregate(tmp_path / "m", "--scores", str(score), str(score))
    assert_one_line_error(proc, str(score), "given twice", untouched=[tmp_path / "m"])


def test_only_the_named_files_are_read(fake: Path, tmp_path: Path) -> None:
    """A decoy beside the real shards (a stale shard 0001, a copy) is not read: n_seeds counts
    the named files' seeds; an @LIST file and a repeated option name the same files."""
    folder = tmp_path / "scores" / "chexpert" / "support_devices"
    folder.mkdir(parents=True)
    real = []
    for src in _scores(fake):
        real.append(folder / src.name)
        shutil.copy2(src, real[-1])
    decoy = pd.read_parquet(real[1]).assign(seed=lambda d: d["seed"] + 100, shard="shard-0099")
    decoy.to_parquet(folder / "shard-0099.parquet", index=False)
    proc = _aggregate(tmp_path / "one", "--scores", str(real[0]))
    assert proc.returncode == 0, proc.stderr
    assert set(_cfrt(tmp_path / "one")["n_seeds"]) == {3}
    listing = tmp_path / "scores.txt"
    listing.write_text(f"# the workflow's score files\n{real[0]}\n\n")
    proc = _aggregate(tmp_path / "both", "--scores", f"@{listing}", "--scores", str(real[1]))
    assert proc.returncode == 0, proc.stderr
    both = _cfrt(tmp_path / "both")
    assert set(both["n_seeds"]) == {6} and set(both["trajectory"]) == {"support_devices"}
    recorded = json.loads((tmp_path / "both" / "provenance.json").read_text())["inputs"]
    assert sorted(e["path"] for e in recorded) == sorted(map(str, real))


def test_a_score_file_without_a_classifier_column_is_named(fake: Path, tmp_path: Path) -> None:
    """The silent wrong number: one shard's parquet lacks ``p_support_devices``. Its seeds were
    counted as misses (CFRT 0.5 instead of 1.0); now the file is named and nothing written."""
    files = []
    for src in _scores(fake):
        files.append(tmp_path / src.name)
        table = pd.read_parquet(src)
        # every seed a hit: the target goes up, the other attribute stays low
        hit = (table["kind"] == "swap") | ((table["kind"] == "bezier") & (table["frame"] > 0))
        table.loc[hit, "p_support_devices"] = 0.9
        table.loc[:, "p_pleural_effusion"] = 0.1
        table.to_parquet(files[-1], index=False)
    proc = _aggregate(tmp_path / "ok", "--scores", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    assert _cfrt(tmp_path / "ok")["value"].tolist() == [1.0, 1.0]
    table = pd.read_parquet(files[1]).drop(columns="p_support_devices")
    table.to_parquet(files[1], index=False)
    out = tmp_path / "m"
    proc = _aggregate(out, "--scores", *map(str, files))
    assert_one_line_error(proc, str(files[1]), "no column 'p_support_devices'", untouched=[out])
    # also when no file of the trajectory has it: the params name the attribute
    proc = _aggregate(out, "--scores", str(files[1]))
    assert_one_line_error(proc, str(files[1]), "no column 'p_support_devices'", untouched=[out])


# --- the smoke workflow: reruns after config and code changes (slow) ----------------------------


def complete(workdir: Path, config: str = SMOKE) -> None:
    """Run the workflow to completion with ``config`` (nothing happens when it is complete)."""
    args = ("--profile", "profiles/local", "--configfile", config, "--cores", "2")
    proc = run_workflow(workdir, *args)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


def plan(workdir: Path, config: str = SMOKE) -> dict[str, int]:
    """The jobs a dry run would start, by rule."""
    proc = run_workflow(workdir, "-n", "--configfile", config, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return job_counts(proc.stdout + proc.stderr)


_SMOKE: dict[str, Path] = {}


def smoke_workdir(factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with the smoke config run to completion, made once per session
    (test_audit shares it); callers needing the smoke state call ``complete`` first."""
    key = str(factory.getbasetemp())
    if key not in _SMOKE:
        workdir = copy_project(factory.mktemp("smoke-reruns"))
        complete(workdir)
        _SMOKE[key] = workdir
    return _SMOKE[key]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = smoke_workdir(tmp_path_factory)
    complete(workdir)
    return workdir


def variant(workdir: Path, name: str, change: Callable[[dict[str, Any]], None]) -> str:
    """A copy of the smoke config with ``change(datasets.chexpert)`` applied; its path."""
    config = yaml.safe_load((workdir / SMOKE).read_text())
    change(config["datasets"]["chexpert"])
    path = workdir / "config" / f"smoke-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def plan_after_edit(workdir: Path, module: str) -> dict[str, int]:
    """The dry run after appending a comment to the copy's ``module``; then the file's bytes and
    modification time are put back, so later tests see the untouched run."""
    path = workdir / "src" / "medtraverse" / module
    text, stat = path.read_text(), path.stat()
    path.write_text(text + "\n# an edit\n")
    try:
        return plan(workdir)
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def metrics(workdir: Path) -> pd.DataFrame:
    """The CFRT table's classifier rows after the run."""
    cfrt = pd.read_csv(workdir / RUN / "metrics/chexpert/cfrt.csv")
    return cfrt[cfrt["source"] == "classifier"]


@pytest.mark.slow
def test_editing_the_backbones_reruns_scoring_and_aggregation_not_traversal(smoke: Path) -> None:
    jobs = plan_after_edit(smoke, "evaluation/backbones.py")
    assert jobs.get("aggregate_metrics") == 1 and jobs.get("score_shard") == 4, jobs
    assert jobs.get("score_real_shard") == 2 and jobs.get("aggregate_real") == 1, jobs
    assert not {"traverse_shard", "traverse_real_shard", "invert_shard", "finetune_unet"} & set(
        jobs
    ), jobs


@pytest.mark.slow
def test_editing_the_engine_reruns_traversal_and_what_follows_not_finetuning(
    smoke: Path,
) -> None:
    jobs = plan_after_edit(smoke, "traversal/engine.py")
    real = {"traverse_real_shard": 2, "score_real_shard": 2, "aggregate_real": 1}
    assert jobs == {
        **{"all": 1, "traverse_shard": 4, "score_shard": 4, "aggregate_metrics": 1},
        **{**real, "render_viewer": 1},  # inversion does not use the engine: not rerun
    }


@pytest.mark.slow
def test_a_real_image_sampler_setting_reruns_only_the_real_image_traversals(smoke: Path) -> None:
    """invert.traverse (the real-image sampler, over traverse.params): local_blend reruns the
    traversals from the inverted images and what follows, not the inversion, whose steps and
    guidance are unchanged, and not the seed traversals."""
    config = variant(
        smoke, "blend", lambda d: d["invert"].setdefault("traverse", {}).update(local_blend=0.3)
    )
    real = {"traverse_real_shard": 2, "score_real_shard": 2, "aggregate_real": 1}
    assert plan(smoke, config) == {"all": 1, **real, "render_viewer": 1}


@pytest.mark.slow
def test_fewer_seeds_rerun_only_aggregation_over_the_configured_seeds(smoke: Path) -> None:
    """seeds.count 4 -> 2 (shard 0001 stays on disk): only aggregation reruns, and it counts
    2 seeds, not the 4 of the shards on disk."""
    config = variant(smoke, "seeds", lambda d: d["traverse"]["seeds"].update(count=2))
    # the viewer shows the configured seeds; real images do not depend on seeds
    assert plan(smoke, config) == {"all": 1, "aggregate_metrics": 1, "render_viewer": 1}
    assert (smoke / RUN / "scores/chexpert/support_devices/shard-0001.parquet").is_file()
    complete(smoke, config)
    cfrt = metrics(smoke)
    assert set(cfrt["n_seeds"]) == {2}
    assert set(cfrt["trajectory"]) == {"support_devices", "pleural_effusion"}
    recorded = json.loads((smoke / RUN / "metrics/chexpert/provenance.json").read_text())
    assert not [e["path"] for e in recorded["inputs"] if "0001" in e["path"]]


@pytest.mark.slow
def test_removing_a_trajectory_reruns_only_aggregation_without_it(smoke: Path) -> None:
    config = variant(smoke, "one", lambda d: d["traverse"]["trajectories"].pop("pleural_effusion"))
    assert plan(smoke, config) == {
        **{"all": 1, "aggregate_metrics": 1, "aggregate_real": 1, "render_viewer": 1}
    }
    complete(smoke, config)
    cfrt = metrics(smoke)
    assert set(cfrt["trajectory"]) == {"support_devices"} and set(cfrt["n_seeds"]) == {4}


@pytest.mark.slow
def test_removing_a_classifier_rescores_without_its_column(smoke: Path) -> None:
    """Dropping the pleural-effusion classifier (with the trajectory and metric that need it)
    rescores the other trajectory's shards and reaggregates; nothing upstream reruns."""

    def change(d: dict[str, Any]) -> None:
        d["classifiers"]["models"].pop("pleural_effusion")
        d["traverse"]["trajectories"].pop("pleural_effusion")
        d["metrics"]["attributes"] = ["support_devices"]

    config = variant(smoke, "clf", change)
    assert plan(smoke, config) == {
        **{"all": 1, "score_shard": 2, "aggregate_metrics": 1},
        **{"score_real_shard": 1, "aggregate_real": 1, "render_viewer": 1},
    }
    complete(smoke, config)
    cfrt = metrics(smoke)
    assert set(cfrt["trajectory"]) == {"support_devices"} and set(cfrt["n_seeds"]) == {4}
    assert set(cfrt["others"]) == {"(none: shift > 0)"}
    scores = pd.read_parquet(smoke / RUN / "scores/chexpert/support_devices/shard-0000.parquet")
    assert "p_pleural_effusion" not in scores.columns and "p_support_devices" in scores.columns
