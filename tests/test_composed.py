"""Composed trajectories (several targets) and the choice of k, on hand-computed tables."""

from __future__ import annotations

import pandas as pd
import pytest

from medtraverse.evaluation.metrics import cfrt_by_k, cfrt_per_seed, recommend_k

# per seed: shifts of (pe, sd, x), the same at every swap step; every neutral score is 0.2
SHIFTS = {
    0: (0.5, 0.4, 0.1),  # both targets above x: hit
    1: (0.5, 0.05, 0.1),  # sd below x: no hit (with x); both > 0: hit (without x)
    2: (0.3, 0.0, 0.3),  # pe ties x, sd = 0: no hit either way
    3: (0.6, 0.45, 0.35),  # hit, but x's call flips (0.2 -> 0.55): not in the strict variant
}


def scores(
    shifts: dict[int, tuple[float, ...]], steps: tuple[int, ...] = (5, 10, 15)
) -> pd.DataFrame:
    rows = []
    for seed, (pe, sd, x) in shifts.items():
        rows.append(
            {
                "seed": seed,
                "kind": "neutral",
                "k": -1,
                "frame": -1,
                "p_pe": 0.2,
                "p_sd": 0.2,
                "p_x": 0.2,
            }
        )
        for k in steps:
            rows.append(
                {
                    "seed": seed,
                    "kind": "swap",
                    "k": k,
                    "frame": -1,
                    "p_pe": 0.2 + pe,
                    "p_sd": 0.2 + sd,
                    "p_x": 0.2 + x,
                }
            )
    return pd.DataFrame(rows)


def test_composed_target_needs_every_target_above_every_other() -> None:
    got = cfrt_per_seed(scores(SHIFTS), ["pe", "sd"], ["pe", "sd", "x"])
    assert got["authors"].tolist() == [True, False, False, True]
    assert got["strict"].tolist() == [True, False, False, False]
    assert got["shift_target"].round(6).tolist() == [0.4, 0.05, 0.0, 0.45]  # the smaller target
    assert got["shift_max_other"].round(6).tolist() == [0.1, 0.1, 0.3, 0.35]


def test_composed_target_without_other_attribute_needs_each_shift_positive() -> None:
    got = cfrt_per_seed(scores(SHIFTS), ["pe", "sd"], ["pe", "sd"])
    assert got["authors"].tolist() == [True, True, False, True]


def test_single_target_is_unchanged() -> None:
    one = cfrt_per_seed(scores(SHIFTS), "pe", ["pe", "sd", "x"])
    listed = cfrt_per_seed(scores(SHIFTS), ["pe"], ["pe", "sd", "x"])
    assert one["authors"].tolist() == [True, True, False, True]
    pd.testing.assert_frame_equal(one, listed)


def test_recommended_k_is_the_latest_whose_lower_bound_reaches_the_level() -> None:
    table = pd.DataFrame({"k": [5, 10, 15], "cfrt_authors_ci_low": [0.9, 0.85, 0.5]})
    assert recommend_k(table) == 10
    table["cfrt_authors_ci_low"] = [0.9, 0.5, 0.81]
    assert recommend_k(table) == 15  # the latest that reaches it, gaps allowed
    assert recommend_k(table, level=0.95) is None
    table["cfrt_strict_ci_low"] = [0.8, 0.1, 0.1]
    assert recommend_k(table, variant="strict") == 5


