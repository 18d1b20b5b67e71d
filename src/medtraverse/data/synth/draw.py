"""A small numpy drawing kit shared by the synthetic twins.

Shapes are drawn on pixel-centre coordinates in [-1, 1] (x to the right, y down) with analytic
coverage (anti-aliased edges from a signed distance), so a scene looks the same at 32, 64 or
512 px and every step is a vectorised array operation: thousands of images take seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class Grid:
    """Pixel-centre coordinates of a ``size`` x ``size`` image in [-1, 1]."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.t = (np.arange(self.size, dtype=np.float64) + 0.5) / self.size * 2.0 - 1.0
        self.y, self.x = np.meshgrid(self.t, self.t, indexing="ij")
        self.px = 2.0 / self.size  # one pixel in coordinate units

    def window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice]:
        """Row and column slices of the pixels whose centres lie in the box [lo, hi] (x, y)."""

        def span(a: float, b: float) -> slice:
            # pixel i's centre is (i + 0.5) * px - 1; keep the centres in [a, b]
            i0 = min(max(math.ceil((a + 1.0) / self.px - 0.5), 0), self.size)
            i1 = min(max(math.floor((b + 1.0) / self.px - 0.5) + 1, 0), self.size)
            return slice(i0, max(i0, i1))

        return span(float(lo[1]), float(hi[1])), span(float(lo[0]), float(hi[0]))


@dataclass(frozen=True)
class Frame:
    """A rotated, scaled, shifted body frame: shapes are defined in frame coordinates (X, Y)
    and drawn on the image, so one patient's anatomy can be re-posed per study."""

    cx: float
    cy: float
    angle: float  # degrees, counter-clockwise on screen is negative y
    scale: float

    def coords(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Frame coordinates of every pixel centre."""
        c, s = np.cos(np.radians(self.angle)), np.sin(np.radians(self.angle))
        dx, dy = grid.x - self.cx, grid.y - self.cy
        return (c * dx + s * dy) / self.scale, (-s * dx + c * dy) / self.scale

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        """Image coordinates of frame points (k, 2)."""
        pts = np.asarray(pts, dtype=np.float64)
        c, s = np.cos(np.radians(self.angle)), np.sin(np.radians(self.angle))
        x = self.cx + self.scale * (c * pts[:, 0] - s * pts[:, 1])
        y = self.cy + self.scale * (s * pts[:, 0] + c * pts[:, 1])
        return np.stack([x, y], axis=1)


def inside(dist: np.ndarray, width: float) -> np.ndarray:
    """Coverage in [0, 1] from a signed distance (negative inside), edge ``width`` wide."""
    return np.clip(0.5 - dist / max(width, 1e-9), 0.0, 1.0)


def smoothstep(v: np.ndarray) -> np.ndarray:
    """Hermite ramp of ``v`` clipped to [0, 1]."""
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def ellipse_dist(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> np.ndarray:
    """Approximate signed distance to an ellipse (first-order, exact on the boundary)."""
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    dx, dy = x - cx, y - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    f = (u / a) ** 2 + (v / b) ** 2 - 1.0
    grad = 2.0 * np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) + 1e-9
    return f / grad


def bezier(ctrl: np.ndarray, n: int = 24) -> np.ndarray:
    """``n`` points on the Bezier curve of the control points ``ctrl`` (k, 2)."""
    ctrl = np.asarray(ctrl, dtype=np.float64)
    deg = len(ctrl) - 1
    t = np.linspace(0.0, 1.0, n)[:, None]
    from math import comb

    basis = np.stack(
        [comb(deg, i) * t[:, 0] ** i * (1 - t[:, 0]) ** (deg - i) for i in range(deg + 1)], 1
    )
    return basis @ ctrl


def stroke(grid: Grid, pts: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a polyline ``pts`` (k, 2, image coordinates) drawn ``width`` wide.

    Distances are computed segment by segment inside each segment's own bounding box, so the
    cost follows the stroke's area, not the image's (long hairs at 512 px stay cheap).
    """
    pts = np.asarray(pts, dtype=np.float64)
    if len(pts) == 1:
        pts = np.vstack([pts, pts])
    out = np.zeros((grid.size, grid.size))
    half = width / 2.0
    margin = half + 2.0 * grid.px
    rows, cols = grid.window(pts.min(0) - margin, pts.max(0) + margin)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return out
    best = np.full((rows.stop - rows.start, cols.stop - cols.start), np.inf)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        r, c = grid.window(np.minimum(a, b) - margin, np.maximum(a, b) + margin)
        if r.stop <= r.start or c.stop <= c.start:
            continue
        ys, xs = grid.t[r][:, None], grid.t[c][None, :]
        ab = b - a
        den = max(float(ab @ ab), 1e-12)
        t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / den, 0.0, 1.0)
        d = np.hypot(xs - a[0] - t * ab[0], ys - a[1] - t * ab[1])
        view = best[
            r.start - rows.start : r.stop - rows.start, c.start - cols.start : c.stop - cols.start
        ]
        np.minimum(view, d, out=view)
    out[rows, cols] = inside(best - half, grid.px)
    return out


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise (about unit variance): a ``cells`` x ``cells`` random lattice,
    smoothly interpolated to ``size`` x ``size``."""
    lattice = rng.standard_normal((cells + 1, cells + 1))
    pos = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(pos.astype(int), cells - 1)
    f = smoothstep(pos - i)
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur over the image plane only (not across colour channels)."""
    if sigma_px <= 0.05:
        return img
    from scipy.ndimage import gaussian_filter

    sigma = (sigma_px, sigma_px) + (0.0,) * (img.ndim - 2)
    return gaussian_filter(img, sigma=sigma, mode="nearest")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 with rounding (clipped)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def paint(canvas: np.ndarray, alpha: np.ndarray, value: float | np.ndarray) -> np.ndarray:
    """Composite ``value`` over ``canvas`` with per-pixel ``alpha`` (grey or RGB), in place."""
    if canvas.ndim == 3:
        a = alpha[..., None]
        canvas *= 1.0 - a
        canvas += a * np.asarray(value, dtype=np.float64)
    else:
        canvas *= 1.0 - alpha
        canvas += alpha * value
    return canvas
