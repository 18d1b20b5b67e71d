"""``medtraverse audit``: what is on disk that the current config no longer makes, and artifacts
whose provenance disagrees with the current DAG; ``--prune`` moves orphans, deletes nothing.

Fast tests feed the parsers and the orphan search by hand; the slow test audits the smoke run
that test_reruns makes (shared per session), with a decoy score shard dropped beside the real
ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medtraverse.audit import expected_paths, find_orphans, parse_dry_run, parse_summary
from tests.oneline import assert_one_line_error, run_cli
from tests.test_reruns import RUN, SMOKE, complete, plan, smoke_workdir
from tests.workflow_utils import env, run_workflow

DRY_RUN = """\
Building DAG of jobs...
localrule traverse_shard:
    input: results/r/models/pipeline, /abs/src/medtraverse/traversal/engine.py
    output: results/r/traversals/t/shard-0000
    log: results/r/logs/traverse_shard/t/0000.log
    jobid: 3
    benchmark: results/r/benchmarks/traverse_shard/t/0000.tsv
    reason: Forced execution
    wildcards: trajectory=t, shard=0000
Shell command: medtraverse traverse --out results/r/traversals/t/shard-0000 --params '{"steps": 10}'
localrule score_shard:
    input: results/r/traversals/t/shard-0000
    output: results/r/scores/t/shard-0000.parquet
    log: results/r/logs/score_shard/t/0000.log
    jobid: 2
    benchmark: results/r/benchmarks/score_shard/t/0000.tsv
Shell command: medtraverse score --out results/r/scores/t/shard-0000.parquet --params '{}'
localrule finetune_unet:
    output: results/r/models/pipeline
Shell command: medtraverse finetune --checkpoints results/r/models/checkpoints --out x
"""


def test_dry_run_is_parsed_into_jobs() -> None:
    jobs = parse_dry_run(DRY_RUN)
    assert [j.rule for j in jobs] == ["traverse_shard", "score_shard", "finetune_unet"]
    assert jobs[0]["input"][1] == "/abs/src/medtraverse/traversal/engine.py"
    assert jobs[0]["benchmark"] == ["results/r/benchmarks/traverse_shard/t/0000.tsv"]
    assert jobs[1].shell.endswith("--params '{}'")
    summary = "output_file\tdate\trule\tlog-file(s)\tstatus\tplan\nx\t-\tr\t-\tparams changed\tu\n"
    assert parse_summary(summary) == {"x": ("params changed", "r")}


def test_orphans_are_what_no_job_writes(tmp_path: Path) -> None:
    run = tmp_path / "results" / "r"
    kept = [
        "traversals/t/shard-0000/meta.parquet",
        "scores/t/shard-0000.parquet",
        "scores/t/shard-0000.parquet.prov.json",
        "logs/score_shard/t/0000.log",
        "models/pipeline/unet/weights.safetensors",
        "models/checkpoints/step-3/state.bin",  # named in the fine-tuning command
        "models/loss.csv",  # fine-tuning's log beside its output
        "traversals/t/shard-0000.partial/seeds-0-1/latents.safetensors",  # resumable scratch
        "scores/t/.shard-0000.parquet.k2j3.tmp/x",  # an atomic write under way
        "report.html",  # snakemake --report
    ]
    stale = [
        "traversals/t/shard-0001/meta.parquet",
        "traversals/t/shard-0001/images/0.png",
        "scores/t/shard-0001.parquet",
        "scores/gone/shard-0000.parquet",
        ".trash/old/scores/t/shard-0002.parquet",  # earlier prunes are not orphans again
    ]
    for rel in kept + stale:
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("x")
    files, folders = expected_paths(parse_dry_run(DRY_RUN), tmp_path, "results/r")
    orphans = find_orphans(run, tmp_path, files, folders)
    assert orphans == [
        "results/r/scores/gone",
        "results/r/scores/t/shard-0001.parquet",
        "results/r/traversals/t/shard-0001",
    ]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("audit", str(tmp_path / "nowhere"))
    assert_one_line_error(proc, "nowhere", "not a folder")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run (shared with test_reruns), brought back to the smoke config's state."""
    workdir = smoke_workdir(tmp_path_factory)
    complete(workdir)
    return workdir


def audit(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "medtraverse", "audit", RUN, "--configfile", SMOKE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=workdir, timeout=600)


def files_under(root: Path) -> dict[str, bytes]:
    skip = (".trash", "logs", "benchmarks")
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


@pytest.mark.slow
def test_a_decoy_shard_is_neither_aggregated_nor_missed(smoke: Path) -> None:
    run = smoke / RUN
    proc = audit(smoke)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "clean" in proc.stdout
    real = run / "scores/chexpert/support_devices/shard-0001.parquet"
    decoy = real.with_name("shard-0007.parquet")
    table = pd.read_parquet(real)
    table.assign(seed=table["seed"] + 100, shard="shard-0007").to_parquet(decoy, index=False)

    # not aggregated: the workflow has nothing to do, and a forced aggregation skips it
    assert plan(smoke) == {}
    proc = run_workflow(
        smoke, "--configfile", SMOKE, "--cores", "2", "--forcerun", "aggregate_metrics"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfrt = pd.read_csv(run / "metrics/chexpert/cfrt.csv")
    assert set(cfrt["n_seeds"]) == {4}
    recorded = json.loads((run / "metrics/chexpert/provenance.json").read_text())["inputs"]
    assert not [e for e in recorded if "shard-0007" in e["path"]]

    # not missed: audit names it, and only it
    proc = audit(smoke)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines()]
    findings = [r for r in rows if r and r[0] in ("orphan", "stale", "provenance")]
    assert findings == [
        ["orphan", f"{RUN}/scores/chexpert/support_devices/shard-0007.parquet", "file"]
    ]

    # an artifact whose record disagrees with the DAG's job is named too
    record = run / "metrics/chexpert/provenance.json"
    original = record.read_bytes()
    rec = json.loads(original)
    rec["params"]["n_boot"] += 1
    record.write_text(json.dumps(rec))
    try:
        proc = audit(smoke)
    finally:
        record.write_bytes(original)
    assert "params differ: n_boot" in proc.stdout, proc.stdout

    # --prune moves the decoy into .trash/<timestamp>/ and nothing else
    before = files_under(run)
    proc = audit(smoke, "--prune")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = files_under(run)
    assert set(before) - set(after) == {"scores/chexpert/support_devices/shard-0007.parquet"}
    assert all(after[k] == before[k] for k in after)
    trashed = list((run / ".trash").rglob("*.parquet"))
    assert (
        len(trashed) == 1
        and trashed[0].read_bytes() == before["scores/chexpert/support_devices/shard-0007.parquet"]
    )
    assert trashed[0].relative_to(run / ".trash").parts[1:] == (
        "scores",
        "chexpert",
        "support_devices",
        "shard-0007.parquet",
    )
    assert audit(smoke).returncode == 0
