"""Device choice shared by every stage that runs a model."""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """``auto`` means the GPU when there is one, else the CPU; any other name is kept."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
