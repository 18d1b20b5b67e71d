"""The shortcut study: confounded splits on CheXpert's real table format, counterfactual arms,
and the per-group metrics."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtraverse.core.formats import CHEXPERT_COLUMNS, CHEXPERT_LABELS
from medtraverse.core.params import parse_params
from medtraverse.data.shortcut import (
    GROUPS,
    SplitParams,
    _needs,
    assign_groups,
    make_splits,
    shortcut_splits,
)
from tests.fakedata import chexpert_row, noise_pixels, write_shard
from tests.oneline import assert_one_line_error, one_line_input_error, run_cli

PE, SD = "Pleural_Effusion", "Support_Devices"


def _table(patients: int = 900, seed: int = 0) -> list[dict[str, str]]:
    """A CheXpert table (19 columns, 1.0/0.0/-1.0/blank): 1-3 studies per patient, a lateral
    view in some; PE and SD drawn with every value; No Finding 1.0 on some PE-positive rows (the
    construction zeroes PE there)."""
    rng = np.random.default_rng(seed)
    values, probs = ["1.0", "0.0", "-1.0", ""], [0.45, 0.2, 0.05, 0.3]
    rows = []
    for p in range(1, patients + 1):
        for study in range(1, 1 + int(rng.integers(1, 4))):
            labels = {PE: str(rng.choice(values, p=probs)), SD: str(rng.choice(values, p=probs))}
            if rng.random() < 0.05:
                labels["No_Finding"] = "1.0"
            path = f"CheXpert-v1.0-small/train/patient{p:05d}/study{study}/view1_frontal.jpg"
            rows.append(chexpert_row(path, "Frontal", **labels))
            if rng.random() < 0.2:
                rows.append(chexpert_row(path.replace("view1_frontal", "view2_lateral"), "Lateral"))
    return rows


def _read(rows: list[dict[str, str]], tmp_path: Path) -> pd.DataFrame:
    """Written as a real CSV and read back as text, as the stage reads it."""
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CHEXPERT_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_table_has_the_real_format(tmp_path: Path) -> None:
    table = _read(_table(50), tmp_path)
    assert list(table.columns) == list(CHEXPERT_COLUMNS) and len(table.columns) == 19
    assert set(table["Pleural Effusion"]) == {"1.0", "0.0", "-1.0", ""}


def test_groups_follow_the_authors_rules(tmp_path: Path) -> None:
    table = _read(_table(200), tmp_path)
    got = assign_groups(table, SplitParams())
    pe, sd = table["Pleural Effusion"], table["Support Devices"]
    lateral = table["Frontal/Lateral"] == "Lateral"
    no_finding = table["No Finding"] == "1.0"
    uncertain = ((pe == "-1.0") & ~no_finding) | (sd == "-1.0")
    assert got["group"][lateral | uncertain].isna().all()
    kept = ~(lateral | uncertain)
    assert got["group"][kept].notna().all()
    # PE set to 0 where No Finding is 1; blank counts as 0
    assert (got["a"][no_finding] == 0).all()
    want_a = ((pe == "1.0") & ~no_finding).astype(int)
    assert (got["a"][kept] == want_a[kept]).all()
    both = kept & (want_a == 1) & (sd == "1.0")
    assert (got["group"][both] == "both").all()
    neither = kept & (want_a == 0) & (sd != "1.0")
    assert (got["group"][neither] == "neither").all()


def test_authors_counts_are_reproducible_from_config() -> None:
    params = parse_params(SplitParams, {"majority_per_group": 48917, "balanced": False})
    need = _needs(params.majority_per_group, params)
    assert need["train"] == {"both": 39133, "a_only": 3912, "b_only": 3912, "neither": 39133}
    assert need["val"] == {"both": 9784, "a_only": 979, "b_only": 979, "neither": 9784}
    assert sum(need["train"].values()) == 86090
    assert sum(need["val"].values()) == 21526


@pytest.mark.parametrize("ratio", [10.0, 4.0])
def test_splits_counts_ratios_and_patient_disjointness(tmp_path: Path, ratio: float) -> None:
    table = _read(_table(), tmp_path)
    params = parse_params(SplitParams, {"ratio": ratio, "test_per_group": 40, "seed": 3})
    rows = assign_groups(table, params)
    splits = make_splits(rows, params)
    counts = {k: v["group"].value_counts().to_dict() for k, v in splits.items()}
    assert counts["balanced_test"] == dict.fromkeys(GROUPS, 40)
    assert counts["imbalanced_test"] == {"both": 40, "neither": 40, "a_only": 10, "b_only": 10}
    assert set(splits["imbalanced_test"]["Path"]) <= set(splits["balanced_test"]["Path"])
    n = counts["train"]["both"] + counts["val"]["both"]
    m = counts["train"]["a_only"] + counts["val"]["a_only"]
    assert n > 100  # as many as fit
    assert m == math.floor(n / ratio)
    for g in GROUPS:
        size = n if g in ("both", "neither") else m
        assert counts["train"][g] == math.floor(0.8 * size)
        assert counts["val"][g] == size - math.floor(0.8 * size)
    for split in ("balanced_train", "balanced_val"):
        per = sum(counts[split.removeprefix("balanced_")].values()) // 4
        assert counts[split] == dict.fromkeys(GROUPS, per)
    patients = {k: set(v["patient_id"]) for k, v in splits.items()}
    tests = patients["balanced_test"] | patients["imbalanced_test"]
    for a, b in [("train", "val"), ("balanced_train", "balanced_val")]:
        assert not patients[a] & patients[b]
    for split in ("train", "val", "balanced_train", "balanced_val"):
        assert not patients[split] & tests
    # every row appears once per split, and only grouped rows are used
    for df in splits.values():
        assert not df["Path"].duplicated().any() and df["group"].notna().all()
    # same seed, same splits; another seed, others
    again = make_splits(rows, params)
    assert all(again[k]["Path"].tolist() == splits[k]["Path"].tolist() for k in splits)
    other = make_splits(rows, parse_params(SplitParams, {**vars(params), "seed": 4}))
    assert other["train"]["Path"].tolist() != splits["train"]["Path"].tolist()


def test_fixed_majority_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    table = _read(_table(100), tmp_path)
    params = parse_params(SplitParams, {"test_per_group": 5, "majority_per_group": 10**6})
    with one_line_input_error("majority_per_group: 1000000 does not fit"):
        make_splits(assign_groups(table, params), params)


def _stage_inputs(tmp_path: Path, rows: list[dict[str, str]]) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CHEXPERT_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    prep = tmp_path / "prepared"
    prep.mkdir()
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
    manifest = pd.DataFrame(
        {
            "image_id": [r["Path"].replace("/", "_") for r in frontal],
            "path": [f"images/{i}.png" for i in range(len(frontal))],
            "source_path": [r["Path"] for r in frontal],
            "split": "train",
            "prompt": "x",
            "patient_id": "ignored",
        }
    )
    manifest.to_parquet(prep / "manifest.parquet", index=False)
    return prep / "manifest.parquet", raw / "train.csv"


def test_stage_writes_the_splits_and_summary(tmp_path: Path) -> None:
    manifest, table = _stage_inputs(tmp_path, _table(400))
    out = tmp_path / "splits"
    summary = shortcut_splits(manifest, [table], out, {"test_per_group": 20})
    for name in ("train", "val", "balanced_test", "imbalanced_test", "balanced_train"):
        df = pd.read_parquet(out / f"{name}.parquet")
        assert {"path", "group", "a", "b", "pleural_effusion", "support_devices"} <= set(df)
        assert df["patient_id"].str.startswith("patient").all()
    for suffix in ("csv", "md", "tex"):
        assert (out / f"summary.{suffix}").is_file()
    assert (out / "provenance.json").is_file()
    row = summary.set_index("split").loc["balanced_test"]
    assert [row[g] for g in GROUPS] == [20] * 4


def test_bad_label_value_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    rows = _table(60)
    rows[3]["Support Devices"] = "2.0"
    manifest, table = _stage_inputs(tmp_path, rows)
    out = tmp_path / "splits"
    proc = run_cli(
        "shortcut-splits", "--manifest", str(manifest), "--table", str(table), "--out", str(out)
    )
    assert_one_line_error(proc, "row 5", "Support Devices", "'2.0'", untouched=[out])


def test_unknown_attribute_is_one_line(tmp_path: Path) -> None:
    manifest, table = _stage_inputs(tmp_path, _table(20))
    out = tmp_path / "splits"
    proc = run_cli(
        "shortcut-splits",
        *("--manifest", str(manifest), "--table", str(table), "--out", str(out)),
        *("--params", '{"a": "Pleural Effusions"}'),
    )
    assert_one_line_error(proc, "shortcut.splits.a", "Pleural Effusions", untouched=[out])
    assert "Pleural Effusion" in CHEXPERT_LABELS


def test_twin_confound_option_correlates_the_pair_and_keeps_the_default_twin() -> None:
    from medtraverse.data.synth.chexpert import sample_labels

    def draws(confound: float) -> list[dict[str, float]]:
        rng = np.random.default_rng(0)
        return [sample_labels(rng, False, confound=confound) for _ in range(3000)]

    def agreement(labels: list[dict[str, float]]) -> float:
        same = [(d["Pleural Effusion"] == 1.0) == (d["Support Devices"] == 1.0) for d in labels]
        return float(np.mean(same))

    rng = np.random.default_rng(0)
    default = [sample_labels(rng, False) for _ in range(3000)]
    same = [
        all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
        for a, b in zip(draws(0.0), default, strict=True)
    ]
    assert all(same)  # confound 0: not one extra draw, the default twin unchanged
    assert agreement(draws(0.6)) > agreement(default) + 0.2
    for d in draws(1.0):  # No Finding stays consistent with the copied label
        positive = any(v == 1.0 for k, v in d.items() if k != "No Finding")
        assert not (positive and d["No Finding"] == 1.0)


def test_group_metrics_see_a_shortcut_and_the_verdict_is_measured() -> None:
    from medtraverse.evaluation.shortcut import group_metrics
    from medtraverse.report.shortcut import ReportParams, evaluate

    groups = np.repeat(np.array(GROUPS), 50)
    a = np.isin(groups, ["both", "a_only"]).astype(int)
    b = np.isin(groups, ["both", "b_only"]).astype(int)
    shortcut = b.astype(float)  # calls A from B: right on both/neither, wrong on mixed
    m = group_metrics(a, shortcut, groups, 0.5)
    assert m["acc_both"] == m["acc_neither"] == 1.0 and m["acc_a_only"] == 0.0
    assert m["worst_group"] == 0.0 and m["majority"] == 1.0 and m["gap"] == -1.0
    assert m["accuracy"] == 0.5
    test = pd.DataFrame({"group": groups, "pleural_effusion": a, "support_devices": b})
    probs = {
        "confounded": {"balanced_test": np.stack([shortcut, b], 1)},
        "augmented": {"balanced_test": np.stack([a.astype(float), b], 1)},
    }
    cols = ("pleural_effusion", "support_devices")
    long, verdict = evaluate({"balanced_test": test}, probs, cols, ReportParams(n_boot=50))
    row = verdict.set_index("attribute").loc["pleural_effusion"]
    assert row["(b) - (a)"] == 1.0 and row["verdict"] == "closes"
    assert verdict.set_index("attribute").loc["support_devices", "verdict"] == "no clear change"
    gap = long[(long["arm"] == "confounded") & (long["metric"] == "gap")]
    assert gap["ci_low"].min() <= -1.0 + 1e-9


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _shard(root: Path, trajectory: str, seeds: range, prompt: str) -> Path:
    """A counterfactual shard (fakedata's one fake of the contract): neutral, k=5, k=10."""

    def pixels(seed: int, kind: str, k: int, frame: int) -> np.ndarray:
        return noise_pixels(seed * 100 + k + 1, grey=True)

    write_shard(root, seeds, (5, 10), 0, pixels, prompt=prompt, trajectory=trajectory)
    return root


def test_arms_share_the_test_and_add_counterfactuals_with_labels_from_the_prompt(
    tmp_path: Path,
) -> None:
    from medtraverse.evaluation.classify import read_manifest
    from medtraverse.evaluation.shortcut import build_arm

    manifest, table = _stage_inputs(tmp_path, _table(300))
    for i in range(len(pd.read_parquet(manifest))):
        _png(manifest.parent / f"images/{i}.png", i)
    splits = tmp_path / "splits"
    shortcut_splits(manifest, [table], splits, {"test_per_group": 10})
    shards = [
        _shard(tmp_path / "cf_a", "a_only", range(8), "Chest X-ray showing Pleural Effusion"),
        _shard(tmp_path / "cf_b", "b_only", range(8), "Chest X-ray showing Support Devices"),
    ]
    params = {"per_group": 5, "swap_step": 10, "truth_detector": "chexpert"}
    arms = {}
    for arm in ("confounded", "augmented", "balanced"):
        out = tmp_path / arm
        summary = build_arm(splits, manifest.parent, arm, out, params, counterfactuals=shards)
        df = read_manifest(out / "manifest.parquet", ["pleural_effusion", "support_devices"])
        arms[arm] = df
        assert (out / "provenance.json").is_file()
    conf, aug, bal = arms["confounded"], arms["augmented"], arms["balanced"]
    test_ids = [set(d.loc[d["split"] == "test", "image_id"]) for d in (conf, aug, bal)]
    assert test_ids[0] == test_ids[1] == test_ids[2] and len(test_ids[0]) == 40
    cf = aug[aug["source"] == "counterfactual"]
    assert len(cf) == 10 and (cf["split"] == "train").all()
    a_only = cf[cf["group"] == "a_only"]
    assert (a_only["pleural_effusion"] == 1).all() and (a_only["support_devices"] == 0).all()
    b_only = cf[cf["group"] == "b_only"]
    assert (b_only["pleural_effusion"] == 0).all() and (b_only["support_devices"] == 1).all()
    real = aug[aug["source"] == "real"]
    assert real["image_id"].tolist() == conf["image_id"].tolist()
    n_train = (conf["split"] == "train").sum()
    assert abs((bal["split"] == "train").sum() - n_train) <= 3  # same budget, a quarter a group
    assert set(summary) >= {"arm", "rows"}
    aug_summary = build_arm(
        splits, manifest.parent, "augmented", tmp_path / "again", params, counterfactuals=shards
    )
    assert {"truth_a_only", "truth_b_only"} <= set(aug_summary)
    only = tmp_path / "cf_only"
    build_arm(splits, manifest.parent, "counterfactual", only, params, counterfactuals=shards)
    df = pd.read_parquet(only / "manifest.parquet")
    assert (df.loc[df["split"] == "train", "source"] == "counterfactual").all()
    assert (df.loc[df["split"] != "train", "source"] == "real").all()
    with pytest.raises(Exception, match="per_group"):
        build_arm(
            splits,
            manifest.parent,
            "augmented",
            tmp_path / "x",
            {"per_group": 9},
            counterfactuals=shards,
        )
    assert not (tmp_path / "x").exists()


def test_fast_group_metrics_equal_the_shared_binary_metrics() -> None:
    from medtraverse.evaluation.metrics import binary_metrics
    from medtraverse.evaluation.shortcut import group_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1), 2)  # ties included
    groups = rng.choice(np.array(GROUPS), 300)
    fast, ref = group_metrics(y, p, groups, 0.5), binary_metrics(y, p, 0.5)
    for key in ("accuracy", "f1", "auroc"):
        assert fast[key] == pytest.approx(ref[key], abs=1e-12)
    assert math.isnan(group_metrics(np.ones(4, int), p[:4], groups[:4], 0.5)["auroc"])


