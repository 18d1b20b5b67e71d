"""Threads: --threads, else SLURM_CPUS_PER_TASK, else OMP_NUM_THREADS, else the allowed CPUs;
never more than those; the CLI applies the count to torch before the stage runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medtraverse.core.threads import allowed_cpus, resolve_threads
from tests.oneline import one_line_input_error
from tests.workflow_utils import env


@pytest.mark.parametrize(
    ("requested", "environ", "cpus", "expected"),
    [
        (3, {"SLURM_CPUS_PER_TASK": "2", "OMP_NUM_THREADS": "1"}, 8, 3),  # --threads first
        (None, {"SLURM_CPUS_PER_TASK": "6", "OMP_NUM_THREADS": "1"}, 8, 6),  # then SLURM
        (None, {"OMP_NUM_THREADS": "2"}, 8, 2),  # then OMP
        (None, {}, 5, 5),  # then the affinity
        (64, {}, 4, 4),  # never more than allowed
        (None, {"SLURM_CPUS_PER_TASK": "32"}, 4, 4),
        (None, {"OMP_NUM_THREADS": " "}, 3, 3),  # blank: unset
    ],
)
def test_resolve_threads_order_and_cap(
    requested: int | None, environ: dict[str, str], cpus: int, expected: int
) -> None:
    assert resolve_threads(requested, environ, cpus) == expected


@pytest.mark.parametrize(
    ("requested", "environ", "needle"),
    [
        (0, {}, "--threads: got 0"),
        (None, {"SLURM_CPUS_PER_TASK": "many"}, "SLURM_CPUS_PER_TASK: got 'many'"),
        (None, {"OMP_NUM_THREADS": "0"}, "OMP_NUM_THREADS: got '0'"),
    ],
)
def test_bad_thread_counts_are_one_line(
    requested: int | None, environ: dict[str, str], needle: str
) -> None:
    with one_line_input_error(needle):
        resolve_threads(requested, environ, 4)


def test_allowed_cpus_is_the_affinity() -> None:
    if hasattr(os, "sched_getaffinity"):
        assert allowed_cpus() == len(os.sched_getaffinity(0))
    assert allowed_cpus() >= 1


def _torch_threads_after_cli(*cli_args: str, **extra_env: str) -> tuple[int, int]:
    """torch's intra/inter-op threads once the CLI has set up a stage (its main replaced)."""
    code = (
        "import sys, torch, medtraverse.cli as cli, medtraverse.evaluation.score as m\n"
        "m.main = lambda args: print(torch.get_num_threads(), torch.get_num_interop_threads())\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    environ = {k: v for k, v in env().items() if k not in ("OMP_NUM_THREADS",)}
    environ.update(extra_env)
    proc = subprocess.run(
        [sys.executable, "-c", code, "score", "--shard", "s", "--classifier", "c", "--out", "o"]
        + list(cli_args),
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    intra, inter = proc.stdout.split()
    return int(intra), int(inter)


def test_cli_sets_torch_threads_from_the_flag_and_the_environment() -> None:
    cap = allowed_cpus()
    assert _torch_threads_after_cli("--threads", "1") == (1, 1)
    assert _torch_threads_after_cli(SLURM_CPUS_PER_TASK="1", OMP_NUM_THREADS="2") == (1, 1)
    n = min(2, cap)
    assert _torch_threads_after_cli(OMP_NUM_THREADS="2") == (n, n)
