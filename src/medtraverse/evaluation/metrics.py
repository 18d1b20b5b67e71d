"""Pure metric functions: CFRT, bootstrap intervals, cosine curvature, classifier scores, FID.

Everything here takes plain arrays / DataFrames and returns numbers, so the definitions can be
unit-tested with hand-computed values. Tables and files are aggregate.py's business.

Conventions (from METHOD.md section 6):

- A score table has one row per generated image: ``seed``, ``kind`` in {neutral, swap, bezier},
  ``k`` (swap step, -1 otherwise), ``frame`` (-1 unless bezier) and probability columns
  (``p_<attribute>`` from the classifiers, ``truth_<factor>`` from the twins' detectors).
- Swap shift of column a for one seed: ``mean over k in K of [a(x_k) - a(x_neutral)]``,
  K = {5, 10, 15} by default.
- Bezier shift: ``mean over frames F of [a(frame) - a(frame_0)]``, F = 30..49 by default.
- CFRT of target A ("authors" variant, as in the authors' code): the fraction of seeds whose
  shift_A exceeds shift_j strictly for every other attribute j. Ties do not count. With no other
  attribute the condition is ``shift_A > 0`` (the attribute moved up at all).
- "strict" variant (the poster's formula): additionally, for every image used in the shift
  (each x_k, k in K, or each frame in F), the class label's thresholded call equals the
  reference image's (neutral or frame 0) and so does every other attribute's thresholded call.
  The label clause applies only when a label column is given (ISIC: ``p_mel``); CheXpert has
  no class label, so its strict variant checks the other attributes only.
- A thresholded call is ``p >= threshold`` (0.5 by default), the same rule as classifier accuracy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_SWAP_STEPS: tuple[int, ...] = (5, 10, 15)
DEFAULT_BEZIER_FRAMES: tuple[int, ...] = tuple(range(30, 50))
VERSIONS = ("swap", "bezier")
VARIANTS = ("authors", "strict")


class MetricInputError(ValueError):
    """Scores that cannot give the metric (missing image, missing column); says which."""


# --------------------------------------------------------------------------------------------
# shifts and CFRT


def _pivot(scores: pd.DataFrame, kind: str, key: str, columns: Sequence[str]) -> pd.DataFrame:
    """Rows of one kind, indexed by (seed, key), with only ``columns``."""
    part = scores[scores["kind"] == kind]
    if part.duplicated(["seed", key]).any():
        dup = part[part.duplicated(["seed", key], keep=False)].iloc[0]
        raise MetricInputError(f"seed {dup['seed']}: two {kind} rows with {key}={dup[key]}")
    return part.set_index(["seed", key])[list(columns)].astype(float)


def _reference_rows(scores: pd.DataFrame, columns: Sequence[str], version: str) -> pd.DataFrame:
    """Per seed, the reference image's scores: the neutral image (swap) or frame 0 (bezier)."""
    if version == "swap":
        ref = scores[scores["kind"] == "neutral"]
        if ref["seed"].duplicated().any():
            raise MetricInputError(
                f"seed {ref[ref['seed'].duplicated()]['seed'].iloc[0]}: two neutral rows"
            )
        return ref.set_index("seed")[list(columns)].astype(float)
    frames = _pivot(scores, "bezier", "frame", columns)
    first = frames[frames.index.get_level_values("frame") == 0]
    return first.droplevel("frame")


def _edited_rows(
    scores: pd.DataFrame, columns: Sequence[str], version: str, steps: Sequence[int]
) -> pd.DataFrame:
    """Scores of the edited images used by the shift, indexed by (seed, step); all must exist."""
    key = "k" if version == "swap" else "frame"
    kind = "swap" if version == "swap" else "bezier"
    table = _pivot(scores, kind, key, columns)
    seeds = sorted(set(scores["seed"]))
    want = pd.MultiIndex.from_product([seeds, list(steps)], names=["seed", key])
    missing = want.difference(table.index)
    if len(missing):
        seed, step = missing[0]
        raise MetricInputError(
            f"seed {seed}: no {kind} image with {key}={step} ({len(missing)} missing)"
        )
    return table.loc[want]


