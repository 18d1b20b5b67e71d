"""Metrics per trajectory over all shards, with 95% bootstrap intervals over seeds, as tables.

``medtraverse aggregate --scores FILE [FILE ...] --out DIR --params JSON
[--traversals SHARD [SHARD ...]] [--classifiers DIR [DIR ...]] [--manifest PARQUET]``

- ``--scores``: the score parquets (``medtraverse score``) to read, each named; ``@LIST`` stands
  for the paths a text file lists (one a line); the option may be repeated. Folders are not
  searched, so a file the workflow no longer asks for is never read (by hand:
  ``--scores results/demo/scores/chexpert/*/shard-*.parquet``). Every file of a dataset must
  carry the same ``p_*`` columns (and those the params name).
- ``--traversals``: the traversal shard folders (likewise named, ``@LIST`` or repeated); needed
  for LPIPS (unless the scores carry an ``lpips`` column), cosine, t-SNE and the image figures.
- ``--classifiers``: classifier folders (their ``metrics.csv``) for the classifier table.
- ``--manifest``: the real data's manifest, for FID against its test split.

Writes the ``--out`` folder (atomically; layout ``results/<run>/metrics/<dataset>/``):

- ``cfrt.{csv,md,tex}``: one row per dataset, trajectory, ``source`` (classifier = ``p_*``,
  truth = the twins' detectors ``truth_*``), ``version`` (swap | bezier) and ``variant``
  (authors | strict; see metrics.py), with value, ci_low, ci_high, n_seeds and, when
  ``reference`` is true, the authors' numbers (``ref_code``: METHOD.md section 7 / the authors'
  code; ``ref_poster``: the poster) on the authors-variant classifier rows;
- ``cfrt_per_seed.parquet``: the per-seed indicators and shifts;
- ``lpips.{csv,md,tex}``: per trajectory and version (swap: neutral vs each swap, mean over swap
  steps; bezier: frame 0 vs each later frame), with the ``lpips_backbone`` column and a
  ``comparable`` flag (false for the random trunk); ``lpips_per_step.csv`` per k / frame;
- ``cosine.{csv,md,tex}``: per trajectory and swap step k, mean cosine over seeds with CI;
- ``probability.csv``: mean probability of every attribute per trajectory and swap step;
- ``fid.{csv,md,tex}``: FID rows, or a row whose ``note`` says why it was skipped;
- ``classifiers.{csv,md,tex}``: test accuracy / F1 / AUROC per attribute (+ poster numbers);
- ``summary.{csv,md,tex}``: the paper's table: CFRT and LPIPS for swaps and interpolations per
  trajectory ("value [lo, hi]"), with a footnote on the LPIPS backbone;
- ``tsne.csv`` and ``figures/*.png`` (figures.py), ``provenance.json``.

Params (the ``metrics`` config section), defaults in brackets: attributes [all ``p_*`` columns
but the label], label [None; ISIC: "mel"], trajectories [{} : name -> target attribute; else the
trajectory name itself or its ``_<attribute>`` suffix], swap_steps [[5, 10, 15]],
bezier_frames [[30..49]], threshold [0.5], truth_threshold [0.5], n_boot [1000], seed [0],
lpips_backbone ["alex"], lpips_alexnet_path, lpips_random_seed [0], lpips_batch_size [32],
lpips_swap_steps [all], lpips_frames [all but 0], inception_weights [None], fid_swap_step [5],
fid_n_boot [100], fid_batch_size [32], tsne_max_seeds [100], tsne_perplexity [30], tsne_pca [50],
reference [false], figures [true], figure_seeds [4], strip_frames [10], device ["auto"],
dataset [from the scores].

FID compares, per trajectory, the neutral images with the real test images whose target is 0
and the swaps at ``fid_swap_step`` with those whose target is 1 (Inception pool features, 2048-d,
scipy sqrtm); its interval resamples the generated images only.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.inputs import exact_files
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.core.tables import cell, to_markdown, write_tables
from medtraverse.report.figures import FiguresParams, render_all
from medtraverse.traversal.shards import group_shards

# The authors' numbers. "code": METHOD.md section 7 (the authors' code outputs; LPIPS for CheXpert
# only); "poster": the MIDL 2025 poster (two decimals). They differ for some ISIC ink/ruler cells.
REFERENCE: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "chexpert": {
        "support_devices": {
            "cfrt_swap": {"code": 0.888, "poster": 0.89},
            "cfrt_bezier": {"code": 0.863, "poster": 0.86},
            "lpips_swap": {"code": 0.0515, "poster": 0.05},
            "lpips_bezier": {"code": 0.0441, "poster": 0.04},
            "fid": {"code": 51.42},
        },
        "pleural_effusion": {
            "cfrt_swap": {"code": 0.781, "poster": 0.78},
            "cfrt_bezier": {"code": 0.730, "poster": 0.73},
            "lpips_swap": {"code": 0.2400, "poster": 0.24},
            "lpips_bezier": {"code": 0.2167, "poster": 0.22},
            "fid": {"code": 59.64},
        },
        "pleural_effusion_support_devices": {"fid": {"code": 48.56}},  # composed (PE + SD)
    },
    "isic": {
        "mel_hair": {
            "cfrt_swap": {"code": 0.907, "poster": 0.91},
            "cfrt_bezier": {"code": 0.876, "poster": 0.88},
            "lpips_swap": {"poster": 0.08},
            "lpips_bezier": {"poster": 0.05},
        },
        "mel_gel_bubble": {
            "cfrt_swap": {"code": 0.985, "poster": 0.99},
            "cfrt_bezier": {"code": 0.992, "poster": 0.99},
            "lpips_swap": {"poster": 0.09},
            "lpips_bezier": {"poster": 0.08},
        },
        "mel_ruler": {
            "cfrt_swap": {"code": 0.721, "poster": 0.74},
            "cfrt_bezier": {"code": 0.791, "poster": 0.79},
            "lpips_swap": {"poster": 0.11},
            "lpips_bezier": {"poster": 0.08},
        },
        "mel_ink": {
            "cfrt_swap": {"code": 0.412, "poster": 0.59},
            "cfrt_bezier": {"code": 0.62, "poster": 0.62},
            "lpips_swap": {"poster": 0.12},
            "lpips_bezier": {"poster": 0.09},
        },
        "nv_hair": {
            "cfrt_swap": {"code": 0.855, "poster": 0.86},
            "cfrt_bezier": {"code": 0.93, "poster": 0.93},
            "lpips_swap": {"poster": 0.05},
            "lpips_bezier": {"poster": 0.04},
        },
        "nv_gel_bubble": {
            "cfrt_swap": {"code": 0.973, "poster": 0.97},
            "cfrt_bezier": {"code": 0.993, "poster": 0.99},
            "lpips_swap": {"poster": 0.09},
            "lpips_bezier": {"poster": 0.07},
        },
        "nv_ruler": {
            "cfrt_swap": {"code": 0.956, "poster": 0.95},
            "cfrt_bezier": {"code": 0.975, "poster": 0.97},
            "lpips_swap": {"poster": 0.10},
            "lpips_bezier": {"poster": 0.07},
        },
        "nv_ink": {
            "cfrt_swap": {"code": 0.511, "poster": 0.71},
            "cfrt_bezier": {"code": 0.682, "poster": 0.72},
            "lpips_swap": {"poster": 0.06},
            "lpips_bezier": {"poster": 0.04},
        },
    },
}
# The poster's classifier table (test accuracy / F1).
REFERENCE_CLASSIFIERS: dict[str, dict[str, dict[str, float]]] = {
    "chexpert": {
        "support_devices": {"accuracy": 0.86, "f1": 0.88},
        "pleural_effusion": {"accuracy": 0.80, "f1": 0.79},
    },
    "isic": {
        "mel": {"accuracy": 0.91, "f1": 0.88},
        "hair": {"accuracy": 0.93, "f1": 0.91},
        "gel_bubble": {"accuracy": 0.94, "f1": 0.78},
        "ink": {"accuracy": 0.96, "f1": 0.89},
        "ruler": {"accuracy": 0.97, "f1": 0.88},
    },
}


@dataclass
class MetricsParams:
    """The aggregate stage's settings (``datasets.<d>.metrics``, plus the rule's ``seed``,
    ``dataset`` and ``trajectories``)."""

    attributes: list[str] | None = setting(None, help="attributes scored (all classifiers')")
    label: str | None = setting(None, help="the run's name in the tables")
    trajectories: dict[str, Any] = setting(
        default_factory=dict, help="trajectory -> target attribute (filled by the workflow)"
    )
    swap_steps: list[int] = setting(
        default_factory=lambda: [5, 10, 15], min=0, help="swap steps of the CFRT table"
    )
    bezier_frames: list[int] = setting(
        default_factory=lambda: list(range(30, 50)), min=0, help="Bezier frames of CFRT Bezier"
    )
    threshold: float = setting(0.5, min=0, max=1, help="classifier probability of a positive")
    truth_threshold: float = setting(0.5, min=0, max=1, help="detector score of a positive")
    n_boot: int = setting(1000, min=1, help="bootstrap resamples of the 95% intervals")
    seed: int = setting(0, min=0, help="global seed")
    lpips_backbone: str | None = setting(
        "alex", choices=(None, "alex", "alexnet", "random"), help="LPIPS trunk"
    )
    lpips_alexnet_path: str | None = setting(None, help="AlexNet weights (torch hub cache)")
    lpips_random_seed: int = setting(0, min=0, help="seed of the random LPIPS trunk")
    lpips_batch_size: int = setting(32, min=1, help="image pairs per LPIPS call")
    lpips_swap_steps: list[int] | None = setting(None, min=0, help="swap steps with LPIPS")
    lpips_frames: list[int] | None = setting(None, min=0, help="Bezier frames with LPIPS")
    inception_weights: str | None = setting(None, help="Inception weights for FID (else none)")
    k_level: float = setting(
        0.8, min=0, max=1, help="CFRT lower bound the recommended swap step must reach"
    )
    fid_swap_step: int = setting(5, min=0, help="the swap step FID compares with real images")
    fid_n_boot: int = setting(100, min=1, help="bootstrap resamples of FID")
    fid_batch_size: int = setting(32, min=1, help="images per Inception call")
    tsne_max_seeds: int = setting(100, min=1, help="seeds in the t-SNE plot")
    tsne_perplexity: float = setting(30.0, above=0, help="t-SNE perplexity")
    tsne_pca: int = setting(50, min=1, help="PCA dimensions before t-SNE")
    reference: bool = setting(False, help="print the paper's numbers beside ours")
    figures: bool = setting(True, help="draw the figures")
    figure_seeds: int = setting(FiguresParams.figure_seeds, min=1, help="seeds in the figures")
    strip_frames: int = setting(FiguresParams.strip_frames, min=1, help="frames of a Bezier strip")
    device: str = setting("auto", help='"auto", "cpu", "cuda" or "cuda:<n>"')
    dataset: str | None = setting(None, help="chexpert or isic (filled by the workflow)")


def check_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every key checked (one-line errors naming the key), as a dict."""
    out = asdict(parse_params(MetricsParams, raw))
    if out["trajectories"] is None:
        out["trajectories"] = {}
    for name, target in out["trajectories"].items():
        if isinstance(
            target, dict
        ):  # the config's trajectory entries ({neutral, attribute, target})
            target = target.get("target")
        composed = isinstance(target, list | tuple) and len(target) > 0
        if composed and all(isinstance(t, str) for t in target):
            target = tuple(target) if len(target) > 1 else target[0]
        if not isinstance(target, str | tuple):
            raise bad_input(
                f"params.trajectories.{name}",
                f"got {target!r}",
                "a target attribute name or a list of them (a composed trajectory)",
            )
        out["trajectories"][name] = target
    return out


