"""Metric definitions on hand-computed tables: CFRT (ties, one other attribute, strict), cosine,
bootstrap, classifier scores, FID, LPIPS and the offline backbones."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medtraverse.evaluation import metrics
from tests.oneline import assert_one_line_error, one_line_input_error, run_main


def swap_scores(
    table: dict[int, dict[str, list[float]]], ks: tuple[int, ...] = (5, 10, 15)
) -> pd.DataFrame:
    """Score rows from ``{seed: {column: [neutral, x_k for k in ks]}}``."""
    rows = []
    for seed, cols in table.items():
        names = list(cols)
        rows.append(
            {
                "seed": seed,
                "kind": "neutral",
                "k": -1,
                "frame": -1,
                **{c: cols[c][0] for c in names},
            }
        )
        for i, k in enumerate(ks, start=1):
            rows.append(
                {
                    "seed": seed,
                    "kind": "swap",
                    "k": k,
                    "frame": -1,
                    **{c: cols[c][i] for c in names},
                }
            )
    return pd.DataFrame(rows)


# Values are binary fractions, so equal shifts are exactly equal (a real tie).
TIES = {
    # seed 0: shift_a = mean(.5,.75,.75)-.25 = 0.4167, shift_b = 0 -> hit
    0: {"p_a": [0.25, 0.5, 0.75, 0.75], "p_b": [0.5, 0.5, 0.5, 0.5]},
    # seed 1: both shift by exactly 0.25 -> tie, no hit
    1: {"p_a": [0.25, 0.5, 0.5, 0.5], "p_b": [0.125, 0.375, 0.375, 0.375]},
    # seed 2: shift_a = 0.125 < shift_b = 0.25 -> no hit
    2: {"p_a": [0.25, 0.375, 0.375, 0.375], "p_b": [0.125, 0.375, 0.375, 0.375]},
    # seed 3: shift_a = -0.125 > shift_b = -0.25 -> hit (A beats B although it went down)
    3: {"p_a": [0.5, 0.375, 0.375, 0.375], "p_b": [0.75, 0.5, 0.5, 0.5]},
}


def test_swap_shift_is_mean_over_k_minus_neutral() -> None:
    shift = metrics.shifts(swap_scores(TIES), ["p_a", "p_b"], "swap", (5, 10, 15))
    assert shift.loc[0, "p_a"] == pytest.approx((0.5 + 0.75 + 0.75) / 3 - 0.25)
    assert shift.loc[1, "p_a"] == shift.loc[1, "p_b"] == 0.25
    assert shift.loc[3, "p_b"] == -0.25


def test_cfrt_ties_do_not_count_and_single_other_is_pairwise() -> None:
    hits = metrics.cfrt_per_seed(swap_scores(TIES), "a", ["a", "b"])
    assert hits["authors"].tolist() == [True, False, False, True]
    assert hits["authors"].mean() == 0.5


def test_cfrt_several_others_needs_all_beaten() -> None:
    table = {
        0: {
            "p_a": [0.0, 0.5, 0.5, 0.5],
            "p_b": [0.0, 0.25, 0.25, 0.25],
            "p_c": [0.0, 0.75, 0.75, 0.75],
        },
        1: {
            "p_a": [0.0, 0.5, 0.5, 0.5],
            "p_b": [0.0, 0.25, 0.25, 0.25],
            "p_c": [0.0, 0.25, 0.25, 0.25],
        },
    }
    hits = metrics.cfrt_per_seed(swap_scores(table), "a", ["a", "b", "c"])
    assert hits["authors"].tolist() == [False, True]


def test_cfrt_no_other_attribute_means_positive_shift() -> None:
    table = {
        0: {"p_a": [0.25, 0.5, 0.5, 0.5]},
        1: {"p_a": [0.5, 0.5, 0.5, 0.5]},
        2: {"p_a": [0.5, 0.25, 0.25, 0.25]},
    }
    hits = metrics.cfrt_per_seed(swap_scores(table), "a", ["a"])
    assert hits["authors"].tolist() == [True, False, False]


def test_cfrt_strict_needs_label_and_other_calls_unchanged() -> None:
    table = {
        # authors hit; label call stays 1, b's call stays 0 -> strict hit
        0: {
            "p_a": [0.25, 0.75, 0.75, 0.75],
            "p_b": [0.125, 0.25, 0.25, 0.25],
            "p_y": [0.75, 0.875, 0.625, 0.75],
        },
        # authors hit; the label drops below 0.5 at one k -> not strict
        1: {
            "p_a": [0.25, 0.75, 0.75, 0.75],
            "p_b": [0.125, 0.25, 0.25, 0.25],
            "p_y": [0.75, 0.75, 0.25, 0.75],
        },
        # authors hit; b's call flips to 1 at one k (0.5 >= threshold) -> not strict
        2: {
            "p_a": [0.0, 1.0, 1.0, 1.0],
            "p_b": [0.25, 0.5, 0.25, 0.25],
            "p_y": [0.75, 0.75, 0.75, 0.75],
        },
        # authors miss -> strict miss too
        3: {
            "p_a": [0.25, 0.25, 0.25, 0.25],
            "p_b": [0.125, 0.25, 0.25, 0.25],
            "p_y": [0.75, 0.75, 0.75, 0.75],
        },
    }
    hits = metrics.cfrt_per_seed(swap_scores(table), "a", ["a", "b"], label="y")
    assert hits["authors"].tolist() == [True, True, True, False]
    assert hits["strict"].tolist() == [True, False, False, False]
    # without the label clause (CheXpert), seed 1 counts again
    no_label = metrics.cfrt_per_seed(swap_scores(table), "a", ["a", "b"])
    assert no_label["strict"].tolist() == [True, True, False, False]


def test_cfrt_bezier_uses_frames_against_frame_zero() -> None:
    rows = []
    for seed, (a0, a_late, b0, b_late) in {
        0: (0.0, 0.5, 0.0, 0.25),
        1: (0.0, 0.25, 0.0, 0.5),
    }.items():
        for frame in range(50):
            late = frame >= 30
            rows.append(
                {
                    "seed": seed,
                    "kind": "bezier",
                    "k": -1,
                    "frame": frame,
                    "p_a": a_late if late else a0,
                    "p_b": b_late if late else b0,
                }
            )
    # frames 1..29 differ wildly: they must not enter the default F = 30..49
    scores = pd.DataFrame(rows)
    scores.loc[(scores["frame"] > 0) & (scores["frame"] < 30), "p_b"] = 1.0
    hits = metrics.cfrt_per_seed(scores, "a", ["a", "b"], version="bezier")
    assert hits["authors"].tolist() == [True, False]
    shift = metrics.shifts(scores, ["p_a"], "bezier")
    assert shift.loc[0, "p_a"] == 0.5


def test_missing_swap_image_is_named() -> None:
    scores = swap_scores(TIES)
    scores = scores[~((scores["seed"] == 2) & (scores["k"] == 10))]
    with pytest.raises(metrics.MetricInputError, match="seed 2: no swap image with k=10"):
        metrics.cfrt_per_seed(scores, "a", ["a", "b"])


def test_cosine_reference_is_one_and_hand_values() -> None:
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    z0 = np.array([2.0, 3.0])
    latents = {
        "0/neutral": z0,
        "0/k45": z0 + e1,
        "0/k25": z0 + e1 + e2,
        "0/k5": z0 - 3 * e1,
        "1/neutral": z0,
        "1/k45": z0 + e2,
        "1/k25": z0 + e2,
        "1/k5": z0 + e1,
    }
    cos = metrics.cosine_per_seed(latents)
    first = cos[cos["index"] == 1]
    assert (first["k"] == 45).all() and np.allclose(first["cos"], 1.0)
    seed0 = cos[cos["seed"] == 0].set_index("k")["cos"]
    assert seed0[25] == pytest.approx(1 / math.sqrt(2))
    assert seed0[5] == pytest.approx(-1.0)
    assert cos[cos["seed"] == 1].set_index("k")["cos"][5] == pytest.approx(0.0)


def test_bootstrap_interval_covers_mean_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 0.2, size=200)
    lo, hi = metrics.bootstrap_ci(x, n_boot=500, seed=7)
    assert lo < x.mean() < hi
    assert hi - lo < 0.1  # about 4 standard errors (0.2 / sqrt(200) = 0.014)
    assert metrics.bootstrap_ci(x, n_boot=500, seed=7) == (lo, hi)
    hits = np.array([1, 0, 1, 1, 0, 1, 1, 1], dtype=float)
    s = metrics.summarize(hits, n_boot=300, seed=0)
    assert s["value"] == 0.75 and s["ci_low"] <= 0.75 <= s["ci_high"] and s["n_seeds"] == 8
    assert metrics.bootstrap_ci([0.4], n_boot=100) == (0.4, 0.4)
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([], n_boot=100))


def test_binary_metrics_hand_values() -> None:
    m = metrics.binary_metrics([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    assert m["accuracy"] == 0.5
    assert m["f1"] == 0.5  # tp 1, fp 1, fn 1
    assert m["auroc"] == 0.75  # 3 of 4 positive-negative pairs ordered right
    assert math.isnan(metrics.binary_metrics([1, 1], [0.2, 0.9])["auroc"])


def test_frechet_distance_hand_values_and_bootstrap() -> None:
    assert metrics.frechet_distance(
        np.zeros(1), np.eye(1), np.zeros(1), np.eye(1)
    ) == pytest.approx(0.0, abs=1e-9)
    # 1-d: (2-0)^2 + 1 + 4 - 2*sqrt(1*4) = 5
    assert metrics.frechet_distance(
        np.array([2.0]), np.array([[1.0]]), np.zeros(1), np.array([[4.0]])
    ) == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    gen, real = rng.normal(0.5, 1.0, size=(60, 4)), rng.normal(0.0, 1.0, size=(80, 4))
    value = metrics.frechet_distance(*metrics.gaussian_stats(gen), *metrics.gaussian_stats(real))
    lo, hi = metrics.fid_bootstrap_ci(gen, real, n_boot=200, seed=0)
    assert lo <= value <= hi
    # the Gram form (fewer samples than dimensions) agrees with sqrtm on a full resample set
    few = rng.normal(size=(5, 8))
    lo_g, hi_g = metrics.fid_bootstrap_ci(few, rng.normal(size=(30, 8)), n_boot=5, seed=0)
    assert np.isfinite([lo_g, hi_g]).all() and lo_g <= hi_g


def test_lpips_identical_is_zero_random_backbone() -> None:
    import torch

    from medtraverse.evaluation.backbones import load_lpips

    model, label = load_lpips({"lpips_backbone": "random"})
    assert label == "random(seed=0)"
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    same = metrics.lpips_distances(model, a, a.clone())
    assert np.allclose(same, 0.0, atol=1e-7)
    assert (metrics.lpips_distances(model, a, b) > 0).all()
    # the random trunk is fixed by its seed
    again, _ = load_lpips({"lpips_backbone": "random"})
    assert np.array_equal(
        metrics.lpips_distances(again, a, b), metrics.lpips_distances(model, a, b)
    )


def test_lpips_alexnet_missing_stops_with_one_line(tmp_path) -> None:
    from medtraverse.evaluation.backbones import check_backbones, load_lpips

    params = {
        "lpips_backbone": "alex",
        "lpips_alexnet_path": str(tmp_path / "alexnet-owt-7be5be79.pth"),
    }
    with one_line_input_error("alexnet-owt-7be5be79.pth", "place"):
        check_backbones(params)
    with one_line_input_error("alexnet-owt-7be5be79.pth"):
        load_lpips(params)
    lines = check_backbones(
        {"lpips_backbone": "random", "inception_weights": str(tmp_path / "inc.pth")}
    )
    assert any("not comparable" in line for line in lines)
    assert any(f"skipped: no Inception weights at {tmp_path / 'inc.pth'}" in line for line in lines)


def test_lpips_alexnet_trunk_loads_from_file(tmp_path) -> None:
    import torch
    import torchvision

    from medtraverse.evaluation.backbones import load_lpips

    torch.manual_seed(3)
    alex = torchvision.models.alexnet(weights=None)
    state = {k: v for k, v in alex.state_dict().items() if k.startswith("features.")}
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    model, label = load_lpips({"lpips_backbone": "alex", "lpips_alexnet_path": str(path)})
    assert label == "alex"
    assert torch.equal(model.net.slice3._modules["6"].weight, state["features.6.weight"])
    assert torch.equal(model.net.slice5._modules["10"].bias, state["features.10.bias"])


def test_backbones_module_entry_point(tmp_path, capsys) -> None:
    import json

    from medtraverse.evaluation.backbones import main

    missing = str(tmp_path / "alexnet-owt-7be5be79.pth")
    proc = run_main(capsys, "--params", json.dumps({"lpips_alexnet_path": missing}), main=main)
    line = assert_one_line_error(proc, missing, trees={tmp_path: {}})
    assert proc.stderr == line + "\n"
    assert main(["--params", json.dumps({"lpips_backbone": "random"})]) == 0
    assert "FID: skipped" in capsys.readouterr().out
