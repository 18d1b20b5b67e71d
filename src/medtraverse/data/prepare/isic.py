"""Read ISIC 2019's ground truth and a Bissoto-format artifact table into checked rows.

Only melanoma (MEL) and nevus (NV) rows are kept. Artifacts come from a separate table
(semicolon- or comma-separated, leading unnamed index column allowed, ``image`` matched on its
id stem); soft scores become flags with ``score >= artifact_threshold`` (0/1 flags unchanged).
Two formats are read as they are: Bissoto et al.'s annotations (``isic_bias.csv``, ``;``, 0/1
flags, ISIC 2018 ids such as ``ISIC_0000000.png``, a subset of the images) and the authors'
merged table (``ISIC2019_Artifacts_merged.csv``, ``,``, the ground-truth columns then soft
scores for every MEL/NV image), which ``medtraverse annotate-artifacts`` writes too.

ISIC 2019 holds several images of one lesion. When the metadata table
(``ISIC_2019_Training_Metadata.csv``, by default beside the ground truth) is there, images are
grouped by ``lesion_id`` (an image without one is its own group), so a lesion never spans two
splits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.formats import ISIC_ARTIFACTS, ISIC_CLASSES
from medtraverse.core.params import parse_params, setting
from medtraverse.data.prepare.captions import ISIC_LABELS, IsicCaption
from medtraverse.data.prepare.chexpert import escapes, read_table

METADATA_FILE = "ISIC_2019_Training_Metadata.csv"
MERGED_FILE = "ISIC2019_Artifacts_merged.csv"
# The authors' merged table: an unnamed index, the ground truth, the bias table's old index
# ("Unnamed: 0"), the artifacts' soft scores, a `vasc` column, the MEL/NV label.
MERGED_COLUMNS = (
    "image",
    *ISIC_CLASSES,
    "Unnamed: 0",
    *ISIC_ARTIFACTS,
    "vasc",
    "label",
    "label_string",
)
MISSING_ARTIFACTS = ("drop", "zeros")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUFFIX = "_downsampled"


@dataclass(frozen=True)
class IsicParams:
    """The ISIC-specific part of the prepare config section (paper/code values as defaults)."""

    ground_truth: str = setting(
        "ISIC_2019_Training_GroundTruth.csv", help="the ground-truth table under the root"
    )
    image_dir: str = setting("ISIC_2019_Training_Input", help="the images under the root")
    image_ext: str = setting(".jpg", help="the images' extension")
    artifact_threshold: float = setting(
        0.9, min=0, max=1, help="an artifact is present iff its flag or score >= this"
    )
    missing_artifacts: str = setting(
        "drop", choices=MISSING_ARTIFACTS, help="images without an artifact row"
    )
    stratify: bool = setting(True, help="split within MEL and NV")
    caption: IsicCaption = setting(
        default_factory=IsicCaption, help="the caption template (METHOD.md section 2)"
    )
    # None: the metadata table beside the ground truth when it is there; a path: required
    metadata: str | None = setting(None, help="lesion ids for the split (beside the truth)")

    @classmethod
    def from_params(cls, params: dict[str, Any], where: str = "params") -> IsicParams:
        """This class's keys of the prepare section, typed (one-line errors naming the key)."""
        return parse_params(cls, {k: v for k, v in params.items() if k in KEYS}, where)

    def validate(self, where: str) -> None:
        """Paths inside the dataset root, an extension, a non-empty metadata path."""
        if self.metadata is not None and not self.metadata.strip():
            raise bad_input(
                f"{where}.metadata",
                f"got {self.metadata!r}",
                "a path relative to the root, or null",
            )
        for key in ("ground_truth", "image_dir", "metadata"):
            if getattr(self, key) is not None and escapes(getattr(self, key)):
                raise bad_input(
                    f"{where}.{key}",
                    f"{getattr(self, key)!r} leaves the dataset root",
                    "a relative path",
                )
        if not self.image_ext.startswith(".") or "/" in self.image_ext:
            raise bad_input(
                f"{where}.image_ext", f"got {self.image_ext!r}", "an extension like '.jpg'"
            )


KEYS = {f.name for f in fields(IsicParams)}