def target_names(target: str | tuple[str, ...]) -> list[str]:
    """The attributes of a target: one, or several for a composed trajectory."""
    return [target] if isinstance(target, str) else list(target)


def target_label(target: str | tuple[str, ...]) -> str:
    """A target in tables: ``pleural_effusion`` or ``pleural_effusion+support_devices``."""
    return "+".join(target_names(target))


# --------------------------------------------------------------------------------------------
# table writers (no tabulate / jinja2 needed)


def fmt_ci(value: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.781 [0.752, 0.809]``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if lo is None or math.isnan(lo):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# --------------------------------------------------------------------------------------------
# inputs


def score_files(paths: list[str | Path]) -> list[Path]:
    """Exactly the score parquets given (``@LIST`` expanded): no folder search, none twice."""
    files = exact_files(paths, "--scores", ".parquet", "score parquet ('medtraverse score')")
    if not files:
        raise bad_input("--scores", "no score parquet given", "files from 'medtraverse score'")
    return files


def check_score_columns(
    files: list[Path],
    parts: list[pd.DataFrame],
    attributes: set[str] = frozenset(),
    targets: dict[str, str] | None = None,
) -> None:
    """Every score file carries every ``p_*`` column its dataset's other files carry, those of
    ``attributes`` and its trajectory's target (``targets``); a file without one would count
    its seeds as misses and give a wrong CFRT, so it is an error naming that file."""
    union: dict[str, set[str]] = {}
    for df in parts:
        ds = str(df["dataset"].iloc[0]) if len(df) else ""
        union.setdefault(ds, set()).update(c for c in df.columns if c.startswith("p_"))
    for path, df in zip(files, parts, strict=True):
        ds = str(df["dataset"].iloc[0]) if len(df) else ""
        traj = str(df["trajectory"].iloc[0]) if len(df) else ""
        target = (targets or {}).get(traj)
        named = {f"p_{a}" for a in attributes | set(target_names(target) if target else [])}
        missing = sorted((union[ds] | named) - set(df.columns))
        if missing:
            why = (
                "a classifier for every attribute in params.attributes"
                if missing[0] in named
                else f"the same classifier columns as the other score files of {ds} (rescore it)"
            )
            raise bad_input(path, f"no column {missing[0]!r}", why)


def concat_scores(
    files: list[Path],
    dataset: str | None,
    attributes: set[str],
    targets: dict[str, Any] | None,
    *,
    what: str = "a score parquet",
    columns: tuple[str, ...] = ("seed", "kind", "k", "frame"),
    contract: str = "the score contract (seed, kind, k, frame, t, path, p_*)",
    check: Callable[[Path, pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Score parquets as one table, untyped: each must hold ``columns`` (else one line naming
    the file and ``contract``) and pass ``check``; ``dataset``, ``trajectory`` and ``shard``
    are filled from the path where missing (``dataset`` given wins), and
    ``check_score_columns`` holds. Both metrics stages read their score files through it."""
    from medtraverse.core.io import read_parquet

    parts = []
    for path in files:
        df = read_parquet(path, what)
        for col in columns:
            if col not in df.columns:
                raise bad_input(path, f"no column {col!r}", contract)
        if check is not None:
            check(path, df)
        if "trajectory" not in df.columns:
            df["trajectory"] = path.parent.name
        if "dataset" not in df.columns or dataset:
            df["dataset"] = dataset or path.parent.parent.name
        if "shard" not in df.columns:
            df["shard"] = path.stem
        parts.append(df)
    check_score_columns(files, parts, attributes, targets)
    return pd.concat(parts, ignore_index=True)


def read_scores(
    files: list[Path],
    dataset: str | None = None,
    attributes: set[str] = frozenset(),
    targets: dict[str, str] | None = None,
) -> pd.DataFrame:
    """All score parquets as one table with ``dataset``, ``trajectory`` and ``shard`` filled;
    see ``check_score_columns`` for the ``p_*`` columns every file must carry."""
    scores = concat_scores(files, dataset, attributes, targets)
    scores["seed"] = scores["seed"].astype(int)
    scores["k"] = scores["k"].astype(int)
    scores["frame"] = scores["frame"].astype(int)
    return scores


def resolve_target(trajectory: str, attributes: list[str], explicit: dict[str, str]) -> str:
    """The attribute a trajectory adds: params.trajectories, the name itself, or a suffix."""
    if trajectory in explicit:
        return explicit[trajectory]
    if trajectory in attributes:
        return trajectory
    hits = [a for a in attributes if trajectory.endswith("_" + a)]
    if hits:
        return max(hits, key=len)
    raise bad_input(
        f"trajectory {trajectory!r}",
        "no target attribute",
        f"params.trajectories.{trajectory} or a name ending in one of {attributes}",
    )


def _ref(dataset: str, trajectory: str, key: str, which: str) -> float:
    return REFERENCE.get(dataset, {}).get(trajectory, {}).get(key, {}).get(which, math.nan)


# --------------------------------------------------------------------------------------------
# metric blocks


def cfrt_rows(
    scores: pd.DataFrame,
    dataset: str,
    trajectory: str,
    target: str,
    p: dict[str, Any],
    attributes: list[str],
) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """CFRT rows (both versions, both variants, classifier and truth sources) of one trajectory."""
    from medtraverse.core.seeding import derive_seed
    from medtraverse.evaluation.metrics import MetricInputError, cfrt_per_seed, summarize

    rows, per_seed = [], []
    names = target_names(target)
    sources = [("classifier", "p_", p["threshold"])]
    if all(f"truth_{n}" in scores.columns for n in names):
        sources.append(("truth", "truth_", p["truth_threshold"]))
    for source, prefix, threshold in sources:
        attrs = [a for a in attributes if prefix + a in scores.columns]
        if source == "classifier":
            missing = [a for a in [*names, *attributes] if prefix + a not in scores.columns]
            if missing:
                raise bad_input(
                    f"scores of {dataset}/{trajectory}",
                    f"no column 'p_{missing[0]}'",
                    "a classifier for every attribute in params.attributes",
                )
        label = p["label"] if p["label"] and prefix + p["label"] in scores.columns else None
        if source == "classifier" and p["label"] and label is None:
            raise bad_input(
                f"scores of {dataset}/{trajectory}",
                f"no column 'p_{p['label']}'",
                "the label classifier's scores (params.label)",
            )
        for version, steps in (("swap", p["swap_steps"]), ("bezier", p["bezier_frames"])):
            kind = "swap" if version == "swap" else "bezier"
            if not (scores["kind"] == kind).any():
                continue
            try:
                hits = cfrt_per_seed(
                    scores,
                    names,
                    attrs,
                    label=label,
                    version=version,
                    steps=steps,
                    threshold=threshold,
                    prefix=prefix,
                )
            except MetricInputError as err:
                raise bad_input(
                    f"scores of {dataset}/{trajectory}", str(err), f"complete {version} images"
                ) from None
            others = [a for a in attrs if a not in names]
            for variant in ("authors", "strict"):
                seed = derive_seed(
                    p["seed"],
                    "aggregate",
                    f"{dataset}/{trajectory}/cfrt/{source}/{version}/{variant}",
                )
                s = summarize(hits[variant].astype(float), n_boot=p["n_boot"], seed=seed)
                row = {
                    "dataset": dataset,
                    "trajectory": trajectory,
                    "target": target_label(target),
                    "source": source,
                    "version": version,
                    "variant": variant,
                    **s,
                    "n_boot": p["n_boot"],
                    "others": ",".join(others) if others else "(none: shift > 0)",
                    "label": label or "",
                    "steps": ",".join(map(str, steps)),
                }
                if p["reference"]:
                    ok = source == "classifier" and variant == "authors"
                    row["ref_code"] = (
                        _ref(dataset, trajectory, f"cfrt_{version}", "code") if ok else math.nan
                    )
                    row["ref_poster"] = (
                        _ref(dataset, trajectory, f"cfrt_{version}", "poster") if ok else math.nan
                    )
                rows.append(row)
            hits = hits.assign(
                dataset=dataset,
                trajectory=trajectory,
                target=target_label(target),
                source=source,
                version=version,
            )
            per_seed.append(hits)
    return rows, per_seed


def choose_k_rows(
    scores: pd.DataFrame,
    lpips: pd.DataFrame,
    dataset: str,
    trajectory: str,
    target: str,
    p: dict[str, Any],
    attributes: list[str],
) -> list[dict[str, Any]]:
    """Choosing k: per swap step, CFRT of that swap alone (classifiers, both variants) and
    LPIPS to the neutral image, with 95% CIs, and the recommended k (the latest whose CFRT
    lower bound reaches ``k_level``, or "none")."""
    from medtraverse.core.seeding import derive_seed
    from medtraverse.evaluation.metrics import MetricInputError, cfrt_by_k, recommend_k

    steps = sorted(int(k) for k in scores.loc[scores["kind"] == "swap", "k"].unique())
    if not steps:
        return []
    keys = ["seed", "kind", "k", "frame"]
    merged = scores.drop(columns=["lpips"], errors="ignore")
    if len(lpips):
        merged = merged.merge(lpips[[*keys, "lpips"]], on=keys, how="left")
    label = p["label"] if p["label"] and f"p_{p['label']}" in scores.columns else None
    try:
        table = cfrt_by_k(
            merged,
            target_names(target),
            [a for a in attributes if f"p_{a}" in scores.columns],
            steps,
            label=label,
            threshold=p["threshold"],
            n_boot=p["n_boot"],
            seed=derive_seed(p["seed"], "aggregate", f"{dataset}/{trajectory}/choose_k"),
        )
    except MetricInputError:
        return []  # incomplete swaps: the CFRT table already says why
    best = recommend_k(table, p["k_level"])
    table.insert(0, "trajectory", trajectory)
    table.insert(0, "dataset", dataset)
    table["k_level"] = p["k_level"]
    table["recommended_k"] = "none" if best is None else str(best)
    return table.to_dict("records")


def lpips_values(
    scores: pd.DataFrame,
    shards: list[Path],
    p: dict[str, Any],
    device: str,
    model_cache: dict[str, Any],
) -> tuple[pd.DataFrame, str]:
    """Per image LPIPS (seed, kind, k, frame, lpips): from the scores' ``lpips`` column when
    present, else computed from the shard folders."""
    from medtraverse.evaluation.backbones import lpips_label

    cols = ["seed", "kind", "k", "frame"]
    if "lpips" in scores.columns and scores["lpips"].notna().all():
        label = str(scores["lpips_backbone"].iloc[0]) if "lpips_backbone" in scores else "unknown"
        return scores[cols + ["lpips"]].copy(), label
    if not shards:
        return pd.DataFrame(columns=cols + ["lpips"]), ""
    from medtraverse.evaluation.score import lpips_column, read_shard_meta

    lp = {k: v for k, v in p.items() if k.startswith("lpips")}
    parts = []
    for shard in shards:
        meta = read_shard_meta(shard)
        values, label = lpips_column(meta, lp, device)
        part = meta[cols].copy()
        part["lpips"] = values
        parts.append(part)
    return pd.concat(parts, ignore_index=True), lpips_label(lp)


def lpips_rows(
    values: pd.DataFrame, dataset: str, trajectory: str, p: dict[str, Any], label: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per trajectory LPIPS (mean over steps per seed, then over seeds) and per step."""
    from medtraverse.core.seeding import derive_seed
    from medtraverse.evaluation.metrics import summarize

    comparable = label == "alex"
    rows, steps_rows = [], []
    for version, kind, key, chosen in (
        ("swap", "swap", "k", p["lpips_swap_steps"]),
        ("bezier", "bezier", "frame", p["lpips_frames"]),
    ):
        part = values[values["kind"] == kind]
        if version == "bezier":
            part = part[part["frame"] != 0]
        if chosen is not None:
            part = part[part[key].isin(chosen)]
        if part.empty:
            continue
        per_seed = part.groupby("seed")["lpips"].mean()
        seed = derive_seed(p["seed"], "aggregate", f"{dataset}/{trajectory}/lpips/{version}")
        row = {
            "dataset": dataset,
            "trajectory": trajectory,
            "version": version,
            **summarize(per_seed.to_numpy(), p["n_boot"], seed),
            "n_boot": p["n_boot"],
            "lpips_backbone": label,
            "comparable": comparable,
        }
        if p["reference"]:
            row["ref_code"] = _ref(dataset, trajectory, f"lpips_{version}", "code")
            row["ref_poster"] = _ref(dataset, trajectory, f"lpips_{version}", "poster")
        rows.append(row)
        for step, group in part.groupby(key):
            seed = derive_seed(
                p["seed"], "aggregate", f"{dataset}/{trajectory}/lpips/{version}/{step}"
            )
            steps_rows.append(
                {
                    "dataset": dataset,
                    "trajectory": trajectory,
                    "version": version,
                    "step": int(step),
                    **summarize(group["lpips"].to_numpy(), p["n_boot"], seed),
                    "lpips_backbone": label,
                    "comparable": comparable,
                }
            )
    return rows, steps_rows


def probability_rows(
    scores: pd.DataFrame,
    dataset: str,
    trajectory: str,
    p: dict[str, Any],
    kinds: tuple[str, ...] = ("neutral", "swap"),
    summary: Callable[[pd.Series, str, str, int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Mean of every score column (``p_*``, ``truth_*``) per image kind (in ``kinds``' order)
    and swap step. ``summary(values, column, kind, k)`` gives a cell's statistics; by default
    ``summarize`` seeded per column and step (the kind is left out of the seed's item: here
    only the neutral image has k -1)."""
    from medtraverse.core.seeding import derive_seed
    from medtraverse.evaluation.metrics import summarize

    def seeds(values: pd.Series, col: str, kind: str, k: int) -> dict[str, Any]:
        seed = derive_seed(p["seed"], "aggregate", f"{dataset}/{trajectory}/prob/{col}/{k}")
        return summarize(values.to_numpy(dtype=float), p["n_boot"], seed)

    summary = summary or seeds
    cols = [c for c in scores.columns if c.startswith(("p_", "truth_"))]
    part = scores[scores["kind"].isin(kinds)]
    rows = []
    for (kind, k), group in sorted(
        part.groupby(["kind", "k"]), key=lambda g: (kinds.index(g[0][0]), g[0][1])
    ):
        for col in cols:
            rows.append(
                {
                    "dataset": dataset,
                    "trajectory": trajectory,
                    "column": col,
                    "kind": kind,
                    "k": int(k),
                    **summary(group[col], col, kind, int(k)),
                }
            )
    return rows


LATENTS_WHAT = "latents.safetensors in every traversal shard"


def latent_pass(
    shards: list[Path], dataset: str, trajectory: str, keep_seeds: int
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One shard at a time (a real shard holds ~160 MB of latents): per-seed cosines, plus the
    latents of the first ``keep_seeds`` seeds (in seed order) for t-SNE."""
    from medtraverse.core.io import read_safetensors
    from medtraverse.evaluation.metrics import MetricInputError, cosine_per_seed, parse_latent_key

    parts, kept = [], {}
    for shard in sorted(shards):
        path = shard / "latents.safetensors"
        latents = read_safetensors(path, LATENTS_WHAT, "numpy")
        try:
            parts.append(cosine_per_seed(latents))
        except MetricInputError as err:
            raise bad_input(path, str(err), "a neutral and swap latents per seed") from None
        kept.update(latents)
        seeds = sorted({parse_latent_key(k)[0] for k in kept})[:keep_seeds]
        keep = set(seeds)
        kept = {k: v for k, v in kept.items() if parse_latent_key(k)[0] in keep}
    cos = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["seed", "k", "index", "cos"])
    )
    return cos, kept


def cosine_rows(
    cos: pd.DataFrame, dataset: str, trajectory: str, p: dict[str, Any]
) -> list[dict[str, Any]]:
    """Mean cosine per swap step over seeds (from ``metrics.cosine_per_seed`` rows)."""
    from medtraverse.core.seeding import derive_seed
    from medtraverse.evaluation.metrics import summarize

    rows = []
    for (k, index), group in cos.groupby(["k", "index"]):
        seed = derive_seed(p["seed"], "aggregate", f"{dataset}/{trajectory}/cosine/{k}")
        rows.append(
            {
                "dataset": dataset,
                "trajectory": trajectory,
                "k": int(k),
                "index": int(index),
                **summarize(group["cos"].to_numpy(), p["n_boot"], seed),
            }
        )
    return sorted(rows, key=lambda r: r["index"])


def tsne_points(
    latents_by_traj: dict[str, dict[str, np.ndarray]], p: dict[str, Any]
) -> pd.DataFrame:
    """2-D t-SNE of final latents (PCA first), fixed random_state; colour keys trajectory and k."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from medtraverse.evaluation.metrics import parse_latent_key

    keys, vectors = [], []
    for traj, latents in sorted(latents_by_traj.items()):
        seeds = sorted({parse_latent_key(k)[0] for k in latents})[: p["tsne_max_seeds"]]
        keep = set(seeds)
        for key in sorted(latents):
            seed, k = parse_latent_key(key)
            if seed in keep:
                keys.append({"trajectory": traj, "seed": seed, "k": -1 if k is None else k})
                vectors.append(np.asarray(latents[key], dtype=np.float32).ravel())
    if len(vectors) < 4:
        return pd.DataFrame(columns=["trajectory", "seed", "k", "x", "y"])
    x = np.stack(vectors)
    dims = min(p["tsne_pca"], x.shape[0] - 1, x.shape[1])
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=p["seed"]).fit_transform(x)
    perplexity = min(p["tsne_perplexity"], (len(x) - 1) / 3.0)
    xy = TSNE(
        n_components=2, perplexity=max(perplexity, 1.0), random_state=p["seed"], init="pca"
    ).fit_transform(x)
    out = pd.DataFrame(keys)
    out["x"], out["y"] = xy[:, 0], xy[:, 1]
    return out


def fid_rows(
    scores_by_traj: dict[str, pd.DataFrame],
    shards_by_traj: dict[str, list[Path]],
    targets: dict[str, str],
    dataset: str,
    manifest: Path | None,
    p: dict[str, Any],
    device: str,
) -> list[dict[str, Any]]:
    """FID rows per trajectory, or one row per trajectory saying why FID was skipped."""
    from medtraverse.evaluation.backbones import inception_weights_path

    weights = inception_weights_path(p)
    reason = None
    if weights is None:
        reason = "skipped: no Inception weights (params.inception_weights not set)"
    elif not weights.is_file():
        reason = f"skipped: no Inception weights at {weights}"
    elif manifest is None:
        reason = "skipped: no --manifest of real images"
    elif not shards_by_traj:
        reason = "skipped: no --traversals (generated images)"
    if reason:
        return [
            {
                "dataset": dataset,
                "trajectory": t,
                "images": "",
                "value": math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "n_generated": 0,
                "n_real": 0,
                "note": reason,
            }
            for t in sorted(scores_by_traj)
        ]
    from medtraverse.core.seeding import derive_seed
    from medtraverse.evaluation.backbones import inception_features, load_inception
    from medtraverse.evaluation.classify import read_manifest
    from medtraverse.evaluation.metrics import fid_bootstrap_ci, frechet_distance, gaussian_stats
    from medtraverse.evaluation.score import read_shard_meta

    model = load_inception(weights, device)
    targets_used = sorted({n for t in targets.values() for n in target_names(t)})
    real = read_manifest(manifest, targets_used, need_splits=("test",))
    real = real[real["split"] == "test"]

    def features(paths: list[Path]) -> np.ndarray:
        import torch
        from PIL import Image

        feats = []
        for start in range(0, len(paths), p["fid_batch_size"]):
            arr = []
            for q in paths[start : start + p["fid_batch_size"]]:
                with Image.open(q) as img:
                    arr.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            x = (
                torch.from_numpy(np.stack(arr))
                .permute(0, 3, 1, 2)
                .float()
                .div(127.5)
                .sub(1.0)
                .to(device)
            )
            feats.append(inception_features(model, x).float().cpu().numpy())
        return np.concatenate(feats).astype(np.float64)

    real_cache: dict[tuple[str, int], np.ndarray] = {}
    rows = []
    for traj in sorted(shards_by_traj):
        target = targets[traj]
        metas = pd.concat([read_shard_meta(s) for s in shards_by_traj[traj]], ignore_index=True)
        for images, sel, want in (
            ("neutral", metas["kind"] == "neutral", 0),
            (
                f"swap_k{p['fid_swap_step']}",
                (metas["kind"] == "swap") & (metas["k"] == p["fid_swap_step"]),
                1,
            ),
        ):
            gen_paths = list(metas.loc[sel, "abs_path"])
            if (target, want) not in real_cache:  # composed: every target at want
                chosen = (real[target_names(target)] == want).all(axis=1)
                real_cache[(target, want)] = features(list(real.loc[chosen, "abs_path"]))
            real_f = real_cache[(target, want)]
            row = {
                "dataset": dataset,
                "trajectory": traj,
                "images": images,
                "n_generated": len(gen_paths),
                "n_real": len(real_f),
                "note": f"real: test split with {target_label(target)}={want}",
            }
            if len(gen_paths) < 2 or len(real_f) < 2:
                rows.append(
                    {
                        **row,
                        "value": math.nan,
                        "ci_low": math.nan,
                        "ci_high": math.nan,
                        "note": "skipped: fewer than 2 generated or real images",
                    }
                )
                continue
            gen_f = features(gen_paths)
            value = frechet_distance(*gaussian_stats(gen_f), *gaussian_stats(real_f))
            seed = derive_seed(p["seed"], "aggregate", f"{dataset}/{traj}/fid/{images}")
            lo, hi = fid_bootstrap_ci(gen_f, real_f, n_boot=p["fid_n_boot"], seed=seed)
            row.update({"value": value, "ci_low": lo, "ci_high": hi})
            if p["reference"] and images.startswith("swap"):
                row["ref_code"] = _ref(dataset, traj, "fid", "code")
            rows.append(row)
    return rows


def classifier_rows(folders: list[Path], dataset: str, p: dict[str, Any]) -> pd.DataFrame:
    parts = []
    for folder in folders:
        path = folder / "metrics.csv"
        if not path.is_file():
            raise bad_input(
                path, "not found", "a classifier folder made by 'medtraverse train-classifier'"
            )
        part = pd.read_csv(path)
        part.insert(0, "dataset", dataset)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    if p["reference"]:
        ref = REFERENCE_CLASSIFIERS.get(dataset, {})
        table["ref_accuracy"] = [
            ref.get(a, {}).get("accuracy", math.nan) for a in table["attribute"]
        ]
        table["ref_f1"] = [ref.get(a, {}).get("f1", math.nan) for a in table["attribute"]]
    return table


# --------------------------------------------------------------------------------------------
# the stage


def aggregate(
    score_paths: list[str | Path],
    out: str | Path,
    params: dict[str, Any],
    traversals: list[str | Path] | None = None,
    classifiers: list[str | Path] | None = None,
    manifest: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Compute every metric table and figure into ``out`` (one atomic folder); returns tables."""
    from medtraverse.core import provenance
    from medtraverse.core.device import resolve_device
    from medtraverse.core.io import atomic_path, check_safetensors
    from medtraverse.evaluation.backbones import check_backbones

    p = check_params(params)
    out = Path(out)
    files = score_files(score_paths)
    shards = group_shards(traversals or [])
    named = set(p["attributes"] or []) | ({p["label"]} if p["label"] else set())
    scores = read_scores(files, p["dataset"], named, p["trajectories"])
    needs_lpips = bool(shards) and not ("lpips" in scores.columns and scores["lpips"].notna().all())
    for shard in (s for group in shards.values() for s in group):  # known before the work
        check_safetensors(shard / "latents.safetensors", LATENTS_WHAT)
    for line in check_backbones(p, lpips=needs_lpips):
        print(f"aggregate: {line}", file=sys.stderr)
    device = resolve_device(p["device"])
    label = p["label"]
    tables: dict[str, list[Any]] = {
        k: [] for k in ("cfrt", "lpips", "lpips_steps", "cosine", "prob", "fid", "per_seed", "k")
    }
    tsne_parts, lpips_labels = [], set()
    for dataset, ds_scores in scores.groupby("dataset", sort=True):
        attributes = p["attributes"] or sorted(
            c[2:] for c in ds_scores.columns if c.startswith("p_") and c[2:] != label
        )
        by_traj = {
            str(t): g.dropna(axis=1, how="all")
            for t, g in ds_scores.groupby("trajectory", sort=True)
        }
        targets = {t: resolve_target(t, attributes, p["trajectories"]) for t in by_traj}
        latents_by_traj = {}
        for traj, traj_scores in by_traj.items():
            rows, per_seed = cfrt_rows(
                traj_scores, str(dataset), traj, targets[traj], p, attributes
            )
            tables["cfrt"] += rows
            tables["per_seed"] += per_seed
            tables["prob"] += probability_rows(traj_scores, str(dataset), traj, p)
            traj_shards = shards.get((str(dataset), traj), [])
            values, lab = lpips_values(traj_scores, traj_shards, p, device, {})
            if len(values):
                lpips_labels.add(lab)
                rows, steps = lpips_rows(values, str(dataset), traj, p, lab)
                tables["lpips"] += rows
                tables["lpips_steps"] += steps
            tables["k"] += choose_k_rows(
                traj_scores, values, str(dataset), traj, targets[traj], p, attributes
            )
            if traj_shards:
                cos, kept = latent_pass(traj_shards, str(dataset), traj, p["tsne_max_seeds"])
                tables["cosine"] += cosine_rows(cos, str(dataset), traj, p)
                latents_by_traj[traj] = kept
        if latents_by_traj:
            tsne = tsne_points(latents_by_traj, p)
            tsne.insert(0, "dataset", str(dataset))
            tsne_parts.append(tsne)
        shards_ds = {t: s for (d, t), s in shards.items() if d == str(dataset) and t in by_traj}
        tables["fid"] += fid_rows(
            by_traj,
            shards_ds,
            targets,
            str(dataset),
            Path(manifest) if manifest else None,
            p,
            device,
        )
    datasets = sorted(scores["dataset"].unique())
    clf = (
        classifier_rows(
            [Path(c) for c in classifiers], datasets[0] if len(datasets) == 1 else "", p
        )
        if classifiers
        else pd.DataFrame()
    )

    result = {
        "cfrt": pd.DataFrame(tables["cfrt"]),
        "lpips": pd.DataFrame(tables["lpips"]),
        "lpips_per_step": pd.DataFrame(tables["lpips_steps"]),
        "cosine": pd.DataFrame(tables["cosine"]),
        "probability": pd.DataFrame(tables["prob"]),
        "fid": pd.DataFrame(tables["fid"]),
        "classifiers": clf,
        "tsne": pd.concat(tsne_parts, ignore_index=True) if tsne_parts else pd.DataFrame(),
    }
    if result["cfrt"].empty:
        raise bad_input(
            ", ".join(map(str, files)),
            "no CFRT could be computed",
            "swap or bezier rows in the scores",
        )
    lp_note = lpips_note(lpips_labels)
    result["summary"] = summary_table(result["cfrt"], result["lpips"], p["reference"])
    result["choose_k"] = pd.DataFrame(tables["k"])
    if len(result["choose_k"]) and len(result["summary"]):
        best = result["choose_k"].groupby(["dataset", "trajectory"])["recommended_k"].first()
        result["summary"][f"recommended k (CFRT low >= {p['k_level']})"] = [
            best.get((d, t), "none")
            for d, t in zip(
                result["summary"]["dataset"], result["summary"]["trajectory"], strict=True
            )
        ]
    with atomic_path(out, stage="aggregate") as tmp:
        tmp.mkdir(parents=True)
        write_tables(
            tmp,
            "cfrt",
            result["cfrt"],
            _cfrt_wide(result["cfrt"]),
            note="variant 'authors': the authors' code; 'strict': the poster's formula "
            "(label and other attributes' calls unchanged). source 'truth': the twin's detectors.",
            caption="CFRT per trajectory, 95% bootstrap CI over seeds",
        )
        if tables["per_seed"]:
            pd.concat(tables["per_seed"], ignore_index=True).to_parquet(
                tmp / "cfrt_per_seed.parquet", index=False
            )
        write_tables(
            tmp,
            "lpips",
            result["lpips"],
            _ci_wide(result["lpips"], ["dataset", "trajectory", "version", "lpips_backbone"]),
            note=lp_note,
            caption="LPIPS (AlexNet, v0.1)",
        )
        result["lpips_per_step"].to_csv(tmp / "lpips_per_step.csv", index=False)
        write_tables(
            tmp,
            "cosine",
            result["cosine"],
            _ci_wide(result["cosine"], ["dataset", "trajectory", "k", "index"]),
            caption="Cosine similarity of latent directions per swap step",
        )
        result["probability"].to_csv(tmp / "probability.csv", index=False)
        fid_wide = _ci_wide(
            result["fid"], ["dataset", "trajectory", "images", "n_generated", "n_real", "note"]
        )
        write_tables(
            tmp, "fid", result["fid"], fid_wide, caption="FID, generated vs real test images"
        )
        if len(clf):
            write_tables(
                tmp,
                "classifiers",
                clf,
                _classifier_wide(clf, p["reference"]),
                note="weights: " + "; ".join(sorted(set(clf["weights"].astype(str)))),
                caption="Classifier test accuracy and F1",
            )
        write_tables(
            tmp,
            "summary",
            result["summary"],
            note=lp_note,
            caption="CFRT and LPIPS for swaps and interpolations (95% bootstrap CI)",
        )
        if len(result["choose_k"]):
            write_tables(
                tmp,
                "choose_k",
                result["choose_k"],
                note="CFRT of the swap at k alone (classifiers); recommended k: the latest swap "
                f"whose CFRT (authors) lower bound reaches {p['k_level']}, else none",
                caption="CFRT and LPIPS per swap step, 95% bootstrap CI over seeds",
            )
        result["tsne"].to_csv(tmp / "tsne.csv", index=False)
        if p["figures"]:
            shard_map = {t: s for (_, t), s in shards.items()}
            figure_params = FiguresParams(p["figure_seeds"], p["strip_frames"])
            render_all(tmp, shard_map, tmp / "figures", figure_params)
    provenance.record(
        out,
        stage="aggregate",
        params=params,
        inputs=[
            *files,
            *(s for v in shards.values() for s in v),
            *(classifiers or []),
            *([manifest] if manifest else []),
        ],
        seeds={"seed": p["seed"], "n_boot": p["n_boot"]},
        extra={"lpips_backbone": sorted(lpips_labels), "datasets": datasets},
    )
    return result


def lpips_note(labels: set[str]) -> str:
    """The LPIPS footnote: comparable with the paper or not."""
    if not labels:
        return "LPIPS: not computed."
    if labels == {"alex"}:
        return "LPIPS: AlexNet v0.1 with ImageNet trunk (as in the paper)."
    return (
        f"* LPIPS backbone {', '.join(sorted(labels))}: random AlexNet trunk, NOT comparable "
        "with the paper's LPIPS numbers."
    )


def _ci_wide(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=keys + ["value [95% CI]"])
    out = df[[k for k in keys if k in df.columns]].copy()
    out["value [95% CI]"] = [
        fmt_ci(v, lo, hi)
        for v, lo, hi in zip(df["value"], df["ci_low"], df["ci_high"], strict=True)
    ]
    if "n_seeds" in df.columns:
        out["n_seeds"] = df["n_seeds"]
    for ref in ("ref_code", "ref_poster"):
        if ref in df.columns:
            out[ref] = df[ref]
    return out


def _cfrt_wide(cfrt: pd.DataFrame) -> pd.DataFrame:
    return _ci_wide(cfrt, ["dataset", "trajectory", "target", "source", "version", "variant"])


def _classifier_wide(clf: pd.DataFrame, reference: bool) -> pd.DataFrame:
    """The poster's shape: rows Accuracy / F1-score (and the poster's), columns attributes."""
    rows = {"Accuracy": "accuracy", "F1-score": "f1", "AUROC": "auroc"}
    if reference:
        rows.update({"Accuracy (poster)": "ref_accuracy", "F1-score (poster)": "ref_f1"})
    data = {label: clf.set_index("attribute")[col] for label, col in rows.items() if col in clf}
    wide = pd.DataFrame(data).T
    wide.index.name = "metric"
    return wide.map(lambda v: "n/a" if pd.isna(v) else f"{v:.3f}").reset_index()


def summary_table(cfrt: pd.DataFrame, lpips: pd.DataFrame, reference: bool) -> pd.DataFrame:
    """Per trajectory: CFRT (authors, strict, truth) and LPIPS for swaps and interpolations."""
    if cfrt.empty:
        return pd.DataFrame()
    rows = []
    for (dataset, traj), group in cfrt.groupby(["dataset", "trajectory"], sort=True):
        row: dict[str, Any] = {
            "dataset": dataset,
            "trajectory": traj,
            "target": group["target"].iloc[0],
        }
        for version, name in (("swap", "swap"), ("bezier", "interp")):
            for source, variant, col in (
                ("classifier", "authors", f"CFRT {name}"),
                ("classifier", "strict", f"CFRT {name} (strict)"),
                ("truth", "authors", f"CFRT {name} (truth)"),
            ):
                hit = group[
                    (group["version"] == version)
                    & (group["source"] == source)
                    & (group["variant"] == variant)
                ]
                if len(hit):
                    h = hit.iloc[0]
                    row[col] = fmt_ci(h["value"], h["ci_low"], h["ci_high"])
                    if reference and source == "classifier" and variant == "authors":
                        row[f"{col} ref code/poster"] = (
                            f"{cell(h['ref_code'])} / {cell(h['ref_poster'])}"
                        )
            lp = (
                lpips[
                    (lpips["dataset"] == dataset)
                    & (lpips["trajectory"] == traj)
                    & (lpips["version"] == version)
                ]
                if not lpips.empty
                else lpips
            )
            if len(lp):
                h = lp.iloc[0]
                row[f"LPIPS {name}"] = fmt_ci(h["value"], h["ci_low"], h["ci_high"]) + (
                    "" if h["comparable"] else " *"
                )
                if reference:
                    row[f"LPIPS {name} ref code/poster"] = (
                        f"{cell(h['ref_code'])} / {cell(h['ref_poster'])}"
                    )
        rows.append(row)
    return pd.DataFrame(rows)


def add_metrics_arguments(
    parser: argparse.ArgumentParser,
    scores: str,
    out: str,
    traversals: str,
    inputs: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """The options of a metrics stage (``aggregate``, ``aggregate-real``): ``--scores``,
    ``--out``, ``--traversals``, the stage's own ``inputs``, then ``--params``; the strings are
    the first three's help."""
    parser.add_argument("--scores", nargs="+", action="extend", required=True, help=scores)
    parser.add_argument("--out", type=Path, required=True, help=out)
    parser.add_argument("--traversals", nargs="*", action="extend", default=[], help=traversals)
    if inputs is not None:
        inputs(parser)
    parser.add_argument("--params", default="{}", help="metrics params as JSON or @file")


def run_metrics_stage(
    out: Path, stage: str, params: str, compute: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """A metrics stage's ``main``: the output folder checked before any work (never replaces
    user data), ``compute(params)`` run, its summary table printed as markdown."""
    from medtraverse.core.io import check_output

    check_output(out, stage, "folder")
    result = compute(load_params(params))
    if not result["summary"].empty:
        print(to_markdown(result["summary"]), end="")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def inputs(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--classifiers", type=Path, nargs="*", default=[], help="classifier folders"
        )
        parser.add_argument(
            "--manifest", type=Path, default=None, help="real manifest.parquet for FID"
        )

    add_metrics_arguments(
        parser,
        scores="score parquets, each named (or @LIST: a file naming one a line); repeatable",
        out="metrics output folder",
        traversals="traversal shard folders, each named (or @LIST); LPIPS, cosine, t-SNE, figures",
        inputs=inputs,
    )


def main(args: argparse.Namespace) -> None:
    run_metrics_stage(
        args.out,
        "aggregate",
        args.params,
        lambda params: aggregate(
            args.scores,
            args.out,
            params,
            traversals=args.traversals,
            classifiers=args.classifiers,
            manifest=args.manifest,
        ),
    )
