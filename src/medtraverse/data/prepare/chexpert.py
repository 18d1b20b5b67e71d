"""Read CheXpert's ``train.csv``/``valid.csv`` into checked rows with labels and prompts.

Frontal views only; blank labels are "not mentioned" (0); the uncertain policy (``zeros``,
the authors' choice, ``ones`` or ``drop``) decides what ``-1.0`` becomes. The patient id comes
from the path, so the split can be made by patient.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.formats import CHEXPERT_LABELS, CHEXPERT_META_COLUMNS, snake
from medtraverse.core.params import parse_params, setting
from medtraverse.data.prepare.captions import ChexpertCaption, check_names

UNCERTAIN_POLICIES = ("zeros", "ones", "drop")
META_COLUMNS = CHEXPERT_META_COLUMNS
REQUIRED_COLUMNS = (*META_COLUMNS, *CHEXPERT_LABELS)
VIEWS = ("Frontal", "Lateral")
_PATIENT = re.compile(r"^patient\d+$")


@dataclass(frozen=True)
class ChexpertParams:
    """The CheXpert-specific part of the prepare config section (paper/code values as defaults)."""

    dataset_dir: str = setting("CheXpert-v1.0-small", help="the folder under the root")
    csvs: tuple[str, ...] = setting(("train.csv", "valid.csv"), help="tables in dataset_dir")
    frontal_only: bool = setting(True, help="frontal views only")
    uncertain: str = setting(
        "zeros", choices=UNCERTAIN_POLICIES, help="CheXpert's -1.0 labels: zeros, ones or drop"
    )
    attributes: tuple[str, ...] = setting(
        ("Pleural Effusion", "Support Devices"), help="labels that `drop` also considers"
    )
    caption: ChexpertCaption = setting(
        default_factory=ChexpertCaption, help="the caption template (METHOD.md section 2)"
    )

    @classmethod
    def from_params(cls, params: dict[str, Any], where: str = "params") -> ChexpertParams:
        """This class's keys of the prepare section, typed (one-line errors naming the key)."""
        return parse_params(cls, {k: v for k, v in params.items() if k in KEYS}, where)

    def validate(self, where: str) -> None:
        """Known labels, at least one table, paths inside the dataset root."""
        check_names(list(self.attributes), CHEXPERT_LABELS, f"{where}.attributes", "label")
        if not self.csvs:
            raise bad_input(f"{where}.csvs", "empty list", "at least one CSV name")
        for key, value in [("dataset_dir", self.dataset_dir), *(("csvs", c) for c in self.csvs)]:
            if escapes(value):
                raise bad_input(
                    f"{where}.{key}", f"{value!r} leaves the dataset root", "a relative path"
                )


KEYS = {f.name for f in fields(ChexpertParams)}


