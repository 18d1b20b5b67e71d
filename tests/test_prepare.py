"""``medtraverse prepare``: manifests, splits, prompts and one-line failures on tiny fake data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from medtraverse.cli import main
from tests import fakedata
from tests.oneline import assert_one_line_error, run_main, tree

LABEL_COLUMNS = [name.lower().replace(" ", "_") for name in fakedata.CHEXPERT_LABELS]
ARTIFACTS = fakedata.ARTIFACTS
NORMAL = "Normal chest X-ray with no significant findings"
NV = "a dermoscopic image with melanocytic nevus (NV)"
MEL = "a dermoscopic image with melanoma (MEL)"


def run(args: list[str], params: dict | None = None) -> int:
    argv = ["prepare", *map(str, args), "--workers", "1"]
    if params is not None:
        argv += ["--params", json.dumps(params)]
    return main(argv)


def prep_chexpert(root: Path, out: Path, **params: object) -> pd.DataFrame:
    params = {"resolution": 16, **params}
    assert run(["--dataset", "chexpert", "--root", root, "--out", out], params) == 0
    return pd.read_parquet(out / "manifest.parquet")


def prep_isic(root: Path, artifacts: Path, out: Path, **params: object) -> pd.DataFrame:
    params = {"resolution": 16, **params}
    args = ["--dataset", "isic", "--root", root, "--artifacts", artifacts, "--out", out]
    assert run(args, params) == 0
    return pd.read_parquet(out / "manifest.parquet")


def frontal_rows(rows: dict[str, list[dict[str, str]]]) -> list[dict[str, str]]:
    return [r for table in rows.values() for r in table if r["Frontal/Lateral"] == "Frontal"]


# ---------------------------------------------------------------- CheXpert


def test_chexpert_counts_frontal_filter_and_outputs(tmp_path: Path, capsys) -> None:
    rows = fakedata.write_chexpert(tmp_path / "raw")
    out = tmp_path / "prep"
    df = prep_chexpert(tmp_path / "raw", out, resolution=32)

    frontal = frontal_rows(rows)
    n_lateral = sum(len(t) for t in rows.values()) - len(frontal)
    assert n_lateral > 0
    assert len(df) == len(frontal)
    assert set(df["view"]) == {"Frontal"}
    assert not df["image_id"].str.contains("lateral").any()
    assert df["image_id"].is_unique
    assert sorted(df["source_path"]) == sorted(r["Path"] for r in frontal)
    head = ["image_id", "path", "source_path", "split", "prompt", "patient_id"]
    assert list(df.columns[:6]) == head
    assert set(LABEL_COLUMNS) <= set(df.columns)
    assert set(df["split"]) <= {"train", "val", "test"}
    assert df["patient_id"].str.fullmatch(r"patient\d{5}").all()
    for column in LABEL_COLUMNS:
        assert set(df[column]) <= {0, 1}
    # every image written once, resized, RGB
    first = out / df["path"].iloc[0]
    assert df["path"].iloc[0] == f"images/{df['image_id'].iloc[0]}.png"
    with Image.open(first) as img:
        assert img.size == (32, 32) and img.mode == "RGB" and img.format == "PNG"
    assert len(list((out / "images").iterdir())) == len(df)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(df)
    assert summary["dropped"]["lateral"] == n_lateral
    assert sum(summary["splits"][s]["images"] for s in ("train", "val", "test")) == len(df)
    for s in ("train", "val", "test"):
        part = df[df["split"] == s]
        assert summary["splits"][s]["positives"]["edema"] == int(part["edema"].sum())
    assert "prepare chexpert" in (out / "summary.txt").read_text()
    assert "prepare chexpert" in capsys.readouterr().out
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "prepare" and prov["artifact"] == str(out)
    assert {Path(i["path"]).name for i in prov["inputs"]} == {"train.csv", "valid.csv"}


def policy_rows() -> dict[str, list[dict[str, str]]]:
    """Five patients whose labels test each uncertain policy and the caption template."""
    d = fakedata.DATASET_DIR

    def path(p: int) -> str:
        return f"{d}/train/patient{p:05d}/study1/view1_frontal.jpg"

    return {
        "train.csv": [
            fakedata.chexpert_row(path(1), Edema="-1.0", Pleural_Effusion="1.0"),
            fakedata.chexpert_row(path(2), Fracture="-1.0", Cardiomegaly="1.0"),
            fakedata.chexpert_row(path(3), Edema="0.0"),
            fakedata.chexpert_row(path(4), No_Finding="1.0", Support_Devices="0.0"),
            fakedata.chexpert_row(
                path(5), Support_Devices="1", Lung_Opacity="1.0", Cardiomegaly="1.0"
            ),
        ]
    }


NO_SPLIT = {"test_fraction": 0.0, "val_fraction": 0.0, "csvs": ["train.csv"]}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "zeros",
            {
                "patient00001": ("Chest X-ray showing Pleural Effusion", 0, 0),
                "patient00002": ("Chest X-ray showing Cardiomegaly", 0, 0),
            },
        ),
        (
            "ones",
            {
                "patient00001": ("Chest X-ray showing Edema, Pleural Effusion", 1, 0),
                "patient00002": ("Chest X-ray showing Cardiomegaly", 0, 1),
            },
        ),
        ("drop", {"patient00002": ("Chest X-ray showing Cardiomegaly", 0, 0)}),
    ],
)
def test_chexpert_uncertain_policies(tmp_path: Path, policy: str, expected: dict) -> None:
    fakedata.write_chexpert(tmp_path / "raw", policy_rows())
    df = prep_chexpert(tmp_path / "raw", tmp_path / "prep", uncertain=policy, **NO_SPLIT)
    df = df.set_index("patient_id")
    assert len(df) == 3 + len(expected)
    for patient, (prompt, edema, fracture) in expected.items():
        assert df.loc[patient, "prompt"] == prompt
        assert df.loc[patient, "edema"] == edema
        assert df.loc[patient, "fracture"] == fracture
    if policy == "drop":
        assert "patient00001" not in df.index
    # template behaviour kept exactly (METHOD.md section 2), including the authors' quirk
    assert df.loc["patient00003", "prompt"] == NORMAL
    assert df.loc["patient00004", "prompt"] == "Chest X-ray showing No Finding"
    assert (
        df.loc["patient00005", "prompt"]
        == "Chest X-ray showing Cardiomegaly, Lung Opacity, Support Devices"
    )
    assert df.loc["patient00005", "support_devices"] == 1


def test_chexpert_drop_counts_attributes_as_used(tmp_path: Path) -> None:
    fakedata.write_chexpert(tmp_path / "raw", policy_rows())
    df = prep_chexpert(
        tmp_path / "raw", tmp_path / "prep", uncertain="drop", attributes=["Fracture"], **NO_SPLIT
    )
    assert sorted(df["patient_id"]) == ["patient00003", "patient00004", "patient00005"]
    summary = json.loads((tmp_path / "prep" / "summary.json").read_text())
    assert summary["dropped"]["uncertain"] == 2


def test_chexpert_caption_template_from_params(tmp_path: Path) -> None:
    fakedata.write_chexpert(tmp_path / "raw", policy_rows())
    caption = {
        "prefix": "CXR: ",
        "separator": " + ",
        "empty": "clear",
        "findings": ["Support Devices", "Cardiomegaly"],
    }
    df = prep_chexpert(tmp_path / "raw", tmp_path / "prep", caption=caption, **NO_SPLIT)
    prompts = dict(zip(df["patient_id"], df["prompt"], strict=True))
    assert prompts["patient00005"] == "CXR: Support Devices + Cardiomegaly"
    assert prompts["patient00002"] == "CXR: Cardiomegaly"
    assert prompts["patient00001"] == "clear"
    assert prompts["patient00004"] == "clear"


def test_chexpert_splits_by_patient_fractions_and_determinism(tmp_path: Path) -> None:
    rows = fakedata.default_chexpert_rows(patients=40, seed=3)
    fakedata.write_chexpert(tmp_path / "raw", rows, size=(8, 8))
    a = prep_chexpert(tmp_path / "raw", tmp_path / "a")
    b = prep_chexpert(tmp_path / "raw", tmp_path / "b")
    c = prep_chexpert(tmp_path / "raw", tmp_path / "c", seed=7)

    assert (a.groupby("patient_id")["split"].nunique() == 1).all()
    patients = a.drop_duplicates("patient_id")["split"].value_counts()
    # 40 patients: round(40 * .15) = 6 test, round(34 * .15) = 5 val
    assert (patients["test"], patients["val"], patients["train"]) == (6, 5, 29)
    pd.testing.assert_frame_equal(a, b)
    for rel in a["path"].iloc[:5]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert not a["split"].equals(c["split"])
    assert (c.drop_duplicates("patient_id")["split"].value_counts() == patients).all()


def test_chexpert_renamed_dataset_folder(tmp_path: Path) -> None:
    fakedata.write_chexpert(tmp_path / "raw")
    (tmp_path / "raw" / fakedata.DATASET_DIR).rename(tmp_path / "raw" / "CheXpert-v1.0")
    df = prep_chexpert(tmp_path / "raw", tmp_path / "prep", dataset_dir="CheXpert-v1.0")
    assert df["source_path"].str.startswith(fakedata.DATASET_DIR).all()
    assert len(df) == 18


def test_chexpert_csvs_param_reads_only_train(tmp_path: Path) -> None:
    rows = fakedata.write_chexpert(tmp_path / "raw")
    df = prep_chexpert(tmp_path / "raw", tmp_path / "prep", csvs=["train.csv"])
    assert len(df) == len(frontal_rows({"train.csv": rows["train.csv"]}))


def test_missing_and_corrupt_images_skipped_when_asked(tmp_path: Path) -> None:
    rows = fakedata.write_chexpert(tmp_path / "raw")
    frontal = frontal_rows(rows)
    (tmp_path / "raw" / frontal[0]["Path"]).unlink()
    (tmp_path / "raw" / frontal[1]["Path"]).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    df = prep_chexpert(tmp_path / "raw", tmp_path / "prep", missing_images="skip")
    assert len(df) == len(frontal) - 2
    summary = json.loads((tmp_path / "prep" / "summary.json").read_text())
    skipped = summary["skipped_images"]
    assert skipped["count"] == 2
    reasons = {item["source_path"]: item["reason"] for item in skipped["items"]}
    assert reasons[frontal[0]["Path"]] == "missing"
    assert reasons[frontal[1]["Path"]].startswith("unreadable")


def test_resize_pool_gives_same_bytes(tmp_path: Path) -> None:
    fakedata.write_chexpert(tmp_path / "raw")
    params = json.dumps({"resolution": 16})
    for out, workers in (("one", "1"), ("two", "2")):
        argv = ["prepare", "--dataset", "chexpert", "--root", str(tmp_path / "raw")]
        argv += ["--out", str(tmp_path / out), "--params", params, "--workers", workers]
        assert main(argv) == 0
    names = sorted(p.name for p in (tmp_path / "one" / "images").iterdir())
    for name in names:
        one = (tmp_path / "one" / "images" / name).read_bytes()
        assert one == (tmp_path / "two" / "images" / name).read_bytes()


# ---------------------------------------------------------------- ISIC


def isic_fixture(tmp_path: Path, sep: str = ";", index: bool = True, ids: list | None = None):
    rows = fakedata.write_isic(tmp_path / "isic")
    scores = {
        "ISIC_0000001": {"dark_corner": 0.9, "hair": 0.95, "ink": 0.5},
        "ISIC_0000000": {"ruler": 1, "gel_bubble": 1},
    }
    ids = [r["image"] for r in rows] if ids is None else ids
    table = fakedata.write_artifacts(
        tmp_path / "bias.csv", fakedata.artifact_rows(ids, scores), sep=sep, index=index
    )
    return rows, table


def test_isic_filter_threshold_and_prompts(tmp_path: Path) -> None:
    rows, table = isic_fixture(tmp_path)
    df = prep_isic(tmp_path / "isic", table, tmp_path / "prep")
    kept = [r for r in rows if r["MEL"] == "1.0" or r["NV"] == "1.0"]
    assert len(df) == len(kept) == 12
    assert set(df["label"]) == {"MEL", "NV"}
    assert (df["mel"] == (df["label"] == "MEL")).all()
    assert list(df.columns[:6]) == ["image_id", "path", "source_path", "split", "prompt", "label"]
    assert set(ARTIFACTS) <= set(df.columns)
    by_id = df.set_index("image_id")
    one = by_id.loc["ISIC_0000001"]
    assert (one["dark_corner"], one["hair"], one["ink"]) == (1, 1, 0)  # >= 0.9 only
    assert one["prompt"] == NV + " showing dark corner, hair"
    zero = by_id.loc["ISIC_0000000"]
    assert zero["prompt"] == MEL + " showing gel bubble, ruler"
    assert by_id.loc["ISIC_0000004", "prompt"] == MEL + " with no visible artifacts"
    assert by_id.loc["ISIC_0000002", "source_path"] == "ISIC_2019_Training_Input/ISIC_0000002.jpg"
    # stratified split: test = round(4 * .15) MEL and round(8 * .15) NV
    counts = df.groupby(["label", "split"]).size()
    assert counts[("MEL", "test")] == 1 and counts[("NV", "test")] == 1
    summary = json.loads((tmp_path / "prep" / "summary.json").read_text())
    assert summary["dropped"]["other_classes"] == 4
    assert summary["splits"]["train"]["labels"]["NV"] == int(
        ((df["split"] == "train") & (df["label"] == "NV")).sum()
    )
    with Image.open(tmp_path / "prep" / df["path"].iloc[0]) as img:
        assert img.size == (16, 16) and img.mode == "RGB"

    low = prep_isic(tmp_path / "isic", table, tmp_path / "low", artifact_threshold=0.4)
    assert low.set_index("image_id").loc["ISIC_0000001", "prompt"] == (
        NV + " showing dark corner, hair, ink"
    )


def test_isic_comma_table_missing_artifacts_and_flat_images(tmp_path: Path) -> None:
    ids = [f"ISIC_{i:07d}" for i in range(10)]  # 12..15 have no artifact row
    _, table = isic_fixture(tmp_path, sep=",", index=False, ids=ids)
    for jpg in (tmp_path / "isic" / "ISIC_2019_Training_Input").iterdir():
        jpg.rename(tmp_path / "isic" / jpg.name)
    (tmp_path / "isic" / "ISIC_2019_Training_Input").rmdir()

    # images beside the tables: image_dir "." (a missing image_dir is an error, no fallback)
    dropped = prep_isic(tmp_path / "isic", table, tmp_path / "drop", image_dir=".")
    assert len(dropped) == 8  # MEL/NV among ids 0..9
    assert dropped["source_path"].iloc[0] == "ISIC_0000000.jpg"
    summary = json.loads((tmp_path / "drop" / "summary.json").read_text())
    assert summary["dropped"]["missing_artifacts"] == 4
    assert "missing_artifacts 4" in (tmp_path / "drop" / "summary.txt").read_text()

    zeros = prep_isic(
        tmp_path / "isic", table, tmp_path / "zeros", missing_artifacts="zeros", image_dir="."
    )
    assert len(zeros) == 12
    assert (zeros.set_index("image_id").loc["ISIC_0000013", ARTIFACTS] == 0).all()


def test_isic_caption_params(tmp_path: Path) -> None:
    _, table = isic_fixture(tmp_path)
    caption = {
        "labels": {"MEL": "melanoma", "NV": "nevus"},
        "artifacts": ["hair", "dark_corner"],
        "artifact_text": {"hair": "hairs visible on skin"},
        "no_artifacts": "",
    }
    df = prep_isic(tmp_path / "isic", table, tmp_path / "prep", caption=caption)
    by_id = df.set_index("image_id")["prompt"]
    assert by_id["ISIC_0000001"] == "nevus showing hairs visible on skin, dark corner"
    assert by_id["ISIC_0000000"] == "melanoma"  # ruler and gel bubble not listed


# ---------------------------------------------------------------- bad input


def _chexpert(tmp_path: Path, rows=None, columns=None) -> list[str]:
    fakedata.write_chexpert(tmp_path / "raw", rows, columns=columns)
    return ["--dataset", "chexpert", "--root", str(tmp_path / "raw")]


def _with_value(column: str, value: str):
    def make(tmp_path: Path) -> tuple[list[str], dict]:
        rows = fakedata.default_chexpert_rows()
        rows["train.csv"][2][column] = value
        return _chexpert(tmp_path, rows), {}

    return make


def _missing_column(tmp_path: Path):
    columns = [c for c in fakedata.CHEXPERT_COLUMNS if c != "Cardiomegaly"]
    return _chexpert(tmp_path, columns=columns), {}


def _path(value: str):
    def make(tmp_path: Path):
        rows = fakedata.default_chexpert_rows()
        rows["train.csv"][1]["Path"] = value
        return _chexpert(tmp_path, rows), {}

    return make


PATIENT3 = "train/patient00003/study1/view1_frontal.jpg"


def _missing_image(tmp_path: Path):
    args = _chexpert(tmp_path)
    (tmp_path / "raw" / fakedata.DATASET_DIR / PATIENT3).unlink()
    return args, {}


def _corrupt_image(tmp_path: Path):
    args = _chexpert(tmp_path)
    jpg = tmp_path / "raw" / fakedata.DATASET_DIR / PATIENT3
    jpg.write_bytes(jpg.read_bytes()[:60])
    return args, {}


def _all_lateral(tmp_path: Path):
    rows = fakedata.default_chexpert_rows()
    for table in rows.values():
        for row in table:
            row["Frontal/Lateral"] = "Lateral"
    return _chexpert(tmp_path, rows), {}


def _all_uncertain(tmp_path: Path):
    rows = fakedata.default_chexpert_rows()
    for table in rows.values():
        for row in table:
            row["Edema"] = "-1.0"
    return _chexpert(tmp_path, rows), {"uncertain": "drop"}


def _chexpert_params(params: dict):
    def make(tmp_path: Path):
        return _chexpert(tmp_path), params

    return make


def _isic(tmp_path: Path, ids: list[str] | None = None, rows=None) -> list[str]:
    rows = fakedata.write_isic(tmp_path / "isic", rows)
    ids = [r["image"] for r in rows] if ids is None else ids
    table = fakedata.write_artifacts(tmp_path / "bias.csv", fakedata.artifact_rows(ids))
    return ["--dataset", "isic", "--root", str(tmp_path / "isic"), "--artifacts", str(table)]


def _isic_unmatched(tmp_path: Path):
    return _isic(tmp_path, ids=["ISIC_9999998", "ISIC_9999999"]), {}


def _isic_params(params: dict):
    def make(tmp_path: Path):
        return _isic(tmp_path), params

    return make


def _isic_gt_value(column: str, value: str):
    def make(tmp_path: Path):
        rows = fakedata.default_isic_rows()
        rows[5][column] = value
        return _isic(tmp_path, rows=rows), {}

    return make


def _isic_missing_mel(tmp_path: Path):
    rows = [{k: v for k, v in r.items() if k != "MEL"} for r in fakedata.default_isic_rows()]
    return _isic(tmp_path, rows=rows), {}


def _isic_bad_score(tmp_path: Path):
    args = _isic(tmp_path)
    table = Path(args[-1])
    lines = table.read_text().splitlines()
    cells = lines[3].split(";")
    cells[3] = "1.5"  # hair
    lines[3] = ";".join(cells)
    table.write_text("\n".join(lines) + "\n")
    return args, {}


def _isic_escaping_id(tmp_path: Path):
    rows = fakedata.default_isic_rows()
    args = _isic(tmp_path, rows=rows)
    gt = tmp_path / "isic" / "ISIC_2019_Training_GroundTruth.csv"
    gt.write_text(gt.read_text().replace("ISIC_0000005", "../ISIC_0000005"))
    return args, {}


def _unknown_dataset(tmp_path: Path):
    return ["--dataset", "mimic", "--root", str(tmp_path)], {}


def _isic_without_artifacts(tmp_path: Path):
    return _isic(tmp_path)[:4], {}


def _bad_json(tmp_path: Path):
    return _chexpert(tmp_path), "{resolution: 64"


def _missing_root(tmp_path: Path):
    return ["--dataset", "chexpert", "--root", str(tmp_path / "nowhere")], {}


def _isic_unknown_artifact(tmp_path: Path):
    return _isic(tmp_path), {"caption": {"artifacts": ["hair", "freckles"]}}


BAD_INPUTS = {
    "missing column": (_missing_column, ["train.csv", "Cardiomegaly"]),
    "label 2.0": (_with_value("Edema", "2.0"), ["train.csv row 4", "Edema", "2.0"]),
    "label yes": (_with_value("Pleural Effusion", "yes"), ["train.csv row 4", "'yes'"]),
    "unknown view": (_with_value("Frontal/Lateral", "Oblique"), ["row 4", "Frontal/Lateral"]),
    "missing image": (_missing_image, ["patient00003", "not found"]),
    "corrupt image": (_corrupt_image, ["patient00003", "unreadable"]),
    "path ../": (_path("../x.jpg"), ["train.csv row 3", "leaves the dataset root"]),
    "path absolute": (_path("/etc/x.jpg"), ["train.csv row 3", "leaves the dataset root"]),
    "nothing frontal": (_all_lateral, ["no images left"]),
    "nothing certain": (_all_uncertain, ["no images left", "drop"]),
    "unknown policy": (_chexpert_params({"uncertain": "maybe"}), ["params.uncertain", "maybe"]),
    "resolution type": (_chexpert_params({"resolution": "512"}), ["params.resolution"]),
    "findings type": (
        _chexpert_params({"caption": {"findings": "Edema"}}),
        ["params.caption.findings"],
    ),
    "unknown key": (_chexpert_params({"resolutoin": 64}), ["params.resolutoin", "unknown key"]),
    "isic unmatched": (_isic_unmatched, ["bias.csv", "none of its 2 image ids"]),
    "threshold type": (
        _isic_params({"artifact_threshold": "high"}),
        ["params.artifact_threshold", "'high'"],
    ),
    "threshold range": (_isic_params({"artifact_threshold": 2}), ["params.artifact_threshold"]),
    "isic label yes": (_isic_gt_value("NV", "yes"), ["GroundTruth.csv row 7", "'NV'"]),
    "isic missing MEL": (_isic_missing_mel, ["GroundTruth.csv", "'MEL'"]),
    "isic bad score": (_isic_bad_score, ["bias.csv row 4", "'hair'", "1.5"]),
    "isic escaping id": (_isic_escaping_id, ["GroundTruth.csv row 7", "leaves the dataset root"]),
    "isic no artifacts flag": (_isic_without_artifacts, ["--artifacts"]),
    "unknown dataset": (_unknown_dataset, ["--dataset", "mimic"]),
    "params not json": (_bad_json, ["--params", "not valid JSON"]),
    "missing root": (_missing_root, ["nowhere", "no such folder"]),
    "unknown artifact": (_isic_unknown_artifact, ["params.caption.artifacts", "freckles"]),
    "no train split": (_chexpert_params({"test_fraction": 0.99}), ["params.test_fraction"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2_no_manifest(tmp_path: Path, capsys, case: str) -> None:
    make, needles = BAD_INPUTS[case]
    args, params = make(tmp_path)
    out = tmp_path / "prep"
    text = params if isinstance(params, str) else json.dumps(params)
    argv = ["prepare", *args, "--out", str(out), "--params", text, "--workers", "1"]
    before = tree(tmp_path)
    proc = run_main(capsys, *argv)
    prefix = "medtraverse prepare: error: "
    assert_one_line_error(proc, *needles, prefix=prefix, untouched=[out], trees={tmp_path: before})


# ---------------------------------------------------------------- synthetic twins end to end


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from medtraverse.data.synth import synthesize

    base = tmp_path_factory.mktemp("twins")
    return {d: synthesize(d, base / d, n=120, size=64, seed=0) for d in ("chexpert", "isic")}


def test_prepare_chexpert_twin(twins: dict[str, Path], tmp_path: Path) -> None:
    from medtraverse.data.prepare.captions import ChexpertCaption

    df = prep_chexpert(twins["chexpert"], tmp_path / "prep", resolution=32)
    truth = pd.read_parquet(twins["chexpert"] / "factors.parquet")
    truth = truth[truth["frontal_lateral"] == "Frontal"]
    truth = truth.assign(image_id=truth["image_id"].str.replace("/", "_")).set_index("image_id")
    assert sorted(df["image_id"]) == sorted(truth.index)
    # zeros policy: blank and -1 become 0
    expected = truth.loc[df["image_id"], LABEL_COLUMNS].fillna(0).replace(-1.0, 0).astype(int)
    assert (df[LABEL_COLUMNS].to_numpy() == expected.to_numpy()).all()
    caption = ChexpertCaption()
    names = dict(zip(LABEL_COLUMNS, fakedata.CHEXPERT_LABELS, strict=True))
    for row in df.head(30).itertuples():
        labels = {names[c]: getattr(row, c) for c in LABEL_COLUMNS}
        assert row.prompt == caption.prompt(labels)
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "val", "test"}
    assert 0.05 < (df["split"] == "test").mean() < 0.3
    with Image.open(tmp_path / "prep" / df["path"].iloc[-1]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"


def test_prepare_isic_twin_hard_and_soft_tables(twins: dict[str, Path], tmp_path: Path) -> None:
    root = twins["isic"]
    hard = prep_isic(root, root / "isic_bias.csv", tmp_path / "hard", resolution=32)
    soft = prep_isic(root, root / "isic_bias_soft.csv", tmp_path / "soft", resolution=32)
    truth = pd.read_parquet(root / "factors.parquet").set_index("image_id")
    kept = truth[truth["label"].isin(["MEL", "NV"]) & truth["in_bias_table"]]
    assert sorted(hard["image_id"]) == sorted(kept.index)
    assert (hard["label"].to_numpy() == kept.loc[hard["image_id"], "label"].to_numpy()).all()
    flags = kept.loc[hard["image_id"], ARTIFACTS].astype(int).to_numpy()
    assert (hard[ARTIFACTS].to_numpy() == flags).all()
    soft_cols = [f"{a}_soft" for a in ARTIFACTS]
    thresholded = (kept.loc[soft["image_id"], soft_cols].to_numpy() >= 0.9).astype(int)
    assert (soft[ARTIFACTS].to_numpy() == thresholded).all()
    assert set(hard["split"]) == {"train", "val", "test"}
    test_share = (
        hard[hard["split"] == "test"].groupby("label").size() / hard.groupby("label").size()
    )
    assert ((test_share > 0.1) & (test_share < 0.2)).all()
    row = hard.iloc[0]
    present = [a.replace("_", " ") for a in ARTIFACTS if row[a] == 1]
    start = MEL if row["label"] == "MEL" else NV
    tail = " showing " + ", ".join(present) if present else " with no visible artifacts"
    assert row["prompt"] == start + tail
