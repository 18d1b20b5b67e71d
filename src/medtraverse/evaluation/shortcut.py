"""The shortcut study's arms and per-group metrics.

``medtraverse shortcut-arm --splits DIR --prepared DIR --arm ARM --out DIR --params JSON
[--counterfactuals SHARD ...] [--filter-classifier DIR ...]``

Builds one arm's training set as a folder ``train-classifier`` reads (``manifest.parquet`` with
train / val / test splits and the images beside it, hard-linked when possible). Every arm keeps
the balanced test as its ``test`` split, so the classifiers are selected and tested alike:

- ``confounded`` (a): the confounded train and val;
- ``augmented`` (b): (a) plus ``per_group`` counterfactuals of each mixed group in train;
- ``balanced`` (c, the oracle): the balanced train and val, as many rows as (a);
- ``counterfactual`` (d): the counterfactuals alone in train, the confounded val.

Counterfactuals come from traverse shards (``meta.parquet``, swap rows at ``swap_step``): the
``a_only`` shards swap the neutral prompt for A's prompt (labels a=1, b=0, from the prompt), the
``b_only`` shards for B's. Any folder in the traverse shard layout works, so shards whose neutral
trajectories start from inverted real training images (``traversal/invert.py``, in progress)
plug in through the same option. With ``--filter-classifier`` (the real-data classifiers), only
images those classifiers call as intended (A present and B absent, or the reverse) are kept, as
the authors' synthetic-evaluation script filters. With ``truth_detector: chexpert`` the twin's
pixel detectors say how many kept counterfactuals truly show A without B (``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.core.seeding import derive_seed
from medtraverse.data.shortcut import GROUPS, MAJORITY
from medtraverse.data.shortcut import MINORITY as MIXED

STAGE = "shortcut-arm"
ARMS = ("confounded", "augmented", "balanced", "counterfactual")
LABELS = {"both": (1, 1), "a_only": (1, 0), "b_only": (0, 1), "neither": (0, 0)}


@dataclass(frozen=True)
class ArmParams:
    """The ``shortcut.counterfactuals`` settings an arm needs."""

    swap_step: int = setting(10, min=0, help="the swap step k whose images are used")
    per_group: int = setting(200, min=0, help="counterfactuals per mixed group")
    filter: bool = setting(False, help="keep only those the real-data classifiers call right")
    threshold: float = setting(0.5, min=0.0, max=1.0, help="the classifiers' call threshold")
    truth_detector: str | None = setting(
        None, choices=(None, "chexpert"), help="check the kept counterfactuals with the twin"
    )
    seed: int = setting(0, min=0, help="global seed")


# --- building an arm --------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> None:
    """Hard link (no copy of a large dataset), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_study(splits: Path) -> dict[str, Any]:
    """The study's A/B names and columns, written by ``shortcut-splits``."""
    path = splits / "study.json"
    if not path.is_file():
        raise bad_input(path, "not found", "a splits folder made by 'medtraverse shortcut-splits'")
    return json.loads(path.read_text())


def read_split(splits: Path, name: str) -> pd.DataFrame:
    path = splits / f"{name}.parquet"
    if not path.is_file():
        raise bad_input(path, "not found", "a splits folder made by 'medtraverse shortcut-splits'")
    return pd.read_parquet(path)


