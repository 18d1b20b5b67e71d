"""Run one stage as a one-off SLURM job, outside the Snakemake DAG (submitit).

For work the workflow does not describe, e.g. a traversal with a custom prompt pair::

    medtraverse submit --partition gpu --account myproj --gpus 1 --time 120 --wait -- \\
        traverse --model results/paper/models/isic --out my-shards/shard-0000 \\
        --dataset isic --trajectory ruler-custom --seed-start 0 --seed-count 64 \\
        --neutral "a dermoscopic image" --attribute "a dermoscopic image with a ruler" \\
        --params @config/traverse.json

Everything after ``--`` is the stage and its arguments, exactly as ``medtraverse`` takes them;
the job runs ``medtraverse.cli.main([stage, *args])`` with the submitting Python, in the
submitting folder. Logs go to ``--folder`` (``%j`` becomes the job id).

Preemption and time limits: the job is a ``submitit.helpers.Checkpointable``. When SLURM
signals it (``--signal USR2`` 90 s before the time limit, or on preemption), ``checkpoint()``
hands back the *same command* and submitit requeues the job. That is correct for our stages:
``finetune`` resumes from its latest checkpoint by itself, and the other stages write
atomically, so a rerun either finds the finished output or redoes the unfinished part.

Multi-node / multi-process (e.g. fine-tuning on 2 nodes x 4 GPUs)::

    medtraverse submit --nodes 2 --tasks-per-node 4 --gpus 4 --cpus 8 --time 1440 -- \\
        finetune --model base/ --cache cache/ --out finetuned/ --params @finetune.json

SLURM starts one task per GPU; in each, before the stage runs, submitit's
``TorchDistributedEnvironment().export()`` sets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (``CUDA_VISIBLE_DEVICES`` is left as
SLURM set it), so ``accelerate.Accelerator()`` inside the stage joins one process group
through ``env://`` exactly as under ``accelerate launch``. Only rank 0 should write shared
outputs, which accelerate's main-process guards already do.

``--cluster local`` runs the job as a local subprocess and ``--cluster debug`` in this process
(no SLURM needed), for trying a command before sending it to the cluster.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from medtraverse.core.errors import InputError, bad_input

DEFAULT_FOLDER = "results/submit/%j"


class StageJob(submitit.helpers.Checkpointable):
    """One ``medtraverse <stage> ...`` command as a requeueable submitit job."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)

    def __call__(self) -> int:
        from medtraverse.cli import main  # noqa: PLC0415 - the job imports what it runs

        _export_distributed_env()
        try:
            code = main(list(self.argv))
        except SystemExit as exc:  # argparse exits on bad flags
            code = exc.code if isinstance(exc.code, int) else 1
        if code != 0:
            raise RuntimeError(f"medtraverse {' '.join(self.argv)} exited with status {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same command: the stages resume or redo unfinished work themselves."""
        return submitit.helpers.DelayedSubmission(StageJob(self.argv))

    def __repr__(self) -> str:
        return f"StageJob({self.argv!r})"


def _export_distributed_env() -> None:
    """In a job of several tasks, set the torch.distributed ``env://`` variables."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    try:
        env = submitit.JobEnvironment()
        num_tasks = env.num_tasks
    except RuntimeError:
        return
    if num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise bad_input(f"--{name}", f"got {value}", f"an integer >= {minimum}")
    return value


def _sbatch_extra(items: list[str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise bad_input("--sbatch", f"got {item!r}", "KEY=VALUE, e.g. constraint=a100")
        extra[key.lstrip("-")] = value
    return extra


def make_executor(
    *,
    cluster: str = "slurm",
    folder: str | Path = DEFAULT_FOLDER,
    name: str = "medtraverse",
    partition: str | None = None,
    account: str | None = None,
    gpus: int = 0,
    cpus: int = 1,
    mem_mb: int = 4000,
    time_min: int = 60,
    nodes: int = 1,
    tasks_per_node: int = 1,
    sbatch: dict[str, str] | None = None,
) -> submitit.AutoExecutor:
    """A submitit executor with the job's resources (SLURM-only settings skip other clusters)."""
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise InputError(
            "--cluster slurm: sbatch not found on PATH; expected a SLURM login node "
            "(or use --cluster local)"
        )
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": time_min,
        "cpus_per_task": cpus,
        "mem_gb": mem_mb / 1024,
        "nodes": nodes,
        "tasks_per_node": tasks_per_node,
    }
    if gpus > 0:
        params["gpus_per_node"] = gpus
    if partition:
        params["slurm_partition"] = partition
    if account:
        params["slurm_account"] = account
    if sbatch:
        params["slurm_additional_parameters"] = dict(sbatch)
    executor.update_parameters(**params)
    return executor