def table_format(path: Path) -> str:
    """``merged`` for the authors' merged table (ground-truth columns beside the artifacts),
    ``bissoto`` otherwise (read from the header only)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    sep = ";" if header.count(";") > header.count(",") else ","
    names = {c.strip() for c in header.strip().split(sep)}
    return "merged" if {"MEL", "NV", *ISIC_ARTIFACTS} <= names else "bissoto"


def write_merged(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` (``image``, the one-hot classes, the artifact scores, ``label_string``)
    in the authors' merged format; ``Unnamed: 0`` is the running row number, ``vasc`` 0."""
    table = pd.DataFrame(records)
    table["Unnamed: 0"] = np.arange(len(table))
    table["vasc"] = 0.0
    table["label"] = (table["label_string"] == "MEL").astype("int64")
    table[list(MERGED_COLUMNS)].to_csv(path, float_format="%.4f")


def match_key(image: str) -> str:
    """The id an image is matched on: no extension, no ``_downsampled`` suffix."""
    stem = image.strip()
    for ext in (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return stem[: -len(_SUFFIX)] if stem.endswith(_SUFFIX) else stem


def read_artifacts(path: Path, threshold: float) -> pd.DataFrame:
    """The artifact table as 0/1 flags indexed by match key (soft scores thresholded)."""
    if path.is_dir():
        raise bad_input(path, "is a folder", "an artifact table (a CSV file)")
    if not path.is_file():
        raise bad_input(path, "file not found", "an artifact table (Bissoto et al. format)")
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    sep = ";" if header.count(";") > header.count(",") else ","
    required = ("image", *ISIC_ARTIFACTS)
    df = read_table(path, required, "an artifact table (;image;dark_corner;hair;...)", sep=sep)
    scores = {}
    for column in ISIC_ARTIFACTS:
        values = pd.to_numeric(df[column].str.strip(), errors="coerce")
        bad = values.isna() | (values < 0) | (values > 1)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise bad_input(
                f"{path} row {row + 2} column {column!r}",
                f"got {df[column].iloc[row]!r}",
                "a flag 0/1 or a score in [0, 1]",
            )
        scores[column] = (values >= threshold).astype("int64")
    flags = pd.DataFrame(scores)
    flags["key"] = [match_key(v) for v in df["image"]]
    flags["origin"] = [f"{path} row {i + 2}" for i in range(len(df))]
    dup = flags["key"].duplicated(keep=False)
    if dup.any():
        groups = flags.loc[dup].groupby("key")
        for key, group in groups:
            if len(group[list(ISIC_ARTIFACTS)].drop_duplicates()) > 1:
                raise bad_input(
                    group["origin"].iloc[1],
                    f"image {key!r} also at {group['origin'].iloc[0]} with other flags",
                    "one artifact row per image",
                )
        flags = flags.drop_duplicates("key")
    return flags.set_index("key")


def load(
    root: Path, artifacts: Path, params: IsicParams
) -> tuple[pd.DataFrame, list[Path], dict[str, Any]]:
    """Checked rows (one per MEL/NV image kept), the tables read, and counts of what was dropped.

    Rows carry ``image_id``, ``source_path`` (relative to the root), ``source_file``,
    ``origin``, ``group`` (the image: ISIC 2019 gives no patient), ``stratum``, ``prompt``,
    ``label``, ``mel`` and the seven artifact flags.
    """
    gt_path = root / params.ground_truth
    gt = read_table(gt_path, ("image", *ISIC_LABELS), "ISIC_2019_Training_GroundTruth.csv")
    onehot = {}
    for column in ISIC_LABELS:
        values = pd.to_numeric(gt[column].str.strip(), errors="coerce")
        bad = ~values.isin([0.0, 1.0])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise bad_input(
                f"{gt_path} row {row + 2} column {column!r}",
                f"unknown label value {gt[column].iloc[row]!r}",
                "1.0 or 0.0 (one-hot)",
            )
        onehot[column] = values.to_numpy()
    both = (onehot["MEL"] == 1) & (onehot["NV"] == 1)
    if both.any():
        row = int(np.flatnonzero(both)[0])
        raise bad_input(f"{gt_path} row {row + 2}", "both MEL and NV are 1.0", "one-hot labels")
    keep = (onehot["MEL"] == 1) | (onehot["NV"] == 1)
    notes: dict[str, Any] = {"rows_read": int(len(gt)), "dropped_other_classes": int((~keep).sum())}

    folder = root / params.image_dir
    if not folder.is_dir():
        raise bad_input(
            folder, "no such folder", "the images folder under the root (params.image_dir)"
        )
    rel_folder = folder.relative_to(root)
    records: dict[str, list[Any]] = {
        k: [] for k in ("image_id", "source_path", "source_file", "origin", "label", "key")
    }
    for i in np.flatnonzero(keep):
        image = gt["image"].iloc[i].strip()
        where = f"{gt_path} row {int(i) + 2} column 'image'"
        if escapes(image) or not _ID.match(image) or ".." in image:
            raise bad_input(where, f"{image!r} leaves the dataset root", "an id like ISIC_0000000")
        source = folder / f"{image}{params.image_ext}"
        if not source.exists():
            alt = folder / f"{image}{_SUFFIX}{params.image_ext}"
            source = alt if alt.exists() else source
        records["image_id"].append(image)
        records["source_path"].append((rel_folder / source.name).as_posix())
        records["source_file"].append(str(source))
        records["origin"].append(f"{gt_path} row {int(i) + 2}")
        records["label"].append("MEL" if onehot["MEL"][i] == 1 else "NV")
        records["key"].append(match_key(image))
    rows = pd.DataFrame(records)
    if rows.empty:
        raise bad_input(gt_path, "no MEL or NV rows", "at least one row with MEL or NV = 1.0")
    dup = rows["image_id"].duplicated(keep=False)
    if dup.any():
        raise bad_input(
            rows.loc[dup, "origin"].iloc[1],
            f"image {rows.loc[dup, 'image_id'].iloc[0]!r} listed twice",
            "each image once",
        )

    flags = read_artifacts(artifacts, params.artifact_threshold)
    found = rows["key"].isin(flags.index)
    if not found.any():
        raise bad_input(
            artifacts,
            f"none of its {len(flags)} image ids matches a MEL/NV image of {gt_path}",
            "ids like ISIC_0000000(.png) from the same dataset",
        )
    if params.missing_artifacts == "drop":
        notes["dropped_missing_artifacts"] = int((~found).sum())
        rows = rows.loc[found].reset_index(drop=True)
    else:
        notes["zeros_for_missing_artifacts"] = int((~found).sum())
    table = flags.reindex(rows["key"])[list(ISIC_ARTIFACTS)].fillna(0).astype("int64")
    for column in ISIC_ARTIFACTS:
        rows[column] = table[column].to_numpy()
    rows["mel"] = (rows["label"] == "MEL").astype("int64")
    rows["prompt"] = [
        params.caption.prompt(label, flag)
        for label, flag in zip(
            rows["label"], rows[list(ISIC_ARTIFACTS)].to_dict("records"), strict=True
        )
    ]
    inputs = [gt_path, artifacts]
    lesions = read_lesions(root, params)
    if lesions is None:
        rows["group"] = rows["image_id"]
        notes["group_by"] = "images"
    else:
        meta_path, lesion_of = lesions
        inputs.append(meta_path)
        ids = rows["image_id"].map(lesion_of).fillna("")
        notes["images_without_lesion_id"] = int((ids == "").sum())
        rows["group"] = np.where(ids == "", "image:" + rows["image_id"], "lesion:" + ids)
        notes["group_by"] = "lesions"
    # a lesion's stratum: MEL when any of its images is (real lesions never mix MEL and NV)
    any_mel = rows.groupby("group")["mel"].transform("max")
    rows["stratum"] = np.where(any_mel == 1, "MEL", "NV") if params.stratify else ""
    return rows.drop(columns="key"), inputs, notes


def read_lesions(root: Path, params: IsicParams) -> tuple[Path, dict[str, str]] | None:
    """The metadata table and its image -> lesion_id map (blank ids kept blank), or None when
    no metadata table is configured and none lies beside the ground truth."""
    if params.metadata is None:
        path = (root / params.ground_truth).parent / METADATA_FILE
        if not path.is_file():
            return None
    else:
        path = root / params.metadata
    table = read_table(path, ("image", "lesion_id"), "ISIC_2019_Training_Metadata.csv")
    images = table["image"].str.strip()
    dup = images.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise bad_input(
            f"{path} row {row + 2}", f"image {images.iloc[row]!r} listed twice", "each image once"
        )
    return path, dict(zip(images, table["lesion_id"].str.strip(), strict=True))
