"""Shared test setup: offline, single-threaded, deterministic; the one tiny-pipeline fixture."""

from __future__ import annotations

import os
from pathlib import Path

# Forced, not defaulted: a shell with HF_HUB_OFFLINE=0 must not let a test download anything.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import shutil  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

PARTITION = os.environ.get("MEDTRAVERSE_SLURM_PARTITION", "debug")
START_HINT = "start it with `sudo scripts/slurm-start.sh`"


def _unavailable(reason: str) -> None:
    """Skip a SLURM test where no cluster runs; in CI (MEDTRAVERSE_REQUIRE_SLURM=1) fail instead."""
    if os.environ.get("MEDTRAVERSE_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required here but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster() -> None:
    """The local SLURM cluster of scripts/slurm-start.sh, up with a node ready for jobs."""
    if shutil.which("sinfo") is None:
        _unavailable(f"sinfo not found: SLURM is not installed here ({START_HINT})")
    try:
        res = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"sinfo did not answer in 15 s: the cluster is not up ({START_HINT})")
    if res.returncode != 0:
        msg = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "no answer"
        _unavailable(f"the SLURM cluster is not up ({msg}); {START_HINT}")
    states = set(res.stdout.split())
    if not states & {"idle", "mix", "alloc"}:
        _unavailable(f"partition {PARTITION!r} has no usable node (states {states}); {START_HINT}")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    """Keep torch on one thread so tests are deterministic and share the 2 cores fairly."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD pipeline folder (built offline, seed 0), once per test session: every test
    file that needs a model uses this one instead of building its own."""
    from medtraverse.models.pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-model") / "tiny", seed=0)