def shifts(
    scores: pd.DataFrame,
    columns: Sequence[str],
    version: str = "swap",
    steps: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per seed, ``mean over steps of [column(edited) - column(reference)]``.

    ``version`` "swap": steps are swap steps k (default {5, 10, 15}), reference the neutral image;
    "bezier": steps are frame indices (default 30..49), reference frame 0.
    """
    steps = list(_default_steps(version) if steps is None else steps)
    ref = _reference_rows(scores, columns, version)
    edited = _edited_rows(scores, columns, version, steps)
    seeds = edited.index.get_level_values("seed").unique()
    missing = seeds.difference(ref.index)
    if len(missing):
        what = "neutral image" if version == "swap" else "bezier frame 0"
        raise MetricInputError(f"seed {missing[0]}: no {what}")
    base = ref.loc[edited.index.get_level_values("seed")].to_numpy()
    diff = pd.DataFrame(edited.to_numpy() - base, index=edited.index, columns=list(columns))
    return diff.groupby(level="seed").mean()


def calls_unchanged(
    scores: pd.DataFrame,
    columns: Sequence[str],
    version: str = "swap",
    steps: Sequence[int] | None = None,
    threshold: float = 0.5,
) -> pd.Series:
    """Per seed: True when every column's call (``p >= threshold``) is the same in every edited
    image used by the shift as in the reference image. No columns: always True."""
    steps = list(_default_steps(version) if steps is None else steps)
    edited = _edited_rows(scores, columns, version, steps)
    seeds = edited.index.get_level_values("seed").unique()
    if not columns:
        return pd.Series(True, index=seeds, name="unchanged")
    ref = _reference_rows(scores, columns, version)
    ref_calls = ref.loc[edited.index.get_level_values("seed")].to_numpy() >= threshold
    same = (edited.to_numpy() >= threshold) == ref_calls
    per_image = pd.Series(same.all(axis=1), index=edited.index)
    return per_image.groupby(level="seed").all().rename("unchanged")


def cfrt_hits(shift: pd.DataFrame, target: str, others: Sequence[str]) -> pd.Series:
    """Per seed: shift of ``target`` strictly above the shift of every other column.

    Ties do not count; NaN never counts. No other column: ``shift_target > 0``.
    """
    a = shift[target].to_numpy(dtype=float)
    if len(others) == 0:
        hit = a > 0
    else:
        rest = shift[list(others)].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            hit = np.all(a[:, None] > rest, axis=1)
    return pd.Series(hit & np.isfinite(a), index=shift.index, name="hit")


def cfrt_hits_composed(
    shift: pd.DataFrame, targets: Sequence[str], others: Sequence[str]
) -> pd.Series:
    """Per seed, a composed target (several attributes edited together): every target's shift
    strictly above every other column's; with no other column, every target's shift > 0.
    One target is :func:`cfrt_hits`."""
    a = shift[list(targets)].to_numpy(dtype=float)
    low = a.min(axis=1)
    if len(others) == 0:
        hit = low > 0
    else:
        rest = shift[list(others)].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            hit = low > rest.max(axis=1)
    return pd.Series(hit & np.isfinite(a).all(axis=1), index=shift.index, name="hit")


def cfrt_per_seed(
    scores: pd.DataFrame,
    target: str | Sequence[str],
    attributes: Sequence[str],
    *,
    label: str | None = None,
    version: str = "swap",
    steps: Sequence[int] | None = None,
    threshold: float = 0.5,
    prefix: str = "p_",
) -> pd.DataFrame:
    """Per seed, the CFRT indicator in both variants: columns ``seed``, ``authors``, ``strict``.

    ``attributes`` are the competing attribute names (the target among them or not); the columns
    read are ``prefix + name``. ``label`` names the class-label column (without prefix) for the
    strict variant's ``y(x) = y(x'_A)`` clause; None skips that clause. ``target`` may list
    several attributes (a composed trajectory): see :func:`cfrt_hits_composed`; then
    ``shift_target`` is the smallest target shift.
    """
    targets = [target] if isinstance(target, str) else list(target)
    cols = [prefix + a for a in attributes]
    tcols = [prefix + t for t in targets]
    cols = [c for c in tcols if c not in cols] + cols
    tcol = tcols[0]
    missing = [c for c in cols + ([prefix + label] if label else []) if c not in scores.columns]
    if missing:
        raise MetricInputError(f"no column {missing[0]!r} in the scores")
    others = [c for c in cols if c not in tcols]
    shift = shifts(scores, cols, version, steps)
    authors = cfrt_hits_composed(shift, tcols, others)
    stable_cols = others + ([prefix + label] if label else [])
    stable = calls_unchanged(scores, stable_cols, version, steps, threshold)
    strict = authors & stable.reindex(authors.index).fillna(False).astype(bool)
    out = pd.DataFrame(
        {"seed": shift.index, "authors": authors.to_numpy(), "strict": strict.to_numpy()}
    )
    out["shift_target"] = (
        shift[tcols].min(axis=1).to_numpy() if len(tcols) > 1 else shift[tcol].to_numpy()
    )
    out["shift_max_other"] = shift[others].max(axis=1).to_numpy() if others else np.nan
    return out.reset_index(drop=True)


def cfrt_by_k(
    scores: pd.DataFrame,
    target: str | Sequence[str],
    attributes: Sequence[str],
    steps: Sequence[int],
    *,
    label: str | None = None,
    threshold: float = 0.5,
    prefix: str = "p_",
    lpips: str = "lpips",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per swap step k, the trade-off that chooses k: CFRT of the swap at k alone (both
    variants) and LPIPS of x_k to the neutral image (column ``lpips`` of the swap rows, when
    present), each a mean with a 95% bootstrap interval over seeds. One row per k."""
    rows = []
    for k in steps:
        per = cfrt_per_seed(
            scores, target, attributes, label=label, steps=[k], threshold=threshold, prefix=prefix
        )
        row: dict[str, Any] = {"k": int(k), "n_seeds": len(per)}
        for variant in VARIANTS:
            s = summarize(per[variant].astype(float), n_boot=n_boot, seed=seed)
            row |= {f"cfrt_{variant}": s["value"], f"cfrt_{variant}_ci_low": s["ci_low"]}
            row[f"cfrt_{variant}_ci_high"] = s["ci_high"]
        if lpips in scores.columns:
            swap = scores[(scores["kind"] == "swap") & (scores["k"] == k)]
            s = summarize(swap[lpips].astype(float), n_boot=n_boot, seed=seed)
            row |= {"lpips": s["value"], "lpips_ci_low": s["ci_low"], "lpips_ci_high": s["ci_high"]}
        rows.append(row)
    return pd.DataFrame(rows)


