"""Run the real workflow from tests: dry runs parsed into job counts, and real runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    """The test environment: the venv's tools first on PATH, offline, one thread per job."""
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return out


def snakemake(
    *args: str, workdir: Path, timeout: float = 900, snakefile: Path | None = None
) -> subprocess.CompletedProcess:
    """Run snakemake on ``snakefile`` (the project's by default) in ``workdir``."""
    snakefile = snakefile or ROOT / "Snakefile"
    cmd = [str(BIN / "snakemake"), "-s", str(snakefile), "-d", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count} (empty when nothing would run)."""
    counts: dict[str, int] = {}
    if "Job stats:" not in output:
        return counts
    table = output.split("Job stats:", 1)[1].splitlines()
    for line in table[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


NOTHING_TO_DO = "Nothing to be done"


def dry_run(
    config: Path | str, workdir: Path, *extra: str, snakefile: Path | None = None
) -> dict[str, int]:
    """Jobs that would run, by rule; fails the test with snakemake's output on error, and when
    the output holds neither a job table nor Snakemake's "Nothing to be done" (an empty dict
    then really means nothing to do, not a table the parser missed)."""
    proc = snakemake(
        "-n", "--configfile", str(config), *extra, workdir=workdir, timeout=300, snakefile=snakefile
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = job_counts(output)
    if counts:
        return counts
    assert NOTHING_TO_DO in output and "Job stats:" not in output, output[-3000:]
    return counts
