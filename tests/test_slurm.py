"""A real SLURM: plain sbatch, `medtraverse submit`, a submitit requeue, Snakemake's plugin.

The tests marked ``slurm`` need the local cluster of ``scripts/slurm-start.sh`` (cluster
localci, partition debug, account ci) and skip with the reason when it is not up. Every
wait is bounded, so a broken cluster fails a test instead of hanging CI. The unmarked tests
at the top check ``medtraverse submit`` without any cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from medtraverse import cli
from medtraverse.core import provenance
from medtraverse.hpc.submit import StageJob, make_executor, wait
from tests.oneline import assert_one_line_error, run_main

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = os.environ.get("MEDTRAVERSE_SLURM_ACCOUNT", "ci")
PARTITION = os.environ.get("MEDTRAVERSE_SLURM_PARTITION", "debug")
START_HINT = "start it with `sudo scripts/slurm-start.sh`"
# Every wait polls up to this limit: generous, because a loaded 2-core CI machine is slow, not
# broken; a cluster that is really broken still fails the test instead of hanging CI.
LIMIT = float(os.environ.get("MEDTRAVERSE_SLURM_WAIT_S", "900"))


def _artifact(folder: Path) -> Path:
    """A small file with a provenance record, for `medtraverse provenance` to read."""
    path = folder / "artifact.txt"
    path.write_text("hello\n")
    provenance.record(path, stage="test", params={"what": "slurm test"})
    return path


# --- without a cluster ---------------------------------------------------------------------


def test_checkpoint_requeues_the_same_command() -> None:
    job = StageJob(["traverse", "--params", '{"prompt": "a (MEL), x\'; touch pwned"}'])
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, StageJob)
    assert delayed.function.argv == job.argv
    assert delayed.function is not job  # a fresh callable, not shared state
    assert delayed.args == () and delayed.kwargs == {}


def test_stage_job_runs_the_cli_and_raises_on_failure(tmp_path: Path, capsys) -> None:
    artifact = _artifact(tmp_path)
    assert StageJob(["provenance", str(artifact)])() == 0
    assert "[test]" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="exited with status 2"):
        StageJob(["provenance", str(tmp_path / "missing.txt")])()


def test_submit_help_lists_the_flags(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["submit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--partition", "--account", "--gpus", "--time", "--folder", "--wait", "%j"):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "--cluster", "debug"], "no stage given"),
        (["submit", "--cluster", "debug", "--", "nope"], "unknown stage 'nope'"),
        (["submit", "--cluster", "debug", "--", "submit"], "unknown stage 'submit'"),
        (["submit", "--cluster", "debug", "--cpus", "0", "--", "provenance", "x"], "--cpus"),
        (["submit", "--cluster", "debug", "--sbatch", "qos", "--", "provenance", "x"], "KEY=VALUE"),
    ],
)
def test_submit_bad_input_is_one_line(argv: list[str], message: str, tmp_path, capsys) -> None:
    full = [*argv[:1], "--folder", str(tmp_path / "%j"), *argv[1:]]
    rc = cli.main(full)
    out = capsys.readouterr()
    proc = subprocess.CompletedProcess(full, rc, out.out, out.err)
    line = assert_one_line_error(proc, message)
    assert line.startswith("medtraverse submit: error:")
    assert not any(tmp_path.iterdir())  # nothing submitted


def test_submit_debug_cluster_waits_and_reports(tmp_path: Path, capsys) -> None:
    artifact = _artifact(tmp_path)
    folder = tmp_path / "logs" / "%j"
    argv = ["submit", "--cluster", "debug", "--folder", str(folder), "--wait", "--"]
    assert cli.main([*argv, "provenance", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "submitted job" in out and "completed" in out and "[test]" in out

    failed = run_main(capsys, *argv, "provenance", str(tmp_path / "missing.txt"))
    # In-process the job's stderr is ours: the stage's own one-line error (exit 2), then
    # submit's one line on the failed job (exit 1). Each is one line by the shared check.
    stage, _, rest = failed.stderr.partition("\n")
    assert_one_line_error(
        subprocess.CompletedProcess(failed.args, 2, "", stage),
        "missing.txt",
        prefix="medtraverse provenance: error:",
    )
    assert_one_line_error(
        subprocess.CompletedProcess(failed.args, failed.returncode, failed.stdout, rest),
        "failed (",
        "log:",
        status=1,
        prefix="medtraverse submit: error: job",
        untouched=[tmp_path / "missing.txt"],
    )


# --- on the local SLURM cluster --------------------------------------------------------------


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command with a bound; a hang becomes a test failure with the output so far."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as err:
        pytest.fail(
            f"{' '.join(cmd[:4])}... did not finish in {timeout} s:\n{err.stdout}\n{err.stderr}"
        )


def _sacct(job_id: str) -> list[tuple[str, str, str]]:
    """(state, account, job name) of every run of a job, requeued runs included."""
    res = _run(["sacct", "-j", job_id, "-X", "-D", "-n", "-P", "-o", "State,Account,JobName"], 120)
    assert res.returncode == 0, res.stderr
    return [tuple(line.split("|")) for line in res.stdout.splitlines() if line]  # type: ignore[misc]


def _wait_accounted(job_id: str, expected: list[tuple[str, ...]], timeout: float = LIMIT) -> None:
    """Wait until sacct's rows of a job, cut to the length of each expected row, match.

    Accounting lags the job: right after it ends, sacct may still say RUNNING, or show a
    placeholder name ("allocation") until slurmdbd has the job's start record.
    """
    deadline = time.monotonic() + timeout
    while True:
        rows = _sacct(job_id)
        got = [row[: len(want)] for row, want in zip(rows, expected, strict=False)]
        if len(rows) == len(expected) and got == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"sacct shows job {job_id} as {rows}, expected {expected} ({timeout} s)")
        time.sleep(0.5)


@pytest.mark.slurm
def test_sbatch_job_completes_and_is_accounted(cluster, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    cmd = ["sbatch", "--parsable", "--wait", "-A", ACCOUNT, "-p", PARTITION, "-t", "1"]
    res = _run([*cmd, "-o", str(out), "--wrap", "echo hello from $SLURM_JOB_ID"], LIMIT)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().split(";")[0]
    assert out.read_text().strip() == f"hello from {job_id}"
    _wait_accounted(job_id, [("COMPLETED", ACCOUNT, "wrap")])


@pytest.mark.slurm
def test_medtraverse_submit_runs_a_stage_as_a_slurm_job(cluster, tmp_path: Path) -> None:
    out = tmp_path / "twin"
    cmd = [sys.executable, "-m", "medtraverse", "submit", "--partition", PARTITION]
    cmd += ["--account", ACCOUNT, "--time", "5", "--mem", "2000", "--gpus", "0"]
    cmd += ["--folder", str(tmp_path / "logs" / "%j"), "--wait"]
    cmd += ["--wait-timeout", str(int(LIMIT)), "--"]
    cmd += ["synth", "--dataset", "chexpert", "--out", str(out), "--n", "4", "--size", "32"]
    res = _run(cmd, LIMIT + 60)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = re.search(r"submitted job (\d+) \(slurm\)", res.stdout).group(1)  # type: ignore[union-attr]
    assert f"job {job_id} completed" in res.stdout
    # The artifact was made inside that SLURM job, and says so.
    record = json.loads((out / "provenance.json").read_text())
    assert record["device"]["slurm_job_id"] == job_id
    log = (tmp_path / "logs" / job_id / f"{job_id}_0_log.out").read_text()
    assert "wrote the chexpert twin" in log
    _wait_accounted(job_id, [("COMPLETED", ACCOUNT, "medtraverse-synth")])


@pytest.mark.slurm
def test_medtraverse_submit_reports_a_failed_job(cluster, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "medtraverse", "submit", "--partition", PARTITION]
    cmd += ["--account", ACCOUNT, "--time", "5", "--mem", "500"]
    cmd += ["--folder", str(tmp_path / "logs" / "%j"), "--wait"]
    cmd += ["--wait-timeout", str(int(LIMIT)), "--"]
    res = _run([*cmd, "provenance", str(tmp_path / "missing.txt")], LIMIT + 60)
    assert res.returncode == 1
    job_id = re.search(r"submitted job (\d+)", res.stdout).group(1)  # type: ignore[union-attr]
    assert f"job {job_id} failed" in res.stderr and f"{job_id}_0_log.err" in res.stderr
    # The reason is the stage's own one-line error, fetched from the job's log.
    assert "medtraverse provenance: error:" in res.stderr and "missing.txt" in res.stderr
    _wait_accounted(job_id, [("FAILED", ACCOUNT)])


def _importable_in_jobs(folder: Path, name: str, source: str, monkeypatch) -> None:
    """Write module ``name`` where this process and the jobs (sbatch exports env) import it."""
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), *sys.path]))


RANKS_JOB = """
import os