def test_cfrt_and_lpips_per_k_with_intervals() -> None:
    # 10 seeds: every seed flips at k = 5 and 10, only the even seeds at k = 15
    rows = []
    for seed in range(10):
        rows.append({"seed": seed, "kind": "neutral", "k": -1, "p_pe": 0.2, "p_sd": 0.2})
        for k, lp in ((5, 0.4), (10, 0.3), (15, 0.1)):
            up = 0.5 if (k < 15 or seed % 2 == 0) else -0.1
            rows.append(
                {
                    "seed": seed,
                    "kind": "swap",
                    "k": k,
                    "p_pe": 0.2 + up,
                    "p_sd": 0.2,
                    "lpips": lp + seed / 100,
                }
            )
    table = cfrt_by_k(
        pd.DataFrame(rows).assign(frame=-1), "pe", ["pe", "sd"], [5, 10, 15], n_boot=500
    )
    assert table["k"].tolist() == [5, 10, 15]
    assert table["cfrt_authors"].tolist() == [1.0, 1.0, 0.5]
    assert (
        table["cfrt_authors_ci_low"].iloc[0] == 1.0 and table["cfrt_authors_ci_low"].iloc[2] < 0.5
    )
    assert table["lpips"].round(6).tolist() == [0.445, 0.345, 0.145]
    assert (table["lpips_ci_low"] <= table["lpips"]).all() and (
        table["lpips"] <= table["lpips_ci_high"]
    ).all()
    assert recommend_k(table, 0.8) == 10
    assert recommend_k(table, 0.1) == 15


def test_missing_target_column_is_named() -> None:
    with pytest.raises(ValueError, match="p_ink"):
        cfrt_per_seed(scores(SHIFTS), ["pe", "ink"], ["pe", "sd"])


def test_aggregate_choose_k_rows_and_recommendation() -> None:
    from medtraverse.report.aggregate import check_params, choose_k_rows

    rows = []
    for seed in range(10):
        rows.append(
            {"seed": seed, "kind": "neutral", "k": -1, "frame": -1, "p_pe": 0.2, "p_sd": 0.2}
        )
        for k in (5, 10, 15):
            up = 0.5 if (k < 15 or seed % 2 == 0) else -0.1
            rows.append(
                {"seed": seed, "kind": "swap", "k": k, "frame": -1, "p_pe": 0.2 + up, "p_sd": 0.2}
            )
    data = pd.DataFrame(rows)
    lp = data[["seed", "kind", "k", "frame"]].assign(lpips=data["k"].clip(lower=0) / 100)
    p = check_params({"n_boot": 200})
    got = pd.DataFrame(choose_k_rows(data, lp, "chexpert", "pe", "pe", p, ["pe", "sd"]))
    assert got["k"].tolist() == [5, 10, 15] and got["cfrt_authors"].tolist() == [1.0, 1.0, 0.5]
    assert got["lpips"].round(6).tolist() == [0.05, 0.10, 0.15]
    assert (got["recommended_k"] == "10").all() and (got["k_level"] == 0.8).all()
    strict = pd.DataFrame(
        choose_k_rows(data, lp, "chexpert", "pe", "pe", check_params({"k_level": 1.0}), ["pe"])
    )
    assert (strict["recommended_k"] == "10").all()
    never = data.assign(p_pe=0.1)
    none = pd.DataFrame(choose_k_rows(never, lp, "chexpert", "pe", "pe", p, ["pe", "sd"]))
    assert (none["recommended_k"] == "none").all()


def test_aggregate_names_a_composed_trajectory() -> None:
    from medtraverse.report.aggregate import cfrt_rows, check_params

    p = check_params(
        {"n_boot": 100, "trajectories": {"pe_sd": {"target": ["pe", "sd"]}, "pe": "pe"}}
    )
    assert p["trajectories"] == {"pe_sd": ("pe", "sd"), "pe": "pe"}
    data = scores(SHIFTS)
    for version in ("swap",):
        rows, per_seed = cfrt_rows(
            data, "chexpert", "pe_sd", ("pe", "sd"), {**p, "bezier_frames": []}, ["pe", "sd", "x"]
        )
        got = {(r["version"], r["variant"]): r["value"] for r in rows}
        assert got[(version, "authors")] == 0.5 and got[(version, "strict")] == 0.25
        assert {r["target"] for r in rows} == {"pe+sd"} and rows[0]["others"] == "x"
    with pytest.raises(Exception, match="params.trajectories.bad"):
        check_params({"trajectories": {"bad": {"target": ["pe", 3]}}})
