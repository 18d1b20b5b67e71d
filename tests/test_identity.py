"""Identity measurements of the twins (``detect.chexpert_identity``, ``detect.isic_identity``):
they follow the generating anatomy / lesion and skin, and stay put when only an edited attribute
(support devices, pleural effusion; hair, gel bubbles, ruler, ink, dark corners) is drawn; and
the score stage's ``id_*`` columns, ``real`` rows and ``lpips_real`` on a real-image shard."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from medtraverse.data.synth import chexpert, detect, isic
from tests import test_classify
from tests.test_classify import write_shard

trained = test_classify.trained  # the tiny classifier, shared by name
N = 60
# measured over N cases (64 px / 32 px): the floor each factor keeps in the correlation test
CX_RHO = {
    "apex_y": 0.85,
    "body_width": 0.95,
    "heart_x": 0.8,
    "midline_x": 0.95,
    "thorax_width": 0.9,
}
ISIC_RHO = {
    "lesion_lightness": 0.8,
    "lesion_radius": 0.8,
    "lesion_x": 0.8,
    "lesion_y": 0.8,
    "skin_lightness": 0.95,
}


# --- ground truth -----------------------------------------------------------------------------


def chexpert_truth(a: dict[str, float], study: dict[str, Any]) -> dict[str, float]:
    """Where the renderer put each identity factor, in the measures' units."""
    th = math.radians(a["rotation"] + study["drot"])
    c, s, sc = math.cos(th), math.sin(th), a["scale"]
    ox, oy = a["cx"] + study["dx"], a["cy"] + study["dy"]

    def img(x: float, y: float) -> tuple[float, float]:
        return (ox + sc * (c * x - s * y) + 1) / 2, (oy + sc * (s * x + c * y) + 1) / 2

    top, bottom = a["lung_top"], a["lung_bottom"]
    card = study["labels"]["Cardiomegaly"] == 1.0
    heart = (a["heart_dx"] + 0.04 * card, bottom - a["heart_dy"] + 0.02 * card)
    return {
        "apex_y": 0.5 * (img(-a["lung_offset"], top)[1] + img(a["lung_offset"], top)[1]),
        "body_width": sc * a["body_half_width"],
        "heart_x": img(*heart)[0],
        "midline_x": img(0.0, top + 0.25 * (bottom - top))[0],
        "thorax_width": sc * (a["lung_offset"] + a["lung_half_width"]),
    }


def chexpert_cases(n: int = N) -> list[tuple[dict, dict, int]]:
    out = []
    for i in range(n):
        rng = np.random.default_rng([7, i])
        a = chexpert.sample_anatomy(rng, "Male" if i % 2 else "Female")
        out.append((a, chexpert.sample_study(rng, False, 0.0), 1000 + i))
    return out


def chexpert_view(a: dict, study: dict, size: int, seed: int, **labels: float) -> np.ndarray:
    """The frontal view; ``labels`` overrides (the view's random stream is the same, so only
    the named findings change)."""
    study = {**study, "labels": {**study["labels"], **labels}}
    return chexpert.render_view(a, study, False, size, np.random.default_rng(seed))


