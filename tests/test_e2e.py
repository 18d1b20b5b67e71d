"""The real workflow on the seconds-scale smoke config: a local run, incremental reruns,
provenance, the report, and (when a local SLURM cluster is up) the same run through SLURM,
bit for bit.

The workflow runs from a copy of the project in a temporary folder, so tests can edit a stage's
source file there without touching the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from tests.workflow_utils import BIN, ROOT, env, job_counts

pytestmark = pytest.mark.slow
SMOKE = "config/smoke.yaml"
RUN = "results/smoke"


def _copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "src", "envs", "profiles"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run(workdir: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(workdir / "Snakefile"), "-d", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)


def _plan(workdir: Path, *args: str, config: str = SMOKE) -> dict[str, int]:
    proc = _run(workdir, "-n", "--configfile", config, *args, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return job_counts(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke config run to completion once, locally."""
    workdir = _copy_project(tmp_path_factory.mktemp("smoke-local"))
    proc = _run(workdir, "--profile", "profiles/local", "--configfile", SMOKE, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return workdir


def test_local_run_writes_every_stage(smoke: Path) -> None:
    run = smoke / RUN
    assert (run / "data/chexpert/prepared/manifest.parquet").is_file()
    assert (run / "models/chexpert/pipeline/model_index.json").is_file()
    assert (run / "models/chexpert/samples.png").is_file()
    shard = run / "traversals/chexpert/support_devices/shard-0000"
    latents = load_file(shard / "latents.safetensors")
    assert set(latents) == {f"{s}/{k}" for s in (0, 1) for k in ["neutral", "k2", "k4", "k6", "k8"]}
    meta = pd.read_parquet(shard / "meta.parquet")
    assert len(meta) == 2 * (1 + 4 + 6)
    scores = pd.read_parquet(run / "scores/chexpert/support_devices/shard-0001.parquet")
    assert {"p_support_devices", "p_pleural_effusion"} <= set(scores.columns)
    assert (run / "metrics/chexpert").is_dir()
    assert not list(run.rglob("*.partial")), "scratch folders must be gone after a complete run"


def test_nothing_to_do_after_a_complete_run(smoke: Path) -> None:
    assert _plan(smoke) == {}


def _variant(workdir: Path, name: str, change) -> str:
    """A copy of the smoke config with ``change(datasets.chexpert)`` applied; its path."""
    config = yaml.safe_load((workdir / SMOKE).read_text())
    change(config["datasets"]["chexpert"])
    path = workdir / "config" / f"smoke-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def test_classifier_change_reruns_only_evaluation(smoke: Path) -> None:
    config = _variant(smoke, "lr", lambda d: d["classifiers"]["params"].update(learning_rate=0.05))
    jobs = _plan(smoke, config=config)
    assert set(jobs) == {"all", "train_classifier", "score_shard", "aggregate_metrics"}
    assert jobs["train_classifier"] == 2 and jobs["score_shard"] == 4


def test_swap_steps_change_reruns_traversal_not_finetuning(smoke: Path) -> None:
    config = _variant(smoke, "k", lambda d: d["traverse"]["params"].update(swap_steps=[3, 6]))
    jobs = _plan(smoke, config=config)
    assert set(jobs) == {"all", "traverse_shard", "score_shard", "aggregate_metrics"}
    assert jobs["traverse_shard"] == 4


def test_editing_a_metrics_module_reruns_only_metrics(smoke: Path) -> None:
    module = smoke / "src/medtraverse/metrics.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    try:
        jobs = _plan(smoke)
    finally:
        module.write_text(module.read_text().removesuffix("\n# an edit\n"))
        stamp = (smoke / "src/medtraverse/aggregate.py").stat().st_mtime
        os.utime(module, (stamp, stamp))
    assert set(jobs) == {"all", "aggregate_metrics"}


def test_new_trajectory_adds_only_its_own_jobs(smoke: Path) -> None:
    cardiomegaly = {
        "neutral": "Normal chest X-ray with no significant findings",
        "attribute": "Chest X-ray showing Cardiomegaly",
        "target": "cardiomegaly",
    }
    config = _variant(smoke, "plus", lambda d: d["traverse"]["trajectories"].update(c=cardiomegaly))
    jobs = _plan(smoke, config=config)
    assert set(jobs) == {"all", "traverse_shard", "score_shard", "aggregate_metrics"}
    assert jobs["traverse_shard"] == 2 and jobs["score_shard"] == 2


def test_provenance_chain_reaches_the_raw_data(smoke: Path) -> None:
    metrics = smoke / RUN / "metrics/chexpert"
    proc = subprocess.run(
        [str(BIN / "medtraverse"), "provenance", "--json", str(metrics)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=smoke,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stages = {rec["stage"] for rec in json.loads(proc.stdout)}
    assert {"aggregate", "score", "traverse", "finetune", "prepare", "synth"} <= stages


def test_report_is_self_contained(smoke: Path) -> None:
    report = smoke / RUN / "report.html"
    proc = _run(smoke, "--configfile", SMOKE, "--report", str(report), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text()
    assert "Metrics" in html and "Models" in html


def _files(root: Path, pattern: str) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob(pattern))}


def _sacct_states(job_ids: list[str], timeout: float = 60) -> dict[str, str]:
    """Final sacct state per job, waiting out accounting's lag."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        if all(states.get(j) == "COMPLETED" for j in job_ids) or time.monotonic() > deadline:
            return states
        time.sleep(1)


@pytest.mark.slurm
def test_slurm_run_matches_the_local_run_bit_for_bit(
    smoke: Path, cluster: None, tmp_path: Path
) -> None:
    workdir = _copy_project(tmp_path / "smoke-slurm")
    proc = _run(workdir, "--profile", "profiles/slurm-ci", "--configfile", SMOKE, timeout=2400)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", output)
    # Every job but `all` (a local rule) went through sbatch.
    assert len(job_ids) == len(_files(workdir / RUN / "logs", "*.log")), output[-3000:]
    states = _sacct_states(job_ids)
    assert all(states.get(j) == "COMPLETED" for j in job_ids), states

    local, slurm = smoke / RUN, workdir / RUN
    for pattern in ("latents.safetensors", "diffusion_pytorch_model.safetensors", "*.png"):
        a, b = _files(local, pattern), _files(slurm, pattern)
        assert a.keys() == b.keys() and a, pattern
        for rel in a:
            assert a[rel].read_bytes() == b[rel].read_bytes(), rel
    for pattern in ("*.parquet", "*.csv"):
        a, b = _files(local, pattern), _files(slurm, pattern)
        assert a.keys() == b.keys() and a, pattern
        for rel in a:
            if "benchmarks/" in rel or rel.endswith("loss.csv"):
                continue  # wall-clock columns
            read = pd.read_parquet if rel.endswith(".parquet") else pd.read_csv
            pd.testing.assert_frame_equal(read(a[rel]), read(b[rel]), obj=rel)