def counterfactual_rows(shards: list[Path], params: ArmParams) -> pd.DataFrame:
    """Swap images at ``swap_step`` of every shard: ``file``, ``group``, ``seed``, ``prompt``.

    A shard's group is its trajectory name (``a_only`` or ``b_only``)."""
    frames = []
    for shard in shards:
        meta_path = shard / "meta.parquet"
        if not meta_path.is_file():
            raise bad_input(meta_path, "not found", "a traverse shard folder")
        meta = pd.read_parquet(meta_path)
        rows = meta[(meta["kind"] == "swap") & (meta["k"] == params.swap_step)]
        if rows.empty:
            raise bad_input(
                shard, f"no swap images at k={params.swap_step}", "the shard's swap_steps"
            )
        trajectory = str(rows["trajectory"].iloc[0])
        if trajectory not in MIXED:
            raise bad_input(shard, f"trajectory {trajectory!r}", "a_only or b_only")
        frames.append(
            pd.DataFrame(
                {
                    "file": [shard / p for p in rows["path"]],
                    "group": trajectory,
                    "seed": rows["seed"].to_numpy(),
                    "prompt": rows["prompt"].to_numpy(),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["file", "group", "seed", "prompt"])
    return pd.concat(frames, ignore_index=True).sort_values(["group", "seed"], kind="stable")


def filter_calls(
    rows: pd.DataFrame, classifiers: list[Any], columns: tuple[str, str], threshold: float
) -> np.ndarray:
    """True where every classifier calls each of its attributes among ``columns`` as the
    row's group intends (``Classifier`` objects from ``classify.load_classifier``)."""
    from medtraverse.evaluation.classify import load_image

    keep = np.ones(len(rows), dtype=bool)
    for clf in classifiers:
        images = [load_image(Path(f), clf.image_size) for f in rows["file"]]
        probs = clf.predict_proba(images) if images else np.zeros((0, len(clf.attributes)))
        for j, attr in enumerate(clf.attributes):
            if attr not in columns:
                continue
            which = columns.index(attr)
            want = np.array([LABELS[g][which] for g in rows["group"]])
            keep &= (probs[:, j] >= threshold).astype(int) == want
    return keep


def truth_check(rows: pd.DataFrame, columns: tuple[str, str]) -> dict[str, float]:
    """Share of counterfactuals whose twin detectors see the intended A/B (>= 0.5)."""
    from PIL import Image

    from medtraverse.data.synth.detect import detect_chexpert

    hits = {g: [] for g in MIXED}
    for file, group in zip(rows["file"], rows["group"], strict=True):
        with Image.open(file) as img:
            scores = detect_chexpert(np.asarray(img.convert("L")))
        calls = tuple(int(scores.get(c, 0.0) >= 0.5) for c in columns)
        hits[group].append(calls == LABELS[group])
    return {f"truth_{g}": float(np.mean(v)) if v else float("nan") for g, v in hits.items()}


def build_arm(
    splits: str | Path,
    prepared: str | Path,
    arm: str,
    out: str | Path,
    raw: dict[str, Any],
    counterfactuals: list[str | Path] = (),
    filter_classifiers: list[str | Path] = (),
) -> dict[str, Any]:
    """Write the arm's folder (manifest.parquet, images, summary.json); returns the summary."""
    from medtraverse.core import provenance
    from medtraverse.core.io import atomic_path

    params = parse_params(ArmParams, raw, "shortcut.counterfactuals")
    if arm not in ARMS:
        raise bad_input("--arm", f"got {arm!r}", " or ".join(ARMS))
    splits, prepared, out = Path(splits), Path(prepared), Path(out)
    study = read_study(splits)
    a_col, b_col = study["a_column"], study["b_column"]
    real_parts = {
        "confounded": [("train", "train"), ("val", "val")],
        "augmented": [("train", "train"), ("val", "val")],
        "balanced": [("balanced_train", "train"), ("balanced_val", "val")],
        "counterfactual": [("val", "val")],
    }[arm]
    frames = []
    for name, split in [*real_parts, ("balanced_test", "test")]:
        df = read_split(splits, name)
        df = df.assign(split=split, source="real", file=[prepared / p for p in df["path"]])
        frames.append(df)
    real = pd.concat(frames, ignore_index=True)
    summary: dict[str, Any] = {"arm": arm, "a": study["a"], "b": study["b"]}

    cf = pd.DataFrame()
    if arm in ("augmented", "counterfactual"):
        if not counterfactuals:
            raise bad_input("--counterfactuals", "none given", f"traverse shards for arm {arm}")
        cf = counterfactual_rows([Path(c) for c in counterfactuals], params)
        summary["counterfactuals_generated"] = cf["group"].value_counts().to_dict()
        if params.filter and filter_classifiers:
            from medtraverse.evaluation.classify import load_classifier

            clfs = [load_classifier(c) for c in filter_classifiers]
            cf = cf[filter_calls(cf, clfs, (a_col, b_col), params.threshold)]
        summary["counterfactuals_kept_by_filter"] = cf["group"].value_counts().to_dict()
        picked = []
        for g in MIXED:
            part = cf[cf["group"] == g]
            if len(part) < params.per_group:
                raise bad_input(
                    f"shortcut.counterfactuals.per_group ({g})",
                    f"{params.per_group} wanted, {len(part)} available after filtering",
                    "more seeds in the counterfactual shards, or a smaller per_group",
                )
            rng = np.random.default_rng(derive_seed(params.seed, STAGE, f"{arm}/{g}"))
            picked.append(part.iloc[np.sort(rng.permutation(len(part))[: params.per_group])])
        cf = pd.concat(picked, ignore_index=True)
        if params.truth_detector == "chexpert":
            summary.update(truth_check(cf, (a_col, b_col)))
        cf = cf.assign(
            split="train",
            source="counterfactual",
            a=[LABELS[g][0] for g in cf["group"]],
            b=[LABELS[g][1] for g in cf["group"]],
            image_id=[f"cf_{g}_{s}" for g, s in zip(cf["group"], cf["seed"], strict=True)],
            patient_id=[f"cf_{g}_{s}" for g, s in zip(cf["group"], cf["seed"], strict=True)],
        )
    rows = pd.concat([real, cf], ignore_index=True)
    rows[a_col], rows[b_col] = rows["a"].astype(int), rows["b"].astype(int)
    rows["path"] = [
        f"images/counterfactual/{i}{Path(str(f)).suffix}"
        if src == "counterfactual"
        else f"images/real/{p}"
        for src, f, p, i in zip(
            rows["source"], rows["file"], rows["path"], rows["image_id"], strict=True
        )
    ]
    counts = rows.groupby(["split", "group"]).size()
    summary["rows"] = {f"{s}/{g}": int(n) for (s, g), n in counts.items()}
    with atomic_path(out, stage=STAGE) as tmp:
        tmp.mkdir(parents=True)
        for file, rel in zip(rows["file"], rows["path"], strict=True):
            if not Path(file).is_file():
                raise bad_input(file, "image not found", "the splits' and shards' images")
            _link(Path(file), tmp / rel)
        keep = ["image_id", "path", "split", "group", "source", "patient_id", a_col, b_col]
        rows[keep].to_parquet(tmp / "manifest.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    provenance.record(
        out,
        stage=STAGE,
        params={"arm": arm, **asdict(params)},
        inputs=[splits, *map(Path, counterfactuals), *map(Path, filter_classifiers)],
        seeds={"seed": params.seed},
        extra=summary,
    )
    return summary


# --- metrics ----------------------------------------------------------------------------------


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN when ``y``
    holds one class. Fast enough for thousands of bootstrap draws."""
    from scipy.stats import rankdata

    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def group_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float) -> dict:
    """One attribute's accuracy, AUROC, F1, per-group accuracy, worst-group accuracy, majority
    (both/neither) and mixed accuracy, and the shortcut gap (mixed minus majority)."""
    y = np.asarray(y, dtype=int)
    call = (np.asarray(p, dtype=float) >= threshold).astype(int)
    correct = call == y
    tp = int(((call == 1) & (y == 1)).sum())
    wrong = int((~correct).sum())
    out: dict[str, float] = {
        "n": float(y.size),
        "accuracy": float(correct.mean()) if y.size else float("nan"),
        "f1": 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0,
        "auroc": auroc(y, np.asarray(p, dtype=float)),
    }
    per = {g: float(correct[groups == g].mean()) for g in GROUPS if (groups == g).any()}
    out.update({f"acc_{g}": v for g, v in per.items()})
    out["worst_group"] = min(per.values()) if per else float("nan")
    for key, names in (("majority", MAJORITY), ("mixed", MIXED)):
        part = correct[np.isin(groups, names)]
        out[key] = float(part.mean()) if part.size else float("nan")
    out["gap"] = out["mixed"] - out["majority"]
    return out


def stratified_bootstrap(
    groups: np.ndarray,
    stat: Callable[[np.ndarray], dict[str, float]],
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every value ``stat(indices)`` returns, resampling rows with
    replacement within each group (the test's group sizes are fixed by design)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.concatenate([m[rng.integers(0, len(m), len(m))] for m in members])
        for key, value in stat(idx).items():
            draws.setdefault(key, []).append(value)
    alpha = (1.0 - level) / 2.0
    out = {}
    for key, values in draws.items():
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        out[key] = (
            (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha)))
            if v.size
            else (float("nan"), float("nan"))
        )
    return out


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits", type=Path, required=True, help="shortcut-splits folder")
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared dataset folder")
    parser.add_argument("--arm", required=True, help=" or ".join(ARMS))
    parser.add_argument("--out", type=Path, required=True, help="the arm's folder to write")
    parser.add_argument("--counterfactuals", type=Path, nargs="*", default=[], help="shards")
    parser.add_argument(
        "--filter-classifier", type=Path, nargs="*", default=[], help="real-data classifiers"
    )
    parser.add_argument("--params", default="{}", help="shortcut.counterfactuals (JSON or @file)")


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.io import check_output

    check_output(args.out, STAGE, "folder")  # before any work; never replaces user data
    summary = build_arm(
        args.splits,
        args.prepared,
        args.arm,
        args.out,
        load_params(args.params),
        counterfactuals=args.counterfactuals,
        filter_classifiers=args.filter_classifier,
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
