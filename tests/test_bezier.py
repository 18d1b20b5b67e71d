"""Bezier interpolation over final latents: end points, Bernstein form, control-point order."""

from __future__ import annotations

import math

import pytest
import torch

from medtraverse.traversal.bezier import (
    bernstein_weights,
    bezier_curve,
    control_points,
    de_casteljau,
    frame_times,
)


def _direct(points: torch.Tensor, t: float) -> torch.Tensor:
    """Textbook sum_i C(n,i) t^i (1-t)^(n-i) P_i in Python float64 arithmetic."""
    n = points.shape[0] - 1
    flat = points.reshape(points.shape[0], -1).double()
    total = torch.zeros(flat.shape[1], dtype=torch.float64)
    for i in range(n + 1):
        total += math.comb(n, i) * t**i * (1 - t) ** (n - i) * flat[i]
    return total.reshape(points.shape[1:])


@pytest.fixture
def points() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(10, 4, 8, 8, generator=gen) * 3.0  # degree 9, like the paper


def test_curve_passes_through_end_points_exactly(points: torch.Tensor) -> None:
    curve = bezier_curve(points, frame_times(50))
    assert curve.shape == (50, 4, 8, 8) and curve.dtype == torch.float32
    assert torch.equal(curve[0], points[0])
    assert torch.equal(curve[-1], points[-1])


def test_curve_matches_direct_bernstein_and_de_casteljau(points: torch.Tensor) -> None:
    ts = frame_times(50)
    p64 = points.double()
    curve = bezier_curve(p64, ts)
    ref = de_casteljau(p64, ts)
    for f, t in enumerate(ts.tolist()):
        assert torch.allclose(curve[f], _direct(p64, t), rtol=0, atol=1e-12)
    assert torch.allclose(curve, ref, rtol=0, atol=1e-12)
    # float32 control points: float64 accumulation, one rounding at the end
    assert torch.equal(bezier_curve(points, ts), curve.float())


def test_interior_frames_are_not_the_control_points(points: torch.Tensor) -> None:
    curve = bezier_curve(points, frame_times(5))
    # degree 9: t = 0.5 is a weighted blend, the binomial middle dominates
    expected_mid = _direct(points.double(), 0.5).float()
    assert torch.allclose(curve[2], expected_mid, atol=1e-6)
    assert not torch.allclose(curve[2], points[0]) and not torch.allclose(curve[2], points[-1])


def test_bernstein_weights_partition_of_unity_and_degree() -> None:
    w = bernstein_weights(9, frame_times(50))
    assert w.shape == (50, 10) and w.dtype == torch.float64
    assert torch.allclose(w.sum(1), torch.ones(50, dtype=torch.float64), atol=1e-14)
    assert torch.equal(w[0], torch.eye(10, dtype=torch.float64)[0])
    assert torch.equal(w[-1], torch.eye(10, dtype=torch.float64)[-1])
    assert w.min() >= 0


def test_two_points_give_the_straight_line() -> None:
    a, b = torch.zeros(3), torch.tensor([1.0, 2.0, 4.0])
    curve = bezier_curve(torch.stack([a, b]), [0.0, 0.25, 1.0])
    assert torch.equal(curve[1], torch.tensor([0.25, 0.5, 1.0]))


def test_control_points_order_neutral_then_late_to_early_swaps() -> None:
    swaps = [5, 10, 15, 20, 25, 30, 35, 40, 45]
    latents = {"neutral": torch.full((2,), -1.0)} | {k: torch.full((2,), float(k)) for k in swaps}
    pts = control_points(latents, swaps)
    assert pts[:, 0].tolist() == [-1.0, 45, 40, 35, 30, 25, 20, 15, 10, 5]
    # the degree follows the number of swap steps
    assert control_points(latents, [5, 25]).shape == (3, 2)


def test_frame_times() -> None:
    ts = frame_times(50)
    assert ts[0] == 0.0 and ts[-1] == 1.0 and len(ts) == 50
    assert len(frame_times(0)) == 0
    with pytest.raises(ValueError):
        frame_times(-1)
