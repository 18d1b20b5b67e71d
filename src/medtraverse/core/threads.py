"""How many CPU threads a stage may use, decided once by the CLI before the stage runs.

Snakemake passes a rule's ``threads:`` as ``--threads``. A stage run alone (by hand, by
``medtraverse submit``) takes ``SLURM_CPUS_PER_TASK``, else ``OMP_NUM_THREADS``, else the CPUs
this process may run on (its affinity mask, not the machine's core count): torch's default of
one thread per core oversubscribes a node shared with other jobs. Never more than the affinity
allows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from medtraverse.core.errors import bad_input

# Variables the BLAS/OpenMP runtimes read at start-up (children and torch's first import).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def allowed_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity``; the core count where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _positive(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_input(name, f"got {raw!r}", "a positive integer (threads)") from None
    if value < 1:
        raise bad_input(name, f"got {raw!r}", "a positive integer (threads)")
    return value


def resolve_threads(
    requested: int | None, environ: Mapping[str, str] | None = None, cpus: int | None = None
) -> int:
    """The thread count: ``requested`` (``--threads``), else ``SLURM_CPUS_PER_TASK``, else
    ``OMP_NUM_THREADS``, else the allowed CPUs; capped at the allowed CPUs."""
    environ = os.environ if environ is None else environ
    cpus = allowed_cpus() if cpus is None else cpus
    if requested is not None and requested < 1:
        raise bad_input("--threads", f"got {requested}", "a positive integer")
    for value in (
        requested,
        _positive(environ, "SLURM_CPUS_PER_TASK"),
        _positive(environ, "OMP_NUM_THREADS"),
    ):
        if value is not None:
            return min(value, cpus)
    return cpus


_INTEROP_SET = False


def apply_threads(n: int, torch_too: bool = True) -> None:
    """Use ``n`` threads: the runtimes' variables (for children and a later torch import), and
    torch's intra-op threads; its inter-op pool only once (torch allows it before first use)."""
    global _INTEROP_SET
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    if not torch_too and "torch" not in sys.modules:
        return
    import torch

    torch.set_num_threads(n)
    if not _INTEROP_SET:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # parallel work already ran in this process: keep torch's pool
            pass
        _INTEROP_SET = True