def test_workflow_plans_the_study_and_reruns_follow_its_config(tmp_path: Path) -> None:
    import yaml

    from tests.workflow_utils import ROOT, dry_run, snakemake

    demo = ROOT / "config/shortcut-demo.yaml"
    jobs = dry_run(demo, tmp_path, "--", "shortcut_study")
    config = yaml.safe_load(demo.read_text())
    arms = len(config["shortcut"]["arms"])
    assert jobs["shortcut_splits"] == 1 and jobs["shortcut_report"] == 1
    assert jobs["shortcut_counterfactuals"] == 2  # A without B, B without A
    assert jobs["shortcut_arm"] == arms and jobs["shortcut_train"] == arms
    assert "traverse_shard" not in jobs and "score_shard" not in jobs
    # the real-only arms get no counterfactual settings: filter or swap step leave them alone
    proc = snakemake(
        "-n", "-p", "--configfile", str(demo), "--", "shortcut_study", workdir=tmp_path
    )
    params = dict(re.findall(r"--arm (\w+) .*?--params '([^']*)'", proc.stdout))
    assert set(params) == set(config["shortcut"]["arms"]), proc.stdout[-2000:]
    assert json.loads(params["confounded"]) == json.loads(params["balanced"]) == {"seed": 0}
    assert json.loads(params["augmented"])["filter"] is False
    # without a shortcut section the rules are not even loaded
    plain = {k: v for k, v in config.items() if k != "shortcut"}
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    assert not any(k.startswith("shortcut") for k in dry_run(tmp_path / "plain.yaml", tmp_path))


