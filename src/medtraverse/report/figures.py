"""Figures (matplotlib Agg, PNG): traversal grids, Bezier strips, probability and cosine curves,
LPIPS per step, t-SNE.

``medtraverse figures --metrics DIR --out DIR [--traversals SHARD ...] [--params JSON]``
re-renders from an aggregate folder (``probability.csv``, ``cosine.csv``, ``lpips_per_step.csv``,
``tsne.csv``) and exactly the shard folders named (or listed in an ``@LIST`` file; folders are
not searched); ``medtraverse aggregate`` calls ``render_all`` itself and
puts the files in ``<metrics>/figures/``:

- ``grid_<trajectory>.png``: rows are seeds; columns the neutral image, then the swaps from late
  (k = 45, small edit) to early (k = 5);
- ``bezier_<trajectory>.png``: rows are seeds; ``strip_frames`` frames evenly spaced in t;
- ``probability_vs_k.png``: mean classifier probability (95% CI) per swap step, one panel per
  trajectory, the neutral image's mean as a dashed line;
- ``cosine_vs_k.png``: mean cosine per swap step per trajectory (95% CI);
- ``lpips_vs_step.png``: LPIPS per swap step and per Bezier frame, labelled with its backbone
  (random trunk: "not comparable with the paper");
- ``tsne.png``: final latents coloured by trajectory (left) and by swap step (right).

Params: figure_seeds (4), strip_frames (10).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.params import load_params, parse_params, setting


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display; imported only when drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _shard_meta(shards: list[Path]) -> pd.DataFrame:
    parts = []
    for shard in shards:
        meta = pd.read_parquet(shard / "meta.parquet")
        meta["abs_path"] = [shard / str(p) for p in meta["path"]]
        parts.append(meta)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def image_grid(
    cells: list[list[Path | None]],
    col_titles: list[str],
    row_titles: list[str],
    title: str,
    out_png: Path,
) -> None:
    """Images in a grid (``cells[row][col]``; a missing file leaves its cell blank), column
    titles on the first row, row titles on the first column."""
    plt = pyplot()
    rows, cols = len(cells), len(col_titles)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.2 * cols + 0.6, 1.2 * rows + 0.6), squeeze=False
    )
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            path = cells[r][c]
            if path is not None and Path(path).is_file():
                ax.imshow(_read_rgb(Path(path)))
            if r == 0:
                ax.set_title(col_titles[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(plt, fig, out_png)


def traversal_grid(shards: list[Path], out_png: Path, trajectory: str, n_seeds: int = 4) -> bool:
    """Rows are seeds; columns the neutral image then k from late (45) to early (5)."""
    meta = _shard_meta(shards)
    if meta.empty or not (meta["kind"] == "swap").any():
        return False
    seeds = sorted(meta["seed"].unique())[:n_seeds]
    ks = sorted(meta.loc[meta["kind"] == "swap", "k"].unique(), reverse=True)
    index = {
        (int(s), kind, int(k)): p
        for s, kind, k, p in zip(
            meta["seed"], meta["kind"], meta["k"], meta["abs_path"], strict=True
        )
    }
    cells = [
        [index.get((int(s), "neutral", -1))] + [index.get((int(s), "swap", int(k))) for k in ks]
        for s in seeds
    ]
    image_grid(
        cells,
        ["neutral"] + [f"k={k}" for k in ks],
        [f"seed {s}" for s in seeds],
        f"{trajectory}: swap at step k (late -> early)",
        out_png,
    )
    return True


def bezier_strip(
    shards: list[Path], out_png: Path, trajectory: str, n_seeds: int = 4, n_frames: int = 10
) -> bool:
    """Rows are seeds; columns Bezier frames evenly spaced in t."""
    meta = _shard_meta(shards)
    frames_meta = meta[meta["kind"] == "bezier"] if not meta.empty else meta
    if frames_meta.empty:
        return False
    seeds = sorted(frames_meta["seed"].unique())[:n_seeds]
    all_frames = sorted(frames_meta["frame"].unique())
    pick = sorted(
        {
            all_frames[int(round(i))]
            for i in np.linspace(0, len(all_frames) - 1, min(n_frames, len(all_frames)))
        }
    )
    index = {
        (int(s), int(f)): p
        for s, f, p in zip(
            frames_meta["seed"], frames_meta["frame"], frames_meta["abs_path"], strict=True
        )
    }
    t_of = dict(zip(frames_meta["frame"].astype(int), frames_meta["t"], strict=False))
    titles = [f"t={t_of.get(f, math.nan):.2f}" for f in pick]
    cells = [[index.get((int(s), int(f))) for f in pick] for s in seeds]
    image_grid(
        cells, titles, [f"seed {s}" for s in seeds], f"{trajectory}: Bezier interpolation", out_png
    )
    return True


def save_figure(plt: Any, fig: Any, out_png: Path) -> None:
    """Every figure: tight layout, 120 dpi PNG, figure closed (no leaks over many plots)."""
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def _band(ax: Any, x: Any, rows: pd.DataFrame, colour: str, label: str, **line: Any) -> None:
    """A mean curve with its 95% bootstrap band (columns value, ci_low, ci_high)."""
    ax.plot(x, rows["value"], color=colour, label=label, **line)
    ax.fill_between(x, rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15)


def _by_trajectory(df: pd.DataFrame) -> list[tuple[str, Any, pd.DataFrame]]:
    """(colour, trajectory, rows) per trajectory in name order, colours cycling C0..C9, so a
    trajectory keeps its colour within a figure whatever the row order."""
    groups = sorted(df.groupby("trajectory"), key=lambda kv: kv[0])
    return [(f"C{i % 10}", traj, part) for i, (traj, part) in enumerate(groups)]


def _panels(n: int) -> tuple[int, int]:
    cols = min(4, max(1, n))
    return math.ceil(n / cols), cols


def probability_vs_k(prob: pd.DataFrame, out_png: Path) -> bool:
    """Mean probability per swap step (CI band), one panel per trajectory; neutral dashed."""
    if prob.empty:
        return False
    plt = pyplot()
    trajs = sorted(prob["trajectory"].unique())
    nr, nc = _panels(len(trajs))
    fig, axes = plt.subplots(nr, nc, figsize=(3.6 * nc, 2.8 * nr), squeeze=False)
    for ax, traj in zip(axes.ravel(), trajs, strict=False):
        part = prob[prob["trajectory"] == traj]
        for i, col in enumerate(sorted(part["column"].unique())):
            colour = f"C{i % 10}"
            sw = part[(part["column"] == col) & (part["kind"] == "swap")].sort_values("k")
            style = "--" if col.startswith("truth_") else "-"
            _band(ax, sw["k"], sw, colour, col, linestyle=style, marker="o", ms=3)
            neutral = part[(part["column"] == col) & (part["kind"] == "neutral")]
            if len(neutral):
                ax.axhline(float(neutral["value"].iloc[0]), color=colour, ls=":", lw=1)
        ax.set_title(traj, fontsize=9)
        ax.set_xlabel("swap step k (dotted: neutral)")
        ax.set_ylabel("mean probability")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(trajs) :]:
        ax.axis("off")
    save_figure(plt, fig, out_png)
    return True


def cosine_vs_k(cos: pd.DataFrame, out_png: Path) -> bool:
    """Mean cos(L[1]-L[0], L[i]-L[0]) per swap step per trajectory, k from late to early."""
    if cos.empty:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for colour, traj, part in _by_trajectory(cos):
        part = part.sort_values("k", ascending=False)
        _band(ax, part["k"], part, colour, traj, marker="o", ms=3)
    ax.invert_xaxis()
    ax.set_xlabel("swap step k (late -> early)")
    ax.set_ylabel("cosine to the k=45 direction")
    ax.legend(fontsize=6)
    save_figure(plt, fig, out_png)
    return True


def lpips_vs_step(lp: pd.DataFrame, out_png: Path) -> bool:
    """LPIPS per swap step and per Bezier frame, labelled with the backbone."""
    if lp.empty:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, version, xlabel in (
        (axes[0], "swap", "swap step k"),
        (axes[1], "bezier", "Bezier frame"),
    ):
        part = lp[lp["version"] == version]
        for colour, traj, group in _by_trajectory(part):
            group = group.sort_values("step")
            _band(ax, group["step"], group, colour, traj, marker=".")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("LPIPS")
        if len(part):
            ax.legend(fontsize=6)
    labels = sorted(set(lp["lpips_backbone"].astype(str)))
    comparable = bool(lp["comparable"].all())
    note = "" if comparable else " - NOT comparable with the paper"
    fig.suptitle(f"LPIPS (backbone {', '.join(labels)}){note}", fontsize=9)
    save_figure(plt, fig, out_png)
    return True


def tsne_scatter(tsne: pd.DataFrame, out_png: Path) -> bool:
    """t-SNE points coloured by trajectory (left) and by swap step (right, neutral black)."""
    if tsne.empty:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for colour, traj, part in _by_trajectory(tsne):
        axes[0].scatter(part["x"], part["y"], s=6, color=colour, alpha=0.7, label=traj)
    axes[0].legend(fontsize=6, markerscale=2)
    axes[0].set_title("by trajectory", fontsize=9)
    swaps = tsne[tsne["k"] >= 0]
    neutral = tsne[tsne["k"] < 0]
    sc = axes[1].scatter(swaps["x"], swaps["y"], s=6, c=swaps["k"], cmap="viridis")
    axes[1].scatter(neutral["x"], neutral["y"], s=8, color="black", marker="x", label="neutral")
    fig.colorbar(sc, ax=axes[1], label="swap step k")
    axes[1].legend(fontsize=6)
    axes[1].set_title("by swap step k", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("t-SNE of final latents", fontsize=9)
    save_figure(plt, fig, out_png)
    return True


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


@dataclass(frozen=True)
class FiguresParams:
    """The figures' settings (keys of the ``metrics`` section)."""

    figure_seeds: int = setting(4, min=1, help="seeds in the figures")
    strip_frames: int = setting(10, min=1, help="frames of a Bezier strip")


