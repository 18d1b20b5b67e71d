"""ISIC at the paper's scale: pseudo-labels for every MEL/NV image (annotate-artifacts), the two
artifact table formats, lesion-level splits (twin and the real ISIC 2019 tables), and the
prepare stage's one-line errors on bad ISIC input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtraverse.core.formats import ISIC_ARTIFACTS
from medtraverse.data.prepare import prepare_isic, split_groups
from medtraverse.data.prepare.isic import (
    MERGED_COLUMNS,
    MERGED_FILE,
    IsicParams,
    load,
    match_key,
    table_format,
    write_merged,
)
from medtraverse.data.synth import synthesize
from tests.oneline import assert_one_line_error, run_cli

ARTIFACTS = list(ISIC_ARTIFACTS)
MERGED_HEADER = (
    ",image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK,Unnamed: 0,dark_corner,hair,gel_border,"
    "gel_bubble,ruler,ink,patches,vasc,label,label_string"
)
REAL = Path(__file__).resolve().parents[2] / "shared" / "real-tables" / "isic2019"
REAL_GT = REAL / "ISIC_2019_Training_GroundTruth.csv"
REAL_META = REAL / "ISIC_2019_Training_Metadata.csv"
RELEASE = {
    "annotated_fraction": 0.4,
    "lesion_repeat_prob": 0.5,
    "downsampled_fraction": 0.15,
    "artifact_scale": 1.0,
}


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("isic") / "raw"
    return synthesize("isic", out, n=200, size=32, seed=3, **RELEASE)


def _lesions_cross(manifest: pd.DataFrame, lesion_of: dict[str, str]) -> int:
    ids = manifest["image_id"].map(lesion_of).fillna("")
    named = manifest[ids != ""].assign(lesion=ids[ids != ""])
    return int((named.groupby("lesion")["split"].nunique() > 1).sum())


# --- the twin looks like the real release ----------------------------------------------------


def test_twin_has_lesions_downsampled_ids_and_a_subset_of_annotations(twin: Path) -> None:
    gt = pd.read_csv(twin / "ISIC_2019_Training_GroundTruth.csv")
    meta = pd.read_csv(twin / "ISIC_2019_Training_Metadata.csv", keep_default_na=False)
    assert list(meta.columns) == ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
    assert meta["image"].tolist() == gt["image"].tolist()
    sizes = meta.loc[meta["lesion_id"] != "", "lesion_id"].value_counts()
    assert (sizes >= 2).sum() >= 10 and (meta["lesion_id"] == "").any()
    # one lesion, one diagnosis
    merged = meta.merge(gt, on="image")
    named = merged[merged["lesion_id"] != ""]
    assert (named.groupby("lesion_id")["MEL"].nunique() == 1).all()
    down = gt["image"].str.endswith("_downsampled")
    assert 5 <= down.sum() <= 60
    for image in gt.loc[down, "image"].head(3):
        assert (twin / "ISIC_2019_Training_Input" / f"{image}.jpg").is_file()
    mel_nv = gt.loc[(gt["MEL"] == 1.0) | (gt["NV"] == 1.0), "image"]
    bias = pd.read_csv(twin / "isic_bias.csv", sep=";", index_col=0)
    assert bias["image"].str.match(r"^ISIC_\d{7}\.png$").all()  # 2018 ids, no suffix
    assert 0.25 * len(mel_nv) <= len(bias) <= 0.55 * len(mel_nv)
    assert set(bias["image"].map(match_key)) <= set(mel_nv.map(match_key))
    assert (twin / MERGED_FILE).read_text().splitlines()[0] == MERGED_HEADER
    table = pd.read_csv(twin / MERGED_FILE, index_col=0)
    assert table["image"].tolist() == mel_nv.tolist()
    assert table_format(twin / MERGED_FILE) == "merged"
    assert table_format(twin / "isic_bias.csv") == "bissoto"


# --- both table formats, lesion splits -------------------------------------------------------


def test_prepare_reads_bissoto_subset_and_merged_table_with_lesion_splits(
    twin: Path, tmp_path: Path
) -> None:
    params = {"resolution": 16}
    prepare_isic(twin, twin / "isic_bias.csv", tmp_path / "bissoto", params)
    prepare_isic(twin, twin / MERGED_FILE, tmp_path / "merged", params)
    truth = pd.read_parquet(twin / "factors.parquet").set_index("image_id")
    mel_nv = truth[truth["label"].isin(["MEL", "NV"])]
    bissoto = pd.read_parquet(tmp_path / "bissoto" / "manifest.parquet")
    merged = pd.read_parquet(tmp_path / "merged" / "manifest.parquet")
    assert sorted(bissoto["image_id"]) == sorted(mel_nv.index[mel_nv["in_bias_table"]])
    assert sorted(merged["image_id"]) == sorted(mel_nv.index)  # every MEL/NV image
    soft = mel_nv.loc[merged["image_id"], [f"{a}_soft" for a in ARTIFACTS]].to_numpy()
    assert (merged[ARTIFACTS].to_numpy() == (soft >= 0.9)).all()  # thresholded at 0.9
    lesion_of = dict(zip(truth.index, truth["lesion_id"], strict=True))
    for manifest in (bissoto, merged):
        assert _lesions_cross(manifest, lesion_of) == 0
    summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert summary["group_by"] == "lesions"
    groups = {s: summary["splits"][s]["groups"] for s in ("train", "val", "test")}
    images = {s: summary["splits"][s]["images"] for s in ("train", "val", "test")}
    assert all(0 < groups[s] < images[s] for s in ("train", "test"))
    text = (tmp_path / "merged" / "summary.txt").read_text()
    assert "lesions per split: train" in text


def test_without_metadata_images_are_their_own_groups(twin: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(twin, root)
    (root / "ISIC_2019_Training_Metadata.csv").unlink()
    summary = prepare_isic(root, root / MERGED_FILE, tmp_path / "prep", {"resolution": 16})
    assert summary["group_by"] == "images"
    assert summary["splits"]["train"]["groups"] == summary["splits"]["train"]["images"]


# --- annotate-artifacts ----------------------------------------------------------------------


def test_annotate_artifacts_scores_every_image_and_prepare_keeps_them(
    twin: Path, tmp_path: Path
) -> None:
    root = tmp_path / "raw"
    shutil.copytree(twin, root)
    gt = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    mel_nv = gt.loc[(gt["MEL"] == 1.0) | (gt["NV"] == 1.0), "image"].tolist()
    gone = mel_nv[-1]
    (root / "ISIC_2019_Training_Input" / f"{gone}.jpg").unlink()
    params = {
        "classifier": {
            "image_size": 32,
            "epochs": 1,
            "batch_size": 16,
            "max_steps_per_epoch": 2,
            "pretrained": "none",
            "device": "cpu",
        }
    }
    out = tmp_path / "artifacts"
    proc = run_cli(
        "annotate-artifacts",
        "--root",
        str(root),
        "--annotations",
        str(root / "isic_bias.csv"),
        "--out",
        str(out),
        "--params",
        json.dumps(params),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 without an image file skipped" in proc.stdout
    assert (out / MERGED_FILE).read_text().splitlines()[0] == MERGED_HEADER
    table = pd.read_csv(out / MERGED_FILE, index_col=0)
    assert table["image"].tolist() == [i for i in mel_nv if i != gone]
    assert table[ARTIFACTS].stack().between(0.0, 1.0).all()
    assert (table["label"] == (table["label_string"] == "MEL").astype(int)).all()
    auroc = pd.read_csv(out / "auroc.csv")
    assert auroc["attribute"].tolist() == ARTIFACTS and (auroc["n"] > 0).all()
    assert (out / "auroc.md").read_text().count("|") > 10
    assert (out / "classifier" / "model.safetensors").is_file()
    assert (out / "provenance.json").is_file()
    assert not list(tmp_path.glob(".artifacts.work-*"))  # the resized copies are gone

    summary = prepare_isic(
        root,
        out / MERGED_FILE,
        tmp_path / "prep",
        {"resolution": 16, "missing_images": "skip", "artifact_threshold": 0.9},
    )
    manifest = pd.read_parquet(tmp_path / "prep" / "manifest.parquet")
    assert sorted(manifest["image_id"]) == sorted(i for i in mel_nv if i != gone)
    # the one image without a file has no score: the only row without artifacts
    assert summary["dropped"]["missing_artifacts"] == 1
    scores = table.set_index("image").loc[manifest["image_id"], ARTIFACTS].to_numpy()
    assert (manifest[ARTIFACTS].to_numpy() == (scores >= 0.9)).all()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--annotations", ""], ["--annotations", "empty"]),
        (["--annotations", "nowhere.csv"], ["nowhere.csv", "file not found"]),
        (["--params", '{"holdout_fraction": 2}'], ["params.holdout_fraction"]),
        (["--params", '{"classifier": {"epochs": 0}}'], ["params.classifier.epochs"]),
    ],
)
def test_annotate_bad_input_is_one_line(
    twin: Path, tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    base = {"--annotations": str(twin / "isic_bias.csv"), "--params": "{}"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    out = tmp_path / "out"
    flat = [x for kv in base.items() for x in kv]
    proc = run_cli("annotate-artifacts", "--root", str(twin), "--out", str(out), *flat)
    assert_one_line_error(proc, *needles, untouched=[out])


# --- prepare's one-line errors on ISIC input -------------------------------------------------


def test_prepare_isic_bad_input_is_one_line(twin: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    common = ["prepare", "--dataset", "isic", "--root", str(twin), "--out", str(out)]
    table = str(twin / MERGED_FILE)
    proc = run_cli(*common, "--artifacts", "")
    assert_one_line_error(proc, "--artifacts", "empty", untouched=[out])
    proc = run_cli(*common, "--artifacts", table, "--params", '{"image_dir": "Images"}')
    assert_one_line_error(proc, "Images", "no such folder", "image_dir", untouched=[out])
    proc = run_cli(*common, "--artifacts", table, "--params", '{"metadata": "meta.csv"}')
    assert_one_line_error(proc, "meta.csv", "file not found", untouched=[out])
    proc = run_cli(*common, "--artifacts", table, "--params", '{"val_fraction": 0.001}')
    assert_one_line_error(proc, "params.val_fraction", "val split is empty", untouched=[out])


# --- the real ISIC 2019 tables ---------------------------------------------------------------

needs_real = pytest.mark.skipif(
    not (REAL_GT.is_file() and REAL_META.is_file()),
    reason=f"the real ISIC 2019 tables are not in {REAL} (../shared beside the repository)",
)


def _real_root(tmp_path: Path, every: int) -> tuple[Path, Path, list[str]]:
    """The real GT and metadata, a generated pseudo-label table for every MEL/NV image, and
    tiny image files for every ``every``-th MEL/NV image."""
    root = tmp_path / "isic2019"
    (root / "ISIC_2019_Training_Input").mkdir(parents=True)
    shutil.copy(REAL_GT, root)
    shutil.copy(REAL_META, root)
    gt = pd.read_csv(REAL_GT)
    mel_nv = gt[(gt["MEL"] == 1.0) | (gt["NV"] == 1.0)]
    rng = np.random.default_rng(0)
    records = [
        {
            "image": row.image,
            **{c: float(getattr(row, c)) for c in gt.columns[1:]},
            **dict(zip(ARTIFACTS, rng.uniform(0, 1, len(ARTIFACTS)), strict=True)),
            "label_string": "MEL" if row.MEL == 1.0 else "NV",
        }
        for row in mel_nv.itertuples()
    ]
    write_merged(tmp_path / MERGED_FILE, records)
    pixels = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    with_file = mel_nv["image"].tolist()[::every]
    for image in with_file:
        pixels.save(root / "ISIC_2019_Training_Input" / f"{image}.jpg")
    return root, tmp_path / MERGED_FILE, with_file


@needs_real
def test_real_tables_pseudo_labels_keep_every_mel_nv_and_no_lesion_spans_splits(
    tmp_path: Path,
) -> None:
    root, table, _ = _real_root(tmp_path, every=10**9)
    assert table.read_text().splitlines()[0] == MERGED_HEADER
    assert list(pd.read_csv(table, index_col=0).columns) == list(MERGED_COLUMNS)
    rows, inputs, notes = load(root, table, IsicParams())
    gt = pd.read_csv(REAL_GT)
    assert len(rows) == int(((gt["MEL"] == 1.0) | (gt["NV"] == 1.0)).sum())
    assert notes["dropped_missing_artifacts"] == 0 and notes["group_by"] == "lesions"
    assert root / "ISIC_2019_Training_Metadata.csv" in inputs
    assignment = split_groups(rows["group"], rows["stratum"], 0.15, 0.15, 42)
    rows["split"] = rows["group"].map(assignment)
    meta = pd.read_csv(REAL_META, keep_default_na=False)
    lesion_of = dict(zip(meta["image"], meta["lesion_id"], strict=True))
    assert _lesions_cross(rows, lesion_of) == 0
    # by image, the same rows put lesions in two splits: the point of grouping
    by_image = split_groups(rows["image_id"], rows["label"], 0.15, 0.15, 42)
    assert _lesions_cross(rows.assign(split=rows["image_id"].map(by_image)), lesion_of) > 100
    share = (rows["split"] == "test").mean()
    assert 0.12 < share < 0.18


@needs_real
def test_real_tables_prepare_keeps_every_mel_nv_image_with_a_file(tmp_path: Path) -> None:
    root, table, with_file = _real_root(tmp_path, every=12)
    summary = prepare_isic(
        root, table, tmp_path / "prep", {"resolution": 8, "missing_images": "skip"}
    )
    manifest = pd.read_parquet(tmp_path / "prep" / "manifest.parquet")
    assert sorted(manifest["image_id"]) == sorted(with_file)
    meta = pd.read_csv(REAL_META, keep_default_na=False)
    lesion_of = dict(zip(meta["image"], meta["lesion_id"], strict=True))
    assert _lesions_cross(manifest, lesion_of) == 0
    assert summary["group_by"] == "lesions"
    assert "lesions per split" in (tmp_path / "prep" / "summary.txt").read_text()


# --- the workflow: when the pseudo-label stage runs ------------------------------------------


def test_workflow_plans_annotation_for_bissoto_tables_only(twin: Path, tmp_path: Path) -> None:
    import yaml

    from tests.workflow_utils import ROOT, dry_run

    demo_isic = dry_run(ROOT / "config/demo-isic.yaml", tmp_path / "demo-isic")
    assert demo_isic["annotate_artifacts"] == 1 and demo_isic["prepare_dataset"] == 1
    assert "annotate_artifacts" not in dry_run(ROOT / "config/demo.yaml", tmp_path / "demo")
    # the paper config with the authors' merged table: read as is, no annotation
    paper = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    paper["datasets"]["isic"]["source"].update(root=str(twin), artifacts=str(twin / MERGED_FILE))
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump(paper))
    assert "annotate_artifacts" not in dry_run(merged, tmp_path / "merged")
    paper["datasets"]["isic"]["source"]["artifacts"] = str(twin / "isic_bias.csv")
    bissoto = tmp_path / "bissoto.yaml"
    bissoto.write_text(yaml.safe_dump(paper))
    assert dry_run(bissoto, tmp_path / "bissoto")["annotate_artifacts"] == 1