def submit(argv: list[str], executor: submitit.Executor) -> submitit.Job:
    """Submit ``medtraverse <argv...>`` as one job."""
    return executor.submit(StageJob(argv))


def wait(job: submitit.Job, timeout_s: float | None = None, poll_s: float = 1.0) -> Any:
    """Block until ``job`` ends (or ``timeout_s`` passes: TimeoutError) and return its result."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not job.done():
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job.job_id} still {job.state} after {timeout_s:g} s")
        time.sleep(poll_s)
    return job.result()


def _failure_reason(err: Exception, stderr_log: Path) -> str:
    """One line on why a job failed: the stage's own error line if it logged one."""
    try:
        lines = stderr_log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    stage_errors = [ln for ln in lines if re.match(r"medtraverse [\w-]+: error: ", ln)]
    if stage_errors:
        return stage_errors[-1].strip()
    raised = [ln for ln in str(err).splitlines() if re.match(r"\w+(Error|Exception|Exit)\b", ln)]
    return raised[-1].strip() if raised else type(err).__name__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "medtraverse submit [options] -- <stage> [stage args...]"
    parser.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        default="slurm",
        help="slurm (default); local: a subprocess here; debug: in this process",
    )
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    parser.add_argument("--account", help="SLURM account (default: your default account)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node (default 0)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per task (default 1)")
    parser.add_argument("--mem", type=int, default=4000, help="memory per node in MB (4000)")
    parser.add_argument("--time", type=int, default=60, help="time limit in minutes (60)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument(
        "--tasks-per-node", type=int, default=1, help="tasks per node, e.g. one per GPU (1)"
    )
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, repeatable (e.g. --sbatch qos=high --sbatch constraint=a100)",
    )
    parser.add_argument("--name", help="job name (default medtraverse-<stage>)")
    parser.add_argument(
        "--folder",
        default=DEFAULT_FOLDER,
        help=f"log folder, %%j = job id (default {DEFAULT_FOLDER.replace('%', '%%')})",
    )
    parser.add_argument("--wait", action="store_true", help="block until the job ends")
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (the job keeps running)",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- then the stage and its arguments"
    )


def main(args: argparse.Namespace) -> None:
    from medtraverse.cli import STAGES  # noqa: PLC0415 - avoid a cycle at import time

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise bad_input("medtraverse submit", "no stage given", "'-- <stage> [stage args...]'")
    stage = command[0]
    if stage not in STAGES or stage == "submit":
        allowed = ", ".join(s for s in STAGES if s != "submit")
        raise bad_input("medtraverse submit", f"unknown stage {stage!r}", f"one of {allowed}")
    for flag, value, minimum in (
        ("cpus", args.cpus, 1),
        ("mem", args.mem, 1),
        ("time", args.time, 1),
        ("nodes", args.nodes, 1),
        ("tasks-per-node", args.tasks_per_node, 1),
        ("gpus", args.gpus, 0),
    ):
        _positive(flag, value, minimum)
    if args.wait_timeout is not None and args.wait_timeout <= 0:
        raise bad_input(
            "--wait-timeout", f"got {args.wait_timeout}", "a positive number of seconds"
        )

    executor = make_executor(
        cluster=args.cluster,
        folder=args.folder,
        name=args.name or f"medtraverse-{stage}",
        partition=args.partition,
        account=args.account,
        gpus=args.gpus,
        cpus=args.cpus,
        mem_mb=args.mem,
        time_min=args.time,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        sbatch=_sbatch_extra(args.sbatch),
    )
    job = submit(command, executor)
    print(f"submitted job {job.job_id} ({args.cluster}): medtraverse {' '.join(command)}")
    print(f"  logs: {job.paths.stdout}  {job.paths.stderr}")
    if not args.wait:
        return
    try:
        wait(job, timeout_s=args.wait_timeout)
    except TimeoutError as err:
        print(f"medtraverse submit: error: {err}; logs in {job.paths.folder}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as err:  # noqa: BLE001 - a failed job: say why and where its log is
        reason = _failure_reason(err, Path(job.paths.stderr))
        print(
            f"medtraverse submit: error: job {job.job_id} failed ({reason}); "
            f"log: {job.paths.stderr}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    print(f"job {job.job_id} completed; logs: {job.paths.stdout}")