def render_all(
    metrics_dir: Path,
    shard_map: dict[str, list[Path]],
    out_dir: Path,
    params: FiguresParams | dict[str, Any],
) -> list[Path]:
    """Every figure that the available tables and shards allow; returns the files written."""
    metrics_dir, out_dir = Path(metrics_dir), Path(out_dir)
    spec = params if isinstance(params, FiguresParams) else parse_params(FiguresParams, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_seeds, n_frames = spec.figure_seeds, spec.strip_frames
    written = []
    for traj, shards in sorted(shard_map.items()):
        png = out_dir / f"grid_{traj}.png"
        if traversal_grid(shards, png, traj, n_seeds):
            written.append(png)
        png = out_dir / f"bezier_{traj}.png"
        if bezier_strip(shards, png, traj, n_seeds, n_frames):
            written.append(png)
    for name, fn, table in (
        ("probability_vs_k", probability_vs_k, "probability.csv"),
        ("cosine_vs_k", cosine_vs_k, "cosine.csv"),
        ("lpips_vs_step", lpips_vs_step, "lpips_per_step.csv"),
        ("tsne", tsne_scatter, "tsne.csv"),
    ):
        png = out_dir / f"{name}.png"
        if fn(_read_csv(metrics_dir / table), png):
            written.append(png)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics", type=Path, required=True, help="a folder written by 'medtraverse aggregate'"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for the PNGs")
    parser.add_argument(
        "--traversals",
        nargs="*",
        action="extend",
        default=[],
        help="traversal shard folders, each named (or @LIST: a file naming one a line)",
    )
    parser.add_argument(
        "--params",
        default="{}",
        help="metrics params as JSON or @file (figure_seeds, strip_frames)",
    )


def main(args: argparse.Namespace) -> None:
    from medtraverse.core import provenance
    from medtraverse.core.io import atomic_path, check_output
    from medtraverse.traversal.shards import group_shards

    check_output(args.out, "figures", "folder")  # before any work; never replaces user data
    if not args.metrics.is_dir():
        raise bad_input(args.metrics, "not a folder", "a folder written by 'medtraverse aggregate'")
    params = load_params(args.params)
    spec = parse_params(FiguresParams, params)
    shards = group_shards(args.traversals)
    shard_map = {t: s for (_, t), s in shards.items()}
    with atomic_path(args.out, stage="figures") as tmp:
        render_all(args.metrics, shard_map, tmp, spec)
    provenance.record(
        args.out,
        stage="figures",
        params=params,
        inputs=[args.metrics, *(s for v in shards.values() for s in v)],
    )
