"""Bezier interpolation over a seed's final latents (METHOD.md section 5).

The control points are the flattened final latents ``[z_neutral, z_45, z_40, ..., z_5]``: the
neutral run first, then the swaps from the latest (smallest edit) to the earliest (largest edit),
so the curve walks from the neutral image towards the strongest edit. With ``n`` swap steps the
curve has degree ``n`` (``n + 1`` control points).

``bezier_curve`` evaluates the Bernstein form with exact binomial coefficients (``math.comb``),
accumulating in float64 and casting back at the end: the end points are reproduced exactly
(the weights at t = 0 and t = 1 are exactly one-hot). ``de_casteljau`` is the classic stable
recursion, kept as an independent reference for tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "bernstein_weights",
    "bezier_curve",
    "control_points",
    "de_casteljau",
    "frame_times",
]


def frame_times(num_frames: int) -> torch.Tensor:
    """The frame parameters ``t = linspace(0, 1, num_frames)`` in float64."""
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    return torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)


def bernstein_weights(degree: int, t: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Bernstein basis ``C(n, i) t^i (1 - t)^(n - i)`` as a float64 ``(len(t), n + 1)`` matrix."""
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    i = torch.arange(degree + 1, dtype=torch.float64).reshape(1, -1)
    coeff = torch.tensor([math.comb(degree, j) for j in range(degree + 1)], dtype=torch.float64)
    # torch.pow(0., 0.) == 1, so t = 0 and t = 1 give exactly one-hot rows.
    return coeff * torch.pow(t, i) * torch.pow(1.0 - t, degree - i)


def bezier_curve(points: torch.Tensor, t: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Evaluate the Bezier curve with control ``points`` (P, ...) at each ``t``: (len(t), ...).

    Accumulates ``sum_i w_i(t) * P_i`` in float64 in a fixed order (deterministic on any BLAS),
    then casts to the dtype of ``points``.
    """
    if points.ndim < 1 or points.shape[0] < 1:
        raise ValueError("need at least one control point")
    weights = bernstein_weights(points.shape[0] - 1, t).to(points.device)
    flat = points.reshape(points.shape[0], -1).to(torch.float64)
    out = torch.zeros(weights.shape[0], flat.shape[1], dtype=torch.float64, device=points.device)
    for i in range(flat.shape[0]):
        out += weights[:, i : i + 1] * flat[i]
    return out.to(points.dtype).reshape(weights.shape[0], *points.shape[1:])


def de_casteljau(points: torch.Tensor, t: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Reference evaluation by repeated linear interpolation (float64, cast back at the end)."""
    ts = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    flat = points.reshape(points.shape[0], -1).to(torch.float64)
    rows = []
    for tv in ts.tolist():
        level = flat
        while level.shape[0] > 1:
            level = (1.0 - tv) * level[:-1] + tv * level[1:]
        rows.append(level[0])
    out = torch.stack(rows) if rows else flat.new_zeros(0, flat.shape[1])
    return out.to(points.dtype).reshape(len(rows), *points.shape[1:])


def control_points(
    latents: Mapping[str | int, torch.Tensor], swap_steps: Sequence[int]
) -> torch.Tensor:
    """Stack ``[latents["neutral"], latents[k_max], ..., latents[k_min]]`` along a new dim 0.

    ``latents`` maps ``"neutral"`` and each swap step ``k`` to tensors of the same shape.
    """
    order = ["neutral", *sorted(swap_steps, reverse=True)]
    return torch.stack([latents[key] for key in order])