from medtraverse.hpc.submit import _export_distributed_env


def ranks():
    _export_distributed_env()
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {key: os.environ.get(key) for key in keys}
"""


@pytest.mark.slurm
def test_multi_task_job_gets_torch_distributed_env(
    cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _importable_in_jobs(tmp_path, "ranksjob", RANKS_JOB, monkeypatch)
    from ranksjob import ranks  # type: ignore[import-not-found]

    executor = make_executor(
        folder=tmp_path / "logs" / "%j",
        partition=PARTITION,
        account=ACCOUNT,
        tasks_per_node=2,
        time_min=2,
        mem_mb=500,
    )
    job = executor.submit(ranks)
    deadline = time.monotonic() + LIMIT
    while not job.done():
        assert time.monotonic() < deadline, f"job {job.job_id} did not finish in {LIMIT} s"
        time.sleep(0.5)
    envs = job.results()
    assert sorted(env["RANK"] for env in envs) == ["0", "1"]
    assert {env["WORLD_SIZE"] for env in envs} == {"2"}
    assert len({(env["MASTER_ADDR"], env["MASTER_PORT"]) for env in envs}) == 1


SLOW_JOB = '''
import time
from pathlib import Path

from medtraverse.hpc.submit import StageJob


class SlowFirstAttempt(StageJob):
    """Waits on its first run, so it can be preempted; runs the stage once requeued."""

    def __init__(self, argv, marker):
        super().__init__(argv)
        self.marker = marker

    def __call__(self):
        if not Path(self.marker).exists():
            Path(self.marker).write_text("started")
            time.sleep(120)
            raise RuntimeError("the first run was not preempted")
        return super().__call__()

    def checkpoint(self, *args, **kwargs):
        delayed = super().checkpoint(*args, **kwargs)
        delayed.function = SlowFirstAttempt(delayed.function.argv, self.marker)
        return delayed
'''


@pytest.mark.slurm
@pytest.mark.slow
def test_checkpointable_job_is_requeued_and_completes(
    cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _importable_in_jobs(tmp_path, "slowjob", SLOW_JOB, monkeypatch)
    from slowjob import SlowFirstAttempt  # type: ignore[import-not-found]

    artifact, marker = _artifact(tmp_path), tmp_path / "marker"
    executor = make_executor(
        folder=tmp_path / "logs" / "%j",
        name="medtraverse-requeue",
        partition=PARTITION,
        account=ACCOUNT,
        time_min=5,
        mem_mb=500,
    )
    job = executor.submit(SlowFirstAttempt(["provenance", str(artifact)], str(marker)))
    deadline = time.monotonic() + LIMIT
    while not marker.exists():
        assert time.monotonic() < deadline, f"job {job.job_id} did not start in {LIMIT} s"
        time.sleep(0.2)
    # USR2 only: submitit's checkpoint-and-requeue signal. (_interrupt() without timeout=True
    # also sends SIGTERM, which can reach the job after USR2 and kill its `scontrol requeue`.)
    job._interrupt(timeout=True)
    assert wait(job, timeout_s=LIMIT) == 0  # requeued runs wait AuthInfo=cred_expire (15 s)
    _wait_accounted(job.job_id, [("REQUEUED",), ("COMPLETED", ACCOUNT, "medtraverse-requeue")])
    log = Path(job.paths.stdout).read_text()
    assert "[test]" in log  # the stage's output, from the requeued run


SNAKEFILE = """
localrules: all

rule all:
    input: "b.txt"

rule make_a:
    output: "a.txt"
    shell: "echo a > {output}"

rule make_b:
    input: "a.txt"
    output: "b.txt"
    shell: "cat {input} > {output} && echo b >> {output}"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_snakemake_slurm_ci_profile_runs_jobs_on_the_cluster(cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(REPO / "profiles" / "slurm-ci")]
    res = _run([*cmd, "--directory", str(tmp_path), "-s", str(tmp_path / "Snakefile")], LIMIT)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert (tmp_path / "b.txt").read_text() == "a\nb\n"
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(job_ids) == 2, output  # make_a and make_b; `all` is a local rule
    for job_id in job_ids:
        _wait_accounted(job_id, [("COMPLETED", ACCOUNT)])