def recommend_k(table: pd.DataFrame, level: float = 0.8, variant: str = "authors") -> int | None:
    """The latest swap (largest k, the smallest edit) whose CFRT lower bound reaches ``level``;
    None ("none") when no k does. ``table`` is :func:`cfrt_by_k`'s."""
    ok = table[table[f"cfrt_{variant}_ci_low"] >= level]
    return int(ok["k"].max()) if len(ok) else None


def _default_steps(version: str) -> Sequence[int]:
    if version == "swap":
        return DEFAULT_SWAP_STEPS
    if version == "bezier":
        return DEFAULT_BEZIER_FRAMES
    raise ValueError(f"version {version!r}; expected 'swap' or 'bezier'")


# --------------------------------------------------------------------------------------------
# bootstrap


def bootstrap_ci(
    values: Iterable[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over the given per-seed values.

    Resamples seeds with replacement ``n_boot`` times with a generator seeded by ``seed``.
    One value gives a zero-width interval; no values or n_boot < 1 give NaNs.
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0 or n_boot < 1:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def summarize(values: Iterable[float], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean, 95% bootstrap interval and count of per-seed values (NaNs dropped)."""
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x)]
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    value = float(x.mean()) if x.size else float("nan")
    return {"value": value, "ci_low": lo, "ci_high": hi, "n_seeds": int(x.size)}


# --------------------------------------------------------------------------------------------
# cosine curvature


def parse_latent_key(key: str) -> tuple[int, int | None]:
    """``"7/neutral"`` -> (7, None); ``"7/k5"`` -> (7, 5)."""
    seed, _, name = key.partition("/")
    if name == "neutral":
        return int(seed), None
    if name.startswith("k") and name[1:].isdigit():
        return int(seed), int(name[1:])
    raise MetricInputError(f"latent key {key!r}; expected '<seed>/neutral' or '<seed>/k<k>'")


def cosine_per_seed(latents: Mapping[str, Any]) -> pd.DataFrame:
    """Per seed and swap step: ``cos(L[1] - L[0], L[i] - L[0])`` with
    ``L = [z_neutral, z_45, ..., z_5]`` (swap steps from late to early), flattened latents.

    Returns columns seed, k, index (position i in L), cos. L[1] gives 1 by construction; a zero
    difference gives NaN.
    """
    per_seed: dict[int, dict[int | None, np.ndarray]] = {}
    for key, value in latents.items():
        seed, k = parse_latent_key(key)
        per_seed.setdefault(seed, {})[k] = np.asarray(value, dtype=np.float64).ravel()
    rows = []
    for seed in sorted(per_seed):
        entry = per_seed[seed]
        if None not in entry:
            raise MetricInputError(f"seed {seed}: no neutral latent")
        ks = sorted((k for k in entry if k is not None), reverse=True)
        if not ks:
            continue
        z0 = entry[None]
        d1 = entry[ks[0]] - z0
        n1 = np.linalg.norm(d1)
        for i, k in enumerate(ks, start=1):
            di = entry[k] - z0
            denom = n1 * np.linalg.norm(di)
            cos = float(np.dot(d1, di) / denom) if denom > 0 else float("nan")
            rows.append({"seed": seed, "k": k, "index": i, "cos": cos})
    return pd.DataFrame(rows, columns=["seed", "k", "index", "cos"])


# --------------------------------------------------------------------------------------------
# classifier scores


def binary_metrics(
    y_true: Sequence[int], prob: Sequence[float], threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, F1 (positive class) and AUROC of one binary attribute; AUROC is NaN when the
    labels hold one class only. The call is ``prob >= threshold``."""
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    pred = (p >= threshold).astype(int)
    out: dict[str, Any] = {"n": int(y.size), "positives": int(y.sum())}
    out["accuracy"] = float((pred == y).mean()) if y.size else float("nan")
    out["f1"] = float(f1_score(y, pred, zero_division=0)) if y.size else float("nan")
    out["auroc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")
    return out


# --------------------------------------------------------------------------------------------
# FID


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples) in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between two Gaussians, computed with scipy.linalg.sqrtm as in
    pytorch-fid (an eps offset on the diagonals when the product is singular)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # few samples give singular covariances: expected, handled by the eps offset below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_bootstrap_ci(
    gen: np.ndarray, real: np.ndarray, n_boot: int = 100, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of FID, resampling the generated images (seeds); the real
    statistics stay fixed. Uses ``tr sqrt(S1 S2) = sum sqrt(eig(R S1 R))`` with R = sqrt(S2)
    (or the n x n Gram form when fewer samples than dimensions), equal to the sqrtm value for
    PSD matrices and fast enough to repeat."""
    gen = np.asarray(gen, dtype=np.float64)
    if n_boot < 1 or len(gen) < 2:
        return (float("nan"), float("nan"))
    mu2, s2 = gaussian_stats(real)
    r = _sqrt_psd(s2)
    tr2 = float(np.trace(s2))
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    n, d = gen.shape
    for b in range(n_boot):
        x = gen[rng.integers(0, n, size=n)]
        mu1 = x.mean(axis=0)
        xc = x - mu1
        if n < d:
            y = xc @ r
            eig = np.linalg.eigvalsh(y @ y.T / (n - 1))
            tr1 = float((xc * xc).sum() / (n - 1))
        else:
            s1 = xc.T @ xc / (n - 1)
            eig = np.linalg.eigvalsh(r @ s1 @ r)
            tr1 = float(np.trace(s1))
        diff = mu1 - mu2
        vals[b] = diff @ diff + tr1 + tr2 - 2.0 * np.sqrt(np.clip(eig, 0, None)).sum()
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


# --------------------------------------------------------------------------------------------
# LPIPS


def lpips_distances(model: Any, a: Any, b: Any, batch_size: int = 32) -> np.ndarray:
    """LPIPS between paired image batches ``a[i]``, ``b[i]`` (float tensors N x 3 x H x W in
    [-1, 1], on the model's device); returns N distances."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(a), batch_size):
            d = model(a[start : start + batch_size], b[start : start + batch_size])
            out.append(d.reshape(-1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
