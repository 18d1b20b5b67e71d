"""aggregate on fake score parquets + fake shard folders: hand-computed CFRT, cosine, tables,
figures; figures CLI; one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.numpy import save_file

from medtraverse.core.errors import InputError
from tests.fakedata import write_shard
from tests.oneline import one_line_input_error

ATTRS = ("support_devices", "pleural_effusion")
KS = (5, 10, 15, 45)
FRAMES = 4
PARAMS = {
    "attributes": list(ATTRS),
    "swap_steps": [5, 10, 15],
    "bezier_frames": [2, 3],
    "n_boot": 200,
    "lpips_backbone": "random",
    "reference": True,
    "tsne_max_seeds": 6,
    "figure_seeds": 2,
    "strip_frames": 3,
}


def p_values(seed: int, kind: str, k: int, frame: int) -> tuple[float, float]:
    """(p_target, p_other) of one image; see the expected CFRT in the test below. The swap
    images at k = 45 (outside K = {5, 10, 15}) and the Bezier frame 1 (outside {2, 3}) are
    drawn so that counting them would change the answer."""
    if kind == "neutral" or (kind == "bezier" and frame == 0):
        return 0.25, 0.25
    if kind == "bezier":
        return (0.75, 0.25) if frame >= 2 else (0.0, 1.0)
    if seed == 5:  # in K the target does not move, the other one does: a miss
        return (1.0, 0.5) if k == 45 else (0.25, 0.375)
    if seed == 0 and k == 10:  # the other attribute's call flips at one k: strict miss
        return 0.75, 0.5
    if seed == 3 and k == 45:  # a flip outside K: no strict miss
        return 0.75, 0.5
    return 0.75, 0.25


def write_trajectory(root: Path, dataset: str, trajectory: str, truth: bool) -> None:
    target = trajectory
    other = [a for a in ATTRS if a != target][0]
    rng = np.random.default_rng(len(trajectory))

    def pixels(seed: int, kind: str, k: int, frame: int) -> np.ndarray:
        return rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)

    for shard_no, seeds in enumerate(((0, 1, 2), (3, 4, 5))):
        shard = root / "traversals" / dataset / trajectory / f"shard-{shard_no:04d}"
        latents = {}
        for seed in seeds:
            z0 = np.full((4, 2, 2), float(seed), dtype=np.float32)
            latents[f"{seed}/neutral"] = z0
            e1, e2 = np.zeros_like(z0), np.zeros_like(z0)
            e1[0, 0, 0], e2[1, 0, 0] = 1.0, 1.0
            for k in KS:
                latents[f"{seed}/k{k}"] = z0 + (50 - k) * e1 + (45 * e2 if k == 5 else 0)
        meta = write_shard(
            shard, seeds, KS, FRAMES, pixels, dataset=dataset, trajectory=trajectory, prompt="x"
        )
        p = [p_values(*row) for row in meta[["seed", "kind", "k", "frame"]].itertuples(False)]
        meta = meta.drop(columns="prompt")
        meta[f"p_{target}"], meta[f"p_{other}"] = [x[0] for x in p], [x[1] for x in p]
        save_file(latents, str(shard / "latents.safetensors"))
        scores = meta.copy()
        scores["shard"] = shard.name
        if truth:
            scores[f"truth_{target}"], scores[f"truth_{other}"] = (
                scores[f"p_{target}"],
                scores[f"p_{other}"],
            )
        out = root / "scores" / dataset / trajectory / f"shard-{shard_no:04d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        scores.to_parquet(out, index=False)


def score_files(root: Path, *trajectories: str) -> list[Path]:
    """The score parquets of the trajectories (all when none is named): stages take files."""
    return [
        f
        for t in trajectories or ATTRS
        for f in sorted((root / "scores" / "chexpert" / t).glob("shard-*.parquet"))
    ]


def shard_dirs(root: Path, *trajectories: str) -> list[Path]:
    """The traversal shard folders of the trajectories (all when none is named)."""
    return [
        d
        for t in trajectories or ATTRS
        for d in sorted((root / "traversals" / "chexpert" / t).glob("shard-*"))
    ]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    write_trajectory(root, "chexpert", "support_devices", truth=True)
    write_trajectory(root, "chexpert", "pleural_effusion", truth=False)
    clf = root / "classifiers" / "chexpert" / "support_devices"
    clf.mkdir(parents=True)
    pd.DataFrame(
        [
            {
                "model": "support_devices",
                "attribute": a,
                "split": "test",
                "n": 10,
                "positives": 5,
                "accuracy": 0.8,
                "f1": 0.75,
                "auroc": 0.9,
                "threshold": 0.5,
                "weights": "scratch",
                "epoch": 2,
                "selected": "best val loss",
            }
            for a in ATTRS
        ]
    ).to_csv(clf / "metrics.csv", index=False)
    return root


@pytest.fixture(scope="module")
def aggregated(fake_run: Path) -> Path:
    from medtraverse.cli import main

    out = fake_run / "metrics" / "chexpert"
    rc = main(
        [
            "aggregate",
            "--scores",
            *map(str, score_files(fake_run)),
            "--out",
            str(out),
            "--traversals",
            *map(str, shard_dirs(fake_run)),
            "--classifiers",
            str(fake_run / "classifiers" / "chexpert" / "support_devices"),
            "--params",
            json.dumps(PARAMS),
        ]
    )
    assert rc == 0
    return out


def cfrt_value(
    cfrt: pd.DataFrame, trajectory: str, version: str, variant: str, source: str = "classifier"
) -> pd.Series:
    hit = cfrt[
        (cfrt["trajectory"] == trajectory)
        & (cfrt["version"] == version)
        & (cfrt["variant"] == variant)
        & (cfrt["source"] == source)
    ]
    assert len(hit) == 1
    return hit.iloc[0]


def test_cfrt_table_matches_hand_values(aggregated: Path) -> None:
    """Shifts over K = {5, 10, 15} (from the neutral image 0.25, 0.25): seeds 0-4 move the
    target +0.5 and the other 0 (seed 0: +0.25 at k = 10, its call flips), seed 5 moves the
    target 0 and the other +0.125: authors 5/6, strict 4/6 (seed 0 out). Counting k = 45 as
    well would make seed 5 a hit (target 0.75 / 4 = 0.1875 > other 0.625 / 4 = 0.15625, but
    its call flips at 45) and seed 3 a strict miss (its call flips at 45): authors 6/6, strict
    3/6. Bezier over frames {2, 3}: every seed +0.5 vs 0; frame 1 (0.0, 1.0) would sink it."""
    cfrt = pd.read_csv(aggregated / "cfrt.csv")
    for traj in ATTRS:
        authors = cfrt_value(cfrt, traj, "swap", "authors")
        assert authors["value"] == pytest.approx(5 / 6) and authors["n_seeds"] == 6
        assert authors["ci_low"] <= authors["value"] <= authors["ci_high"]
        assert cfrt_value(cfrt, traj, "swap", "strict")["value"] == pytest.approx(4 / 6)
        assert cfrt_value(cfrt, traj, "bezier", "authors")["value"] == 1.0
        assert cfrt_value(cfrt, traj, "bezier", "strict")["value"] == 1.0
    ref = cfrt_value(cfrt, "support_devices", "swap", "authors")
    assert ref["ref_code"] == 0.888 and ref["ref_poster"] == 0.89
    assert math.isnan(cfrt_value(cfrt, "support_devices", "swap", "strict")["ref_code"])
    # detector (truth) CFRT next to the classifier's, only where truth columns exist
    assert cfrt_value(cfrt, "support_devices", "swap", "authors", "truth")[
        "value"
    ] == pytest.approx(5 / 6)
    assert not ((cfrt["trajectory"] == "pleural_effusion") & (cfrt["source"] == "truth")).any()
    per_seed = pd.read_parquet(aggregated / "cfrt_per_seed.parquet")
    assert len(per_seed[(per_seed["source"] == "classifier")]) == 2 * 2 * 6


def test_cosine_lpips_fid_and_classifier_tables(aggregated: Path) -> None:
    cos = pd.read_csv(aggregated / "cosine.csv")
    sd = cos[cos["trajectory"] == "support_devices"].set_index("k")
    assert sd.loc[45, "index"] == 1 and sd.loc[45, "value"] == pytest.approx(1.0)
    assert sd.loc[15, "value"] == pytest.approx(1.0)
    assert sd.loc[5, "value"] == pytest.approx(1 / math.sqrt(2))
    lp = pd.read_csv(aggregated / "lpips.csv")
    assert set(lp["version"]) == {"swap", "bezier"} and (lp["value"] > 0).all()
    assert (lp["lpips_backbone"] == "random(seed=0)").all() and not lp["comparable"].any()
    assert "NOT comparable" in (aggregated / "lpips.md").read_text()
    assert "NOT comparable" in (aggregated / "summary.md").read_text()
    fid = pd.read_csv(aggregated / "fid.csv")
    assert fid["note"].str.startswith("skipped: no Inception weights").all()
    clf_md = (aggregated / "classifiers.md").read_text()
    assert "Accuracy (poster)" in clf_md and "0.860" in clf_md and "0.800" in clf_md
    summary = pd.read_csv(aggregated / "summary.csv")
    assert set(summary["trajectory"]) == set(ATTRS) and "CFRT swap (strict)" in summary.columns
    prob = pd.read_csv(aggregated / "probability.csv")
    row = prob[
        (prob["trajectory"] == "support_devices")
        & (prob["column"] == "p_support_devices")
        & (prob["k"] == 45)
    ]
    assert row["value"].iloc[0] == pytest.approx(0.75 * 5 / 6 + 1.0 / 6)


def test_all_table_and_figure_files(aggregated: Path) -> None:
    for stem in ("cfrt", "lpips", "cosine", "fid", "classifiers", "summary"):
        for ext in ("csv", "md", "tex"):
            assert (aggregated / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"
    assert "\\begin{tabular}" in (aggregated / "cfrt.tex").read_text()
    figures = {p.name for p in (aggregated / "figures").glob("*.png")}
    assert figures >= {
        "grid_support_devices.png",
        "grid_pleural_effusion.png",
        "bezier_support_devices.png",
        "probability_vs_k.png",
        "cosine_vs_k.png",
        "lpips_vs_step.png",
        "tsne.png",
    }
    tsne = pd.read_csv(aggregated / "tsne.csv")
    assert len(tsne) == 2 * 6 * (1 + len(KS)) and tsne[["x", "y"]].notna().all().all()
    assert json.loads((aggregated / "provenance.json").read_text())["stage"] == "aggregate"


def test_figures_cli_rerenders(aggregated: Path, fake_run: Path, tmp_path: Path) -> None:
    from medtraverse.cli import main

    out = tmp_path / "figs"
    rc = main(
        [
            "figures",
            "--metrics",
            str(aggregated),
            "--out",
            str(out),
            "--traversals",
            *map(str, shard_dirs(fake_run, "support_devices")),
        ]
    )
    assert rc == 0
    assert (out / "grid_support_devices.png").is_file() and (out / "tsne.png").is_file()
    assert not (out / "grid_pleural_effusion.png").exists()


def test_missing_attribute_column_is_one_line_and_writes_nothing(
    fake_run: Path, tmp_path: Path
) -> None:
    from medtraverse.report.aggregate import aggregate

    out = tmp_path / "m"
    params = {**PARAMS, "attributes": [*ATTRS, "cardiomegaly"], "figures": False}
    with one_line_input_error("no column 'p_cardiomegaly'", untouched=[out]):
        aggregate(score_files(fake_run, "support_devices"), out, params)
    with one_line_input_error("params.n_boot", untouched=[out]):
        aggregate(score_files(fake_run), out, {"n_boot": "many"})


def test_unknown_trajectory_target_and_explicit_mapping(fake_run: Path, tmp_path: Path) -> None:
    from medtraverse.report.aggregate import aggregate, resolve_target

    assert (
        resolve_target("mel_gel_bubble", ["hair", "gel_bubble", "ruler", "ink"], {}) == "gel_bubble"
    )
    assert resolve_target("x", ["a"], {"x": "a"}) == "a"
    with pytest.raises(InputError, match="no target attribute"):
        resolve_target("nv_dots", ["hair", "ink"], {})
    # one trajectory alone, no shard folders: CFRT only, LPIPS/cosine left empty
    result = aggregate(
        score_files(fake_run, "pleural_effusion"),
        tmp_path / "one",
        {**PARAMS, "figures": False},
    )
    assert set(result["cfrt"]["trajectory"]) == {"pleural_effusion"} and result["lpips"].empty


@pytest.mark.parametrize(
    "style", ["torchvision", pytest.param("pytorch-fid", marks=pytest.mark.slow)]
)
def test_fid_with_inception_weights(style: str, fake_run: Path, tmp_path: Path) -> None:
    """Both weight formats load; the pytorch-fid one then runs the whole FID path (about 50 s
    on one CPU thread: 2048-d sqrtm, hence slow)."""
    import torch
    from safetensors.torch import save_file
    from torchvision.models.inception import Inception3

    from medtraverse.evaluation.backbones import _patch_fid_blocks, load_inception
    from medtraverse.report.aggregate import aggregate

    torch.manual_seed(0)
    fid_style = style == "pytorch-fid"
    net = Inception3(
        num_classes=1008 if fid_style else 1000, aux_logits=not fid_style, init_weights=False
    )
    if fid_style:
        _patch_fid_blocks(net)
    weights = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    model = load_inception(weights)
    assert model(torch.zeros(1, 3, 299, 299)).shape == (1, 2048)
    if not fid_style:
        return
    prep = tmp_path / "prep"
    (prep / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)).save(
            prep / f"images/{i}.png"
        )
        rows.append(
            {
                "image_id": str(i),
                "path": f"images/{i}.png",
                "split": "test",
                "support_devices": i % 2,
                "pleural_effusion": 0,
            }
        )
    pd.DataFrame(rows).to_parquet(prep / "manifest.parquet", index=False)
    params = {
        **PARAMS,
        "inception_weights": str(weights),
        "fid_n_boot": 5,
        "figures": False,
        "lpips_backbone": "random",
    }
    result = aggregate(
        score_files(fake_run, "support_devices"),
        tmp_path / "m",
        params,
        traversals=shard_dirs(fake_run, "support_devices"),
        manifest=prep / "manifest.parquet",
    )
    fid = result["fid"].set_index("images")
    assert set(fid.index) == {"neutral", "swap_k5"}
    assert (fid["n_generated"] == 6).all() and (fid["n_real"] == 3).all()
    assert np.isfinite(fid["value"]).all() and (fid["value"] >= -1e-6).all()
    assert (fid["ci_low"] <= fid["ci_high"]).all()
    assert fid.loc["swap_k5", "ref_code"] == 51.42