def luminance(rgb: np.ndarray) -> float:
    """Relative luminance of an sRGB colour (L* is a monotone function of it)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def isic_truth(item: dict[str, Any]) -> dict[str, float]:
    les = item["lesion"]
    brown = item["skin"] * les["darkness"] * np.array([1.0, 0.82, 0.7])
    return {
        "lesion_lightness": luminance(brown),
        "lesion_radius": les["radius"] * math.sqrt(les["aspect"]) / 2,
        "lesion_x": (les["cx"] + 1) / 2,
        "lesion_y": (les["cy"] + 1) / 2,
        "skin_lightness": luminance(item["skin"]),
    }


def isic_cases(n: int = N) -> list[tuple[dict, int]]:
    opts = isic.IsicOptions(other_fraction=0.0)
    return [(isic.sample_image(np.random.default_rng([7, i]), opts), 5000 + i) for i in range(n)]


def isic_view(item: dict, size: int, seed: int, only: str | None = "") -> np.ndarray:
    """The image as drawn (``only`` ""), or with no artifact but ``only`` (None: none)."""
    if only != "":
        arts = item["artifacts"]
        item = {
            **item,
            "artifacts": {a: {**v, "strength": float(a == only)} for a, v in arts.items()},
        }
    return isic.render(item, size, np.random.default_rng(seed))[0]


def rho(measured: list[dict], truth: list[dict], factor: str) -> float:
    m = np.array([d[factor] for d in measured])
    t = np.array([d[factor] for d in truth])
    ok = np.isfinite(m)
    assert ok.mean() >= 0.95, factor
    return float(spearmanr(m[ok], t[ok])[0])


# Known weak spots (measured median / 75th percentile of |change| over the spread between
# patients, at 64 and 32 px): full-strength gel bubbles over the lesion move its outline (radius
# 0.27/1.27 and 0.20/0.97, y 0.45/1.57 and 0.36/1.21), and hair across it a little (radius
# 0.32/0.44 and 0.46/0.62). Everything else stays under 0.1 typical, 0.3 at the 75th percentile.
LOOSE = {
    **{("gel_bubble", f"lesion_{f}"): (0.6, 1.8) for f in ("radius", "x", "y")},
    **{("hair", f"lesion_{f}"): (0.55, 0.75) for f in ("radius", "x", "y")},
}


def assert_invariant(before: list[dict], after: list[dict], spread: dict[str, float], what: str):
    """Typical change well under the spread between patients, and rarely near it."""
    for factor, sd in spread.items():
        d = np.abs([b[factor] - a[factor] for a, b in zip(before, after, strict=True)])
        d = d[np.isfinite(d)] / sd
        typical, most = LOOSE.get((what, factor), (0.3, 0.45))
        assert np.median(d) < typical, (what, factor, np.median(d))
        assert np.percentile(d, 75) < most, (what, factor, np.percentile(d, 75))


# --- CheXpert ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 32])
def test_chexpert_identity_follows_the_anatomy(size: int) -> None:
    cases = chexpert_cases()
    measured = [detect.chexpert_identity(chexpert_view(a, s, size, v)) for a, s, v in cases]
    truth = [chexpert_truth(a, s) for a, s, _ in cases]
    assert set(measured[0]) == set(detect.CHEXPERT_IDENTITY) == set(CX_RHO)
    for factor, floor in CX_RHO.items():
        assert rho(measured, truth, factor) >= floor, factor


@pytest.mark.parametrize("size", [64, 32])
def test_chexpert_identity_ignores_devices_and_effusion(size: int) -> None:
    cases = chexpert_cases(40)
    plain = {"Support Devices": 0.0, "Pleural Effusion": 0.0}
    before = [detect.chexpert_identity(chexpert_view(a, s, size, v, **plain)) for a, s, v in cases]
    spread = {f: float(np.nanstd([m[f] for m in before])) for f in detect.CHEXPERT_IDENTITY}
    for finding in plain:
        edit = {**plain, finding: 1.0}
        after = [
            detect.chexpert_identity(chexpert_view(a, s, size, v, **edit)) for a, s, v in cases
        ]
        assert_invariant(before, after, spread, finding)


def test_identity_is_in_image_fractions() -> None:
    a, s, v = chexpert_cases(1)[0]
    big, small = (detect.chexpert_identity(chexpert_view(a, s, n, v)) for n in (128, 32))
    for factor in detect.CHEXPERT_IDENTITY:
        assert 0.0 < big[factor] < 1.0 and big[factor] == pytest.approx(small[factor], abs=0.03)
    blank = np.zeros((32, 32), np.uint8)
    assert all(math.isnan(v) for v in detect.chexpert_identity(blank).values())
    assert all(math.isnan(v) for v in detect.isic_identity(blank).values())


# --- ISIC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 32])
def test_isic_identity_follows_lesion_and_skin(size: int) -> None:
    cases = isic_cases()
    measured = [detect.isic_identity(isic_view(item, size, v)) for item, v in cases]
    truth = [isic_truth(item) for item, _ in cases]
    assert set(measured[0]) == set(detect.ISIC_IDENTITY) == set(ISIC_RHO)
    for factor, floor in ISIC_RHO.items():
        assert rho(measured, truth, factor) >= floor, factor


@pytest.mark.parametrize("size", [64, 32])
def test_isic_identity_ignores_the_artifacts(size: int) -> None:
    cases = isic_cases(30)
    before = [detect.isic_identity(isic_view(item, size, v, None)) for item, v in cases]
    spread = {f: float(np.nanstd([m[f] for m in before])) for f in detect.ISIC_IDENTITY}
    for artifact in ("hair", "gel_bubble", "ruler", "ink", "dark_corner"):
        after = [detect.isic_identity(isic_view(item, size, v, artifact)) for item, v in cases]
        assert_invariant(before, after, spread, artifact)


# --- score: id_* columns, real rows, lpips_real -------------------------------------------------


def write_real_shard(shard: Path, seeds: tuple[int, ...] = (0, 1), size: int = 32) -> None:
    """A fake real-image shard: a seed shard's rows plus ``image_id`` and ``real_path``, the
    real image being a CheXpert twin view."""
    write_shard(shard, seeds=seeds, size=size)
    meta = pd.read_parquet(shard / "meta.parquet")
    for seed, (a, s, v) in zip(seeds, chexpert_cases(len(seeds)), strict=True):
        rel = f"images/img{seed:02d}/real.png"
        (shard / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(chexpert_view(a, s, size, v)).convert("RGB").save(shard / rel)
    meta["image_id"] = [f"img{s:02d}" for s in meta["seed"]]
    meta["real_path"] = [f"images/img{s:02d}/real.png" for s in meta["seed"]]
    meta.to_parquet(shard / "meta.parquet", index=False)


def test_score_real_shard_rows_lpips_real_and_identity(tmp_path: Path, trained) -> None:
    from medtraverse.evaluation.score import SCORE_KINDS, score_shard

    shard = tmp_path / "real-0000"
    write_real_shard(shard)
    params = {"truth_detector": "chexpert", "lpips_backbone": "random", "batch_size": 8}
    scores = score_shard(shard, [trained[1]], tmp_path / "s.parquet", params)
    meta = pd.read_parquet(shard / "meta.parquet")
    assert len(scores) == len(meta) + 2 and set(scores["kind"]) <= set(SCORE_KINDS)
    real = scores[scores["kind"] == "real"]
    assert list(real["seed"]) == [0, 1] and list(real["image_id"]) == ["img00", "img01"]
    assert list(real["path"]) == ["images/img00/real.png", "images/img01/real.png"]
    assert (real["k"] == -1).all() and (real["frame"] == -1).all() and real["t"].isna().all()
    # each image's real row comes first, then its rows in meta order
    assert list(scores.groupby("seed", sort=False)["kind"].first()) == ["real", "real"]
    rest = scores[scores["kind"] != "real"].reset_index(drop=True)
    assert rest[["seed", "kind", "k", "frame", "path"]].equals(
        meta[["seed", "kind", "k", "frame", "path"]]
    )
    assert (scores["lpips_real"][scores["kind"] == "real"] == 0).all()
    assert (scores.loc[scores["kind"] != "real", "lpips_real"] > 0).all()
    assert (real["lpips"] > 0).all()  # the reconstruction (neutral) against the real image
    ref = (rest["kind"] == "neutral") | ((rest["kind"] == "bezier") & (rest["frame"] == 0))
    assert (rest.loc[ref, "lpips"] == 0).all() and (rest.loc[~ref, "lpips"] > 0).all()
    assert real["p_bar"].between(0, 1).all() and real["truth_support_devices"].notna().all()
    for factor in detect.CHEXPERT_IDENTITY:
        col = f"id_{factor}"
        img = np.asarray(Image.open(shard / real["path"].iloc[0]).convert("RGB"))
        assert real[col].iloc[0] == pytest.approx(detect.chexpert_identity(img)[factor])
        assert real[col].notna().all()


def test_score_seed_shard_gets_id_columns_only(tmp_path: Path, trained) -> None:
    from medtraverse.evaluation.score import score_shard

    shard = tmp_path / "shard-0000"
    write_shard(shard, seeds=(2,))
    plain = score_shard(shard, [trained[1]], tmp_path / "a.parquet", {"lpips_backbone": "random"})
    with_ids = score_shard(
        shard,
        [trained[1]],
        tmp_path / "b.parquet",
        {"lpips_backbone": "random", "truth_detector": "isic"},
    )
    assert "real" not in set(with_ids["kind"]) and "lpips_real" not in with_ids
    assert "image_id" not in with_ids
    new = [c for c in with_ids.columns if c not in plain.columns]
    assert sorted(new) == sorted(
        [f"truth_{f}" for f in detect.detect_isic(np.zeros((32, 32, 3), np.uint8))]
        + [f"id_{f}" for f in detect.ISIC_IDENTITY]
    )
    pd.testing.assert_frame_equal(with_ids[plain.columns], plain)


def test_real_shard_without_its_real_image_is_one_line(tmp_path: Path, trained) -> None:
    from medtraverse.core.errors import InputError
    from medtraverse.evaluation.score import score_shard

    shard = tmp_path / "real-0001"
    write_real_shard(shard, seeds=(3,))
    (shard / "images/img03/real.png").unlink()
    out = tmp_path / "s.parquet"
    with pytest.raises(InputError, match=r"image 'images/img03/real.png' not found"):
        score_shard(shard, [trained[1]], out, {})
    assert not out.exists()