def test_filter_keeps_only_counterfactuals_the_classifier_calls_as_intended(
    tmp_path: Path,
) -> None:
    from medtraverse.evaluation.shortcut import filter_calls

    files = []
    for i in range(4):
        _png(tmp_path / f"{i}.png", i + 1)
        files.append(tmp_path / f"{i}.png")
    rows = pd.DataFrame({"file": files, "group": ["a_only", "a_only", "b_only", "b_only"]})

    class Calls:  # a classifier's interface: attributes, image_size, predict_proba
        attributes = ["support_devices", "pleural_effusion", "cardiomegaly"]
        image_size = 32

        def predict_proba(self, images: list) -> np.ndarray:
            assert len(images) == 4 and images[0].shape == (32, 32, 3)
            # rows: A without B (kept), A with B (dropped), B without A (kept), B only but
            # A called too (dropped); cardiomegaly is not part of the study and is ignored
            return np.array([[0.1, 0.9, 0.9], [0.8, 0.9, 0.1], [0.7, 0.2, 0.9], [0.9, 0.6, 0.0]])

    keep = filter_calls(rows, [Calls()], ("pleural_effusion", "support_devices"), 0.5)
    assert keep.tolist() == [True, False, True, False]


def test_stage_refuses_a_folder_it_did_not_write_and_replaces_its_own(tmp_path: Path) -> None:
    manifest, table = _stage_inputs(tmp_path, _table(200))
    out = tmp_path / "splits"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ("shortcut-splits", "--manifest", str(manifest), "--table", str(table))
    proc = run_cli(*args, "--out", str(out), "--params", '{"test_per_group": 5}')
    assert_one_line_error(proc, str(out), before={out / "notes.txt": b"mine"})
    fresh = tmp_path / "fresh"
    for _ in range(2):  # a rerun replaces the stage's own earlier output
        proc = run_cli(*args, "--out", str(fresh), "--params", '{"test_per_group": 5}')
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (fresh / "train.parquet").is_file()
