"""aggregate-real on hand-made real-shard score files and inversion tables: CFRT per judge and
per swap step, a composed target, the recommended k, the identity ratio, the DDIM / null-text
error ratio, provenance and figures, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtraverse.core.errors import InputError
from tests.oneline import assert_one_line_error, run_cli

ATTRS = ("support_devices", "pleural_effusion", "cardiomegaly")
IDS = ("img_a", "img_b", "img_c", "img_d")  # seed = the image's index
KS = (5, 10, 15, 30, 45)
FRAMES = 4
MSE = (0.01, 0.02, 0.03, 0.04)
LP_REAL_RECON = (0.1, 0.2, 0.3, 0.4)  # LPIPS of each reconstruction to its real image
DW = {5: 8.0, 10: 6.0, 15: 4.0, 30: 3.0, 45: 2.0}  # |thorax width change| of the swap at k
DH = {5: 4.0, 10: 3.0, 15: 2.0, 30: 1.0, 45: 1.0}  # |heart size change|
PARAMS = {
    "attributes": list(ATTRS),
    "trajectories": {
        "support_devices": "support_devices",
        "pe_sd": {"target": ["pleural_effusion", "support_devices"]},
    },
    "swap_steps": [5, 10, 15],
    "bezier_frames": [2, 3],
    "n_boot": 200,
    "k_level": 0.8,
    "figure_seeds": 2,
}


def probs(traj: str, seed: int, kind: str, k: int, frame: int) -> dict[str, float]:
    """Classifier probabilities; the expected CFRTs are worked out in the tests."""
    p = dict.fromkeys(ATTRS, 0.2)
    if kind == "bezier" and frame >= 2:
        p["support_devices"] = 0.8
    if kind != "swap":
        return p
    if traj == "support_devices":
        if k in (5, 10, 15):
            p["support_devices"] = 0.8
            if seed == 3 and k == 10:  # the target does not move at k=10
                p["support_devices"] = 0.2
            if seed == 2 and k == 5:  # another attribute's call flips: a strict miss
                p["cardiomegaly"] = 0.6
        elif k == 30 and seed in (0, 1):
            p["support_devices"] = 0.6
    elif k in (5, 10, 15):  # pe_sd, composed
        p["pleural_effusion"] = 0.7
        p["support_devices"] = 0.2 if seed == 1 else 0.7  # seed 1: one target stays
        if seed == 0 and k == 5:
            p["cardiomegaly"] = 0.5
    return p


def identity(seed: int, kind: str, k: int) -> dict[str, float]:
    """Anatomy measures: the reconstruction moves (+2, +1) from the real image; a swap moves
    (DW[k], DH[k]) from the reconstruction, up for even images, down for odd ones."""
    w, h = 100.0 + 10 * seed, 10.0 + 2 * seed
    if kind == "real":
        return {"id_thorax_width": w, "id_heart_size": h}
    w, h = w + 2, h + 1
    if kind == "swap":
        sign = 1 if seed % 2 == 0 else -1
        w, h = w + sign * DW[k], h + sign * DH[k]
    return {"id_thorax_width": w, "id_heart_size": h}


def score_rows(traj: str, seeds: tuple[int, ...], truth: bool) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        items = [("real", math.nan, math.nan), ("neutral", -1, -1)]
        items += [("swap", k, -1) for k in KS]
        if traj == "support_devices":
            items += [("bezier", -1, f) for f in range(FRAMES)]
        for kind, k, frame in items:
            kk = -1 if kind == "real" else int(k)
            ff = -1 if kind == "real" else int(frame)
            p = probs(traj, seed, kind, kk, ff)
            lp = {"real": math.nan, "neutral": 0.0, "swap": kk / 100, "bezier": ff / 10}[kind]
            lp_real = {
                "real": 0.0,
                "neutral": LP_REAL_RECON[seed],
                "swap": kk / 100 + 0.05,
                "bezier": ff / 10 + 0.05,
            }[kind]
            row = {
                "seed": seed,
                "kind": kind,
                "k": k,
                "frame": frame,
                "t": math.nan,
                "path": f"images/{IDS[seed]}/{kind}.png",
                "dataset": "chexpert",
                "trajectory": traj,
                "image_id": IDS[seed],
                **{f"p_{a}": v for a, v in p.items()},
                "lpips": lp,
                "lpips_backbone": "random(seed=0)",
                "lpips_real": lp_real,
            }
            if truth:
                t = dict(p)
                if seed == 0 and kind == "swap" and kk == 15:  # the detector sees no device
                    t["support_devices"] = 0.2
                row |= {f"truth_{a}": v for a, v in t.items()}
                row |= identity(seed, kind, kk)
            rows.append(row)
    return pd.DataFrame(rows)


def write_shard_images(root: Path, seeds: tuple[int, ...], shard: str) -> Path:
    """A real-image traversal shard folder (meta + tiny PNGs) for the grid figure."""
    folder = root / "real" / "chexpert" / "support_devices" / shard
    rows = []
    rng = np.random.default_rng(0)
    for seed in seeds:
        image = IDS[seed]
        for kind, k in [("neutral", -1)] + [("swap", k) for k in KS]:
            rel = f"images/{image}/" + ("neutral.png" if k < 0 else f"k{k:02d}.png")
            rows.append(
                {
                    "seed": seed,
                    "kind": kind,
                    "k": k,
                    "frame": -1,
                    "t": math.nan,
                    "path": rel,
                    "dataset": "chexpert",
                    "trajectory": "support_devices",
                    "image_id": image,
                    "real_path": f"images/{image}/real.png",
                }
            )
        for name in ["real.png", "neutral.png"] + [f"k{k:02d}.png" for k in KS]:
            path = folder / "images" / image / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    pd.DataFrame(rows).to_parquet(folder / "meta.parquet", index=False)
    return folder


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    for no, seeds in enumerate(((0, 1), (2, 3))):
        shard = f"shard-{no:04d}"
        for traj in ("support_devices", "pe_sd"):
            out = root / "scores-real" / "chexpert" / traj / f"{shard}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            score_rows(traj, seeds, truth=traj == "support_devices").to_parquet(out, index=False)
        inv = root / "inversions" / "chexpert" / shard
        inv.mkdir(parents=True)
        mse = np.array([MSE[s] for s in seeds])
        pd.DataFrame(
            {
                "image_id": [IDS[s] for s in seeds],
                "index": list(seeds),
                "method": "null_text",
                "mse": mse,
                "psnr": -10 * np.log10(mse),
                "ddim_mse": 5 * mse,
                "ddim_psnr": -10 * np.log10(5 * mse),
                "vae_mse": 0.001,
                "vae_psnr": 30.0,
            }
        ).to_parquet(inv / "inversion.parquet", index=False)
        write_shard_images(root, seeds, shard)
    return root


def scores(root: Path, *trajs: str) -> list[str]:
    return [
        str(f)
        for t in trajs or ("support_devices", "pe_sd")
        for f in sorted((root / "scores-real" / "chexpert" / t).glob("shard-*.parquet"))
    ]


def inversions(root: Path) -> list[str]:
    return [str(d) for d in sorted((root / "inversions" / "chexpert").glob("shard-*"))]


@pytest.fixture(scope="module")
def metrics(fake_run: Path) -> Path:
    from medtraverse.cli import main

    out = fake_run / "metrics-real" / "chexpert"
    listing = fake_run / "scores.txt"  # @LIST for one option, repeated paths for the others
    listing.write_text("\n".join(scores(fake_run)) + "\n")
    shards = sorted((fake_run / "real" / "chexpert" / "support_devices").glob("shard-*"))
    rc = main(
        [
            "aggregate-real",
            "--scores",
            f"@{listing}",
            "--inversions",
            *inversions(fake_run),
            "--traversals",
            *map(str, shards),
            "--out",
            str(out),
            "--params",
            json.dumps(PARAMS),
        ]
    )
    assert rc == 0
    return out


def cfrt_at(table: pd.DataFrame, traj: str, judge: str, variant: str, k: int) -> pd.Series:
    hit = table[
        (table["trajectory"] == traj)
        & (table["judge"] == judge)
        & (table["variant"] == variant)
        & (table["version"] == "swap")
        & (table["k"] == k)
    ]
    assert len(hit) == 1, (traj, judge, variant, k)
    return hit.iloc[0]


def test_cfrt_per_step_and_judge_by_hand(metrics: Path) -> None:
    cfrt = pd.read_csv(metrics / "cfrt.csv")
    # classifier: seed 3 misses at k=10; k=30 moves 2 of 4 images; k=45 ties (no hit)
    want = {5: 1.0, 10: 0.75, 15: 1.0, 30: 0.5, 45: 0.0}
    for k, value in want.items():
        row = cfrt_at(cfrt, "support_devices", "classifier", "authors", k)
        assert row["value"] == pytest.approx(value) and row["n_images"] == 4
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    # strict: seed 2's cardiomegaly call flips at k=5
    assert cfrt_at(cfrt, "support_devices", "classifier", "strict", 5)["value"] == 0.75
    # truth: the detector sees no device on image 0 at k=15
    assert cfrt_at(cfrt, "support_devices", "truth", "authors", 15)["value"] == 0.75
    assert cfrt_at(cfrt, "support_devices", "truth", "authors", 5)["value"] == 1.0
    # pooled over k in {5, 10, 15} (the authors' definition): every shift still wins
    pooled = cfrt_at(cfrt, "support_devices", "classifier", "authors", -1)
    assert pooled["value"] == 1.0 and pooled["steps"] == "5,10,15"
    assert cfrt_at(cfrt, "support_devices", "classifier", "strict", -1)["value"] == 0.75
    assert cfrt_at(cfrt, "support_devices", "truth", "authors", -1)["value"] == 1.0
    bez = cfrt[(cfrt["version"] == "bezier") & (cfrt["judge"] == "classifier")]
    assert set(bez["value"]) == {1.0} and set(bez["trajectory"]) == {"support_devices"}


def test_composed_target_and_recommended_k(metrics: Path) -> None:
    cfrt = pd.read_csv(metrics / "cfrt.csv")
    composed = cfrt[cfrt["trajectory"] == "pe_sd"]
    assert set(composed["target"]) == {"pleural_effusion+support_devices"}
    assert set(composed["others"]) == {"cardiomegaly"}
    assert set(composed["judge"]) == {"classifier"}  # no truth columns in its files
    # image 1's support_devices never moves: the smaller target shift does not beat the other's
    for k in (5, 10, 15):
        assert cfrt_at(cfrt, "pe_sd", "classifier", "authors", k)["value"] == 0.75
    assert cfrt_at(cfrt, "pe_sd", "classifier", "strict", 5)["value"] == 0.5
    assert cfrt_at(cfrt, "pe_sd", "classifier", "authors", -1)["value"] == 0.75
    assert cfrt_at(cfrt, "pe_sd", "classifier", "strict", -1)["value"] == 0.5
    choose = pd.read_csv(metrics / "choose_k.csv", dtype={"recommended_k": str})
    best = choose.groupby("trajectory")["recommended_k"].first()
    # support_devices: k=15 (all four images, CI [1, 1]); k=30 reaches 0.5 only
    assert best["support_devices"] == "15" and best["pe_sd"] == "none"
    sd = choose[choose["trajectory"] == "support_devices"].set_index("k")
    assert sd.loc[30, "lpips"] == pytest.approx(0.30) and sd.loc[15, "n_images"] == 4
    summary = pd.read_csv(metrics / "summary.csv", dtype=str).set_index("trajectory")
    assert summary.loc["support_devices", "recommended k (CFRT low >= 0.8)"] == "15"


def test_identity_ratio_by_hand(metrics: Path) -> None:
    ident = pd.read_csv(metrics / "identity.csv")
    assert set(ident["trajectory"]) == {"support_devices"}
    row = ident.set_index(["k", "factor"])
    # thorax width: |change| 3 at k=30 against the reconstruction's 2; heart size 1 against 1
    assert row.loc[(30, "thorax_width"), "value"] == pytest.approx(3.0)
    assert row.loc[(30, "thorax_width"), "baseline"] == pytest.approx(2.0)
    assert row.loc[(30, "thorax_width"), "ratio"] == pytest.approx(1.5)
    assert row.loc[(30, "heart_size"), "ratio"] == pytest.approx(1.0)
    # all factors in units of their spread over the real images (heart sd = thorax sd / 5):
    # k=30: (3 + 5 * 1) / (2 + 5 * 1) = 8/7; k=5: (8 + 5 * 4) / 7 = 4
    assert row.loc[(30, "all"), "ratio"] == pytest.approx(8 / 7)
    assert row.loc[(5, "all"), "ratio"] == pytest.approx(4.0)
    s_w = np.std([100, 110, 120, 130], ddof=1)
    assert row.loc[(30, "all"), "value"] == pytest.approx((3 / s_w + 5 / s_w) / 2)
    # late swaps pooled (k = 30, 45): thorax (3 + 2) / 2 = 2.5 -> (2.5 + 5) / 7 = 15/14
    late = row.loc[(-1, "all")]
    assert late["steps"] == "30,45" and late["ratio"] == pytest.approx(15 / 14)
    assert late["ratio_ci_low"] == pytest.approx(15 / 14) and late["n_images"] == 4
    assert row.loc[(-1, "thorax_width"), "ratio"] == pytest.approx(1.25)
    md = (metrics / "summary.md").read_text()
    assert "Identity support_devices" in md and "<= 2.0: yes" in md


def test_inversion_table_ddim_ratio_and_lpips(metrics: Path) -> None:
    inv = pd.read_csv(metrics / "inversion.csv").set_index("method")
    assert list(inv.index) == ["null_text", "ddim", "vae"]
    assert inv.loc["null_text", "mse"] == pytest.approx(0.025)
    assert inv.loc["ddim", "mse"] == pytest.approx(0.125)
    # plain DDIM's error five times the null-text reconstruction's, on every resample
    assert inv.loc["ddim", "ratio_mse"] == pytest.approx(5.0)
    assert inv.loc["ddim", "ratio_mse_ci_low"] == pytest.approx(5.0)
    assert inv.loc["vae", "ratio_mse"] == pytest.approx(0.04)
    assert inv.loc["null_text", "lpips_real"] == pytest.approx(0.25)
    assert math.isnan(inv.loc["ddim", "lpips_real"])
    assert (inv["n_images"] == 4).all()
    assert "DDIM / null_text MSE = 5.00" in (metrics / "summary.md").read_text()


def test_lpips_and_probability_tables(metrics: Path) -> None:
    lp = pd.read_csv(metrics / "lpips.csv")
    sd = lp[lp["trajectory"] == "support_devices"].set_index(["version", "step", "reference"])
    assert sd.loc[("swap", 30, "reconstruction"), "value"] == pytest.approx(0.30)
    assert sd.loc[("swap", 30, "real"), "value"] == pytest.approx(0.35)
    assert sd.loc[("bezier", 3, "real"), "value"] == pytest.approx(0.35)
    assert sd.loc[("reconstruction", -1, "real"), "value"] == pytest.approx(0.25)
    assert not lp["comparable"].any()
    prob = pd.read_csv(metrics / "probabilities.csv")
    sel = prob[(prob["trajectory"] == "support_devices") & (prob["column"] == "p_support_devices")]
    by = sel.set_index(["kind", "k"])["value"]
    assert by[("swap", 30)] == pytest.approx(0.4) and by[("real", -1)] == pytest.approx(0.2)
    assert by[("neutral", -1)] == pytest.approx(0.2)
    assert (prob["column"] == "truth_support_devices").any()


def test_files_provenance_and_figures(metrics: Path, fake_run: Path) -> None:
    for name in ("inversion", "cfrt", "lpips", "identity", "probabilities", "choose_k"):
        assert (metrics / f"{name}.csv").stat().st_size > 0, name
    md = (metrics / "summary.md").read_text()
    assert "Real-image counterfactuals: chexpert (4 images)" in md
    assert "CFRT support_devices (truth, authors): k=5: 1.000, k=10: 0.750, k=15: 0.750" in md
    figures = {p.name for p in (metrics / "figures").glob("*.png")}
    assert figures == {
        "tradeoff.png",
        "probability_vs_k.png",
        "lpips_vs_step.png",
        "grid_support_devices.png",
    }
    rec = json.loads((metrics / "provenance.json").read_text())
    assert rec["stage"] == "aggregate-real" and rec["params"] == PARAMS
    paths = {Path(i["path"]).resolve() for i in rec["inputs"]}
    assert {Path(p).resolve() for p in scores(fake_run) + inversions(fake_run)} <= paths
    assert rec["extra"]["trajectories"] == ["pe_sd", "support_devices"]


@pytest.mark.parametrize("column", ["lpips_real", "p_pleural_effusion"])
def test_score_file_without_a_column_is_one_line(
    column: str, fake_run: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "support_devices" / "shard-0001.parquet"
    bad.parent.mkdir()
    first, second = scores(fake_run, "support_devices")
    pd.read_parquet(second).drop(columns=[column]).to_parquet(bad, index=False)
    out = tmp_path / "out"
    proc = run_cli(
        "aggregate-real",
        "--scores",
        first,
        str(bad),
        "--inversions",
        *inversions(fake_run),
        "--out",
        str(out),
        "--params",
        json.dumps(PARAMS),
    )
    assert_one_line_error(proc, str(bad), f"no column {column!r}", untouched=[out])


def test_unknown_image_and_bad_params_are_input_errors(fake_run: Path, tmp_path: Path) -> None:
    from medtraverse.report.real import aggregate_real

    out = tmp_path / "out"
    one = inversions(fake_run)[:1]
    with pytest.raises(InputError, match="image 'img_c' is in no --inversions shard"):
        aggregate_real(scores(fake_run), one, out, PARAMS)
    with pytest.raises(InputError, match="params.identity_late_k"):
        aggregate_real(scores(fake_run), inversions(fake_run), out, {"identity_late_k": "late"})
    with pytest.raises(InputError, match="not an inversion shard folder"):
        aggregate_real(scores(fake_run), [str(tmp_path)], out, PARAMS)
    assert not out.exists()
