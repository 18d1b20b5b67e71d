"""Shared test setup: offline, single-threaded, deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    """Keep torch on one thread so tests are deterministic and share the 2 cores fairly."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