def escapes(raw: str) -> bool:
    """True if a path from a table is absolute or climbs out of the folder it is relative to."""
    if not raw or raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", raw):
        return True
    norm = posixpath.normpath(raw.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def read_table(path: Path, required: tuple[str, ...], what: str, sep: str = ",") -> pd.DataFrame:
    """Read a CSV as text (blanks stay blank) and check that its columns are there."""
    if not path.is_file():
        raise bad_input(path, "file not found", what)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise bad_input(path, f"not a readable CSV ({first})", what) from None
    df.columns = [str(c).strip() for c in df.columns]
    for column in required:
        if column not in df.columns:
            raise bad_input(path, f"missing column {column!r}", f"columns {', '.join(required)}")
    return df


def label_codes(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Labels as ints: 1 positive, 0 negative or blank (not mentioned), -1 uncertain."""
    out = {}
    for column in columns:
        values = df[column].str.strip()
        mapping: dict[str, int] = {}
        for value in values.unique():
            code = _code(value)
            if code is None:
                row = int(values.index[values == value][0]) + 2
                raise bad_input(
                    f"{path} row {row} column {column!r}",
                    f"unknown label value {value!r}",
                    "1.0, 0.0, -1.0 or blank",
                )
            mapping[value] = code
        out[column] = values.map(mapping).astype("int64")
    return pd.DataFrame(out, index=df.index)


def _code(value: str) -> int | None:
    if value == "":
        return 0
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number in (1.0, 0.0, -1.0) else None


def load(root: Path, params: ChexpertParams) -> tuple[pd.DataFrame, list[Path], dict[str, Any]]:
    """Checked rows (one per frontal image kept), the CSVs read, and counts of what was dropped.

    Rows carry ``image_id``, ``source_path`` (as in the CSV), ``source_file`` (on disk),
    ``origin`` (``csv row N`` for messages), ``group`` (patient), ``stratum``, ``prompt``,
    ``patient_id``, the 14 labels in snake_case, ``age``, ``sex``, ``view``, ``ap_pa``.
    """
    folder = root / params.dataset_dir
    csv_paths = [folder / name for name in params.csvs]
    frames = []
    for csv_path in csv_paths:
        df = read_table(csv_path, REQUIRED_COLUMNS, "a CheXpert CSV (Path,Sex,Age,...,14 labels)")
        frames.append(_check_rows(df, csv_path, root, params))
    rows = pd.concat(frames, ignore_index=True)
    notes: dict[str, Any] = {
        "rows_read": int(len(rows)),
        "dropped_lateral": 0,
        "dropped_uncertain": 0,
    }

    dup = rows["image_id"].duplicated(keep=False)
    if dup.any():
        first, second = rows.loc[dup, "origin"].iloc[:2]
        raise bad_input(
            second, f"image {rows.loc[dup, 'source_path'].iloc[0]!r} also at {first}", "each once"
        )

    if params.frontal_only:
        lateral = rows["view"] != "Frontal"
        notes["dropped_lateral"] = int(lateral.sum())
        rows = rows.loc[~lateral]

    labels = [snake(name) for name in CHEXPERT_LABELS]
    used = [snake(n) for n in dict.fromkeys([*params.caption.findings, *params.attributes])]
    uncertain_any = (rows[labels] == -1).any(axis=1)
    notes["images_with_uncertain_labels"] = int(uncertain_any.sum())
    if params.uncertain == "drop":
        drop = (rows[used] == -1).any(axis=1)
        notes["dropped_uncertain"] = int(drop.sum())
        rows = rows.loc[~drop].copy()
        rows[labels] = rows[labels].replace(-1, 0)
    else:
        rows = rows.copy()
        rows[labels] = rows[labels].replace(-1, 1 if params.uncertain == "ones" else 0)

    if rows.empty:
        raise bad_input(
            ", ".join(str(p) for p in csv_paths),
            f"no images left after the frontal filter and uncertain policy {params.uncertain!r}",
            "at least one frontal image",
        )
    by_name = {snake(name): name for name in CHEXPERT_LABELS}
    rows["prompt"] = [
        params.caption.prompt({by_name[k]: v for k, v in rec.items()})
        for rec in rows[labels].to_dict("records")
    ]
    rows["group"] = rows["patient_id"]
    rows["stratum"] = ""
    return rows.reset_index(drop=True), csv_paths, notes


def _check_rows(
    df: pd.DataFrame, csv_path: Path, root: Path, params: ChexpertParams
) -> pd.DataFrame:
    """Validate one CSV's rows: paths inside the root, known views, ages and label values."""
    records: dict[str, list[Any]] = {
        k: [] for k in ("image_id", "source_path", "source_file", "origin", "patient_id")
    }
    ages: list[int] = []
    for idx, raw, view, age in zip(
        df.index, df["Path"], df["Frontal/Lateral"], df["Age"], strict=True
    ):
        where = f"{csv_path} row {int(idx) + 2}"
        raw = raw.strip()
        if escapes(raw):
            raise bad_input(
                f"{where} column 'Path'",
                f"{raw!r} leaves the dataset root",
                f"a path relative to {root}",
            )
        parts = posixpath.normpath(raw.replace("\\", "/")).split("/")
        at = next((i for i, p in enumerate(parts) if _PATIENT.match(p)), None)
        if at is None or at == len(parts) - 1:
            raise bad_input(
                f"{where} column 'Path'",
                f"no patient folder in {raw!r}",
                "…/patientNNNNN/studyN/viewN_*.jpg",
            )
        if view.strip() not in VIEWS:
            raise bad_input(
                f"{where} column 'Frontal/Lateral'", f"unknown view {view!r}", "Frontal or Lateral"
            )
        try:
            ages.append(int(float(age)))
        except ValueError:
            raise bad_input(f"{where} column 'Age'", f"got {age!r}", "a number") from None
        source = root.joinpath(*parts)
        if not source.exists() and parts[0] != params.dataset_dir:
            moved = root.joinpath(params.dataset_dir, *parts[1:])
            source = moved if moved.exists() else source
        records["image_id"].append("_".join([*parts[at:-1], posixpath.splitext(parts[-1])[0]]))
        records["source_path"].append(raw)
        records["source_file"].append(str(source))
        records["origin"].append(where)
        records["patient_id"].append(parts[at])
    out = pd.DataFrame(records, index=df.index)
    codes = label_codes(df, csv_path, CHEXPERT_LABELS)
    for name in CHEXPERT_LABELS:
        out[snake(name)] = codes[name]
    out["age"] = pd.Series(ages, index=df.index, dtype="int64")
    out["sex"] = df["Sex"].str.strip()
    out["view"] = df["Frontal/Lateral"].str.strip()
    out["ap_pa"] = df["AP/PA"].str.strip()
    return out
