"""Run the real workflow from tests: dry runs parsed into job counts, and real runs; open its
pages in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


PROJECT_PARTS = ("Snakefile", "workflow", "config", "src", "envs", "profiles")


def copy_project(dest: Path) -> Path:
    """The project's workflow files and sources in ``dest``, so a test can edit a stage's
    source or a config there without touching the checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_PARTS:
        src = ROOT / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "smoke-*.yaml")
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def run_workflow(workdir: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    """Snakemake on a copy made by ``copy_project`` (its own Snakefile), in that folder."""
    return snakemake(*args, workdir=workdir, timeout=timeout, snakefile=workdir / "Snakefile")


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


# Offline headless Chromium: no sandbox (containers), no GPU, nothing fetched in the background.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: anything remote fails
)


def chromium(what: str) -> str:
    """Headless Chromium's path; its absence skips the calling test (``what`` was not opened in
    a browser) unless MEDTRAVERSE_REQUIRE_BROWSER=1, which fails it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("MEDTRAVERSE_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required here (make test installs it as root)")
        pytest.skip(f"chromium not installed: {what} was not opened in a browser")
    return found


def chromium_command(browser: str, profile: Path, *args: str, budget_ms: int = 5000) -> list[str]:
    """A Chromium command line with ``CHROMIUM_FLAGS``, ``budget_ms`` of virtual time for the
    page's scripts and its own profile folder, then ``args``."""
    flags = [*CHROMIUM_FLAGS, f"--virtual-time-budget={budget_ms}"]
    return [browser, *flags, f"--user-data-dir={profile}", *args]


def dump_dom(
    browser: str, url: str, profile: Path, budget_ms: int = 5000, timeout: float = 120
) -> str:
    """The DOM of ``url`` after its scripts ran (``--dump-dom``), as Chromium prints it."""
    cmd = chromium_command(browser, profile, "--dump-dom", url, budget_ms=budget_ms)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
