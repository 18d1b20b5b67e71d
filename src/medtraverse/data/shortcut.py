"""Confounded splits for the shortcut study: two attributes A and B made to co-occur in training.

``medtraverse shortcut-splits --manifest PREP/manifest.parquet --table RAW/train.csv
[--table RAW/valid.csv] --out DIR --params JSON``

Every frontal image of the raw CheXpert tables that the prepared manifest kept is put in one of
four groups by its raw labels (the authors' construction): ``both`` (A=1, B=1), ``a_only``,
``b_only`` and ``neither``. Blank counts as 0; A is set to 0 where No Finding is 1
(``zero_a_if_no_finding``); a row with an uncertain (-1.0) A or B is in no group. The prepared
manifest's own split is ignored: the study draws its own, patient-disjoint.

1. **Held-out tests.** Patients are visited in a seeded order; a patient's rows fill the balanced
   test's ``test_per_group`` rows of each group while places are left, and a patient who gave
   one row gives none to training. The imbalanced test is a subset of the balanced test:
   ``test_per_group`` rows of ``both``/``neither`` and ``imbalanced_minority`` of that of the
   mixed groups (the authors' 1,000 / 250 / 250 / 1,000).
2. **Train/val patients.** The other patients are cut ``train_fraction`` / ``val_fraction`` by
   rows (seeded order).
3. **Confounded train/val.** ``n`` rows of each majority group (``both``, ``neither``) and
   ``m = floor(n / ratio)`` of each mixed group, ``floor(train_fraction * n)`` of them from train
   patients and the rest from val patients. ``n`` is ``majority_per_group`` when set (the
   authors': 48,917, giving 39,133 + 39,133 + 3,912 + 3,912 train and 9,784 x 2 + 979 x 2 val),
   else the largest the data allow (also leaving room for the balanced arm when ``balanced``).
4. **Balanced train/val** (the oracle arm): the same number of rows as the confounded train and
   val, a quarter from each group, from the same train/val patients.

Writes into ``--out`` (one folder, atomically): ``train.parquet``, ``val.parquet``,
``balanced_train.parquet``, ``balanced_val.parquet``, ``balanced_test.parquet``,
``imbalanced_test.parquet`` (the prepared manifest's rows plus ``group``, ``a``, ``b`` and
``patient_id``; paths stay relative to the prepared folder), ``summary.csv``/``.md``/``.json``
(rows per split and group) and ``provenance.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.formats import CHEXPERT_LABELS, snake
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.core.seeding import derive_seed

STAGE = "shortcut-splits"
GROUPS = ("both", "a_only", "b_only", "neither")
MAJORITY = ("both", "neither")
MINORITY = ("a_only", "b_only")
SPLIT_FILES = (
    "train",
    "val",
    "balanced_train",
    "balanced_val",
    "balanced_test",
    "imbalanced_test",
)


@dataclass(frozen=True)
class SplitParams:
    """The ``shortcut.splits`` settings; defaults are the authors' construction."""

    a: str = setting("Pleural Effusion", help="attribute A (a CheXpert label)")
    b: str = setting("Support Devices", help="attribute B (a CheXpert label)")
    ratio: float = setting(10.0, min=1.0, help="majority/minority rows per group in train/val")
    test_per_group: int = setting(1000, min=1, help="balanced test rows per group")
    imbalanced_minority: float = setting(
        0.25, min=0.0, max=1.0, help="mixed groups' share of test_per_group in the imbalanced test"
    )
    train_fraction: float = setting(0.8, min=0.0, max=1.0, help="train share of train+val")
    val_fraction: float = setting(0.2, min=0.0, max=1.0, help="val share of train+val")
    majority_per_group: int | None = setting(
        None, min=1, help="train+val rows of each majority group (None: as many as fit)"
    )
    balanced: bool = setting(True, help="also write the balanced (oracle) train/val")
    zero_a_if_no_finding: bool = setting(True, help="A set to 0 where No Finding is 1")
    frontal_only: bool = setting(True, help="frontal views only")
    seed: int = setting(0, min=0, help="global seed")

    def validate(self, where: str) -> None:
        """A and B distinct CheXpert labels; fractions that add up to 1."""
        for key in ("a", "b"):
            value = getattr(self, key)
            if value not in CHEXPERT_LABELS or value == "No Finding":
                raise bad_input(f"{where}.{key}", f"got {value!r}", "a CheXpert finding label")
        if self.a == self.b:
            raise bad_input(f"{where}.b", f"same as a ({self.a!r})", "two different labels")
        if not math.isclose(self.train_fraction + self.val_fraction, 1.0, abs_tol=1e-9):
            raise bad_input(
                f"{where}.val_fraction",
                f"train_fraction + val_fraction = {self.train_fraction + self.val_fraction:g}",
                "fractions adding up to 1",
            )


def _code(value: Any, where: str) -> float:
    """A raw CheXpert label cell: 1.0, 0.0, -1.0 or blank (NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    text = str(value).strip()
    if text == "":
        return math.nan
    try:
        number = float(text)
    except ValueError:
        number = math.inf
    if number not in (1.0, 0.0, -1.0):
        raise bad_input(where, f"unknown label value {value!r}", "1.0, 0.0, -1.0 or blank")
    return number


def patient_of(path: str) -> str:
    """The ``patientNNNNN`` folder of a CheXpert ``Path``."""
    for part in str(path).replace("\\", "/").split("/"):
        if part.startswith("patient") and part[7:].isdigit():
            return part
    raise bad_input(f"Path {path!r}", "no patient folder", "…/patientNNNNN/studyN/viewN_*.jpg")


def assign_groups(table: pd.DataFrame, params: SplitParams, where: str = "table") -> pd.DataFrame:
    """``Path``, ``patient_id``, ``a``, ``b``, ``group`` per row of a raw CheXpert table (19
    columns, ``1.0``/``0.0``/``-1.0``/blank). Rows in no group (uncertain A or B, lateral views
    when ``frontal_only``) have ``group`` None."""
    for column in ("Path", "Frontal/Lateral", "No Finding", params.a, params.b):
        if column not in table.columns:
            raise bad_input(where, f"missing column {column!r}", "a CheXpert table (19 columns)")
    codes = {}
    for column in ("No Finding", params.a, params.b):
        codes[column] = np.array(
            [
                _code(v, f"{where} row {i + 2} column {column!r}")
                for i, v in enumerate(table[column])
            ]
        )
    a, b = codes[params.a], codes[params.b]
    a = np.where(np.isnan(a), 0.0, a)
    b = np.where(np.isnan(b), 0.0, b)
    if params.zero_a_if_no_finding:
        a = np.where(codes["No Finding"] == 1.0, 0.0, a)
    ok = (a != -1.0) & (b != -1.0)
    if params.frontal_only:
        ok &= table["Frontal/Lateral"].astype(str).str.strip().to_numpy() == "Frontal"
    names = np.select(
        [(a == 1) & (b == 1), (a == 1) & (b == 0), (a == 0) & (b == 1), (a == 0) & (b == 0)],
        list(GROUPS),
        default="",
    )
    out = pd.DataFrame(
        {
            "Path": table["Path"].astype(str).str.strip().to_numpy(),
            "patient_id": [patient_of(p) for p in table["Path"]],
            "a": a.astype(int),
            "b": b.astype(int),
        }
    )
    out["group"] = [g if keep and g else None for g, keep in zip(names, ok, strict=True)]
    return out


def _quota(n: int, fraction: float) -> tuple[int, int]:
    """(train, val) rows of a group of ``n``: floor(fraction * n) and the rest."""
    train = math.floor(fraction * n + 1e-9)
    return train, n - train


def _needs(n: int, p: SplitParams) -> dict[str, dict[str, int]]:
    """Rows needed per partition (train/val) and group for majority size ``n``."""
    m = math.floor(n / p.ratio + 1e-9)
    need: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for g in GROUPS:
        t, v = _quota(n if g in MAJORITY else m, p.train_fraction)
        need["train"][g], need["val"][g] = t, v
    if p.balanced:
        for part in ("train", "val"):
            per = sum(need[part].values()) // 4
            for g in GROUPS:
                need[part][f"bal_{g}"] = per
    return need


def _fits(n: int, p: SplitParams, avail: dict[str, dict[str, int]]) -> str | None:
    """None when majority size ``n`` fits the available rows; else what is short."""
    for part, groups in _needs(n, p).items():
        for key, want in groups.items():
            g = key.removeprefix("bal_")
            have = avail[part].get(g, 0)
            if key.startswith("bal_"):  # the balanced arm draws from the same pool, separately
                if want > have:
                    return f"balanced {part} needs {want} {g} rows, has {have}"
            elif want > have:
                return f"{part} needs {want} {g} rows, has {have}"
    return None


def make_splits(rows: pd.DataFrame, params: SplitParams) -> dict[str, pd.DataFrame]:
    """The six splits from grouped rows (``patient_id``, ``group`` and any other columns)."""
    rng = np.random.default_rng(derive_seed(params.seed, STAGE, "patients"))
    grouped = rows[rows["group"].notna()]
    patients = np.array(sorted(grouped["patient_id"].unique()))
    rng.shuffle(patients)
    by_patient = {pid: idx for pid, idx in grouped.groupby("patient_id").groups.items()}

    # 1. balanced test
    left = dict.fromkeys(GROUPS, params.test_per_group)
    test_idx: list[Any] = []
    test_patients: set[str] = set()
    for pid in patients:
        if not any(left.values()):
            break
        idx = list(by_patient[pid])
        rng.shuffle(idx)
        took = False
        for i in idx:
            g = grouped.at[i, "group"]
            if left[g] > 0:
                left[g] -= 1
                test_idx.append(i)
                took = True
        if took:
            test_patients.add(pid)
    short = {g: n for g, n in left.items() if n}
    if short:
        g, n = next(iter(short.items()))
        have = params.test_per_group - n
        raise bad_input(
            "shortcut.splits.test_per_group",
            f"only {have} {g} rows for the balanced test",
            f"at most {have}, or a larger dataset",
        )
    balanced_test = grouped.loc[test_idx].copy()
    balanced_test = balanced_test.sort_values(["group", "patient_id"], kind="stable")
    n_mixed = math.floor(params.imbalanced_minority * params.test_per_group + 1e-9)
    imbalanced_test = pd.concat(
        [
            part if g in MAJORITY else part.iloc[:n_mixed]
            for g, part in balanced_test.groupby("group", sort=False)
        ]
    )

    # 2. train/val patients, cut by rows
    rest = [pid for pid in patients if pid not in test_patients]
    sizes = np.array([len(by_patient[pid]) for pid in rest])
    cut = np.cumsum(sizes) <= params.train_fraction * sizes.sum() + 1e-9
    part_of = {pid: ("train" if c else "val") for pid, c in zip(rest, cut, strict=True)}
    pool = grouped[grouped["patient_id"].isin(part_of)].copy()
    pool["part"] = pool["patient_id"].map(part_of)
    avail = {
        part: pool[pool["part"] == part]["group"].value_counts().to_dict()
        for part in ("train", "val")
    }

    # 3. majority size
    if params.majority_per_group is not None:
        n = params.majority_per_group
        why = _fits(n, params, avail)
        if why is not None:
            raise bad_input(
                "shortcut.splits.majority_per_group",
                f"{n} does not fit: {why}",
                ("a smaller value, or null for as many as fit"),
            )
    else:
        lo, hi = 0, int(pool["group"].isin(MAJORITY).sum())
        while lo < hi:  # the largest n that fits (needs grow with n)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _fits(mid, params, avail) is None else (lo, mid - 1)
        n = lo
        if n == 0 or math.floor(n / params.ratio + 1e-9) == 0:
            raise bad_input(
                "shortcut.splits",
                f"too few grouped rows for ratio {params.ratio:g} ({avail})",
                "a larger dataset or a smaller ratio / test_per_group",
            )
    needs = _needs(n, params)

    def draw(part: str, key: str) -> pd.DataFrame:
        g = key.removeprefix("bal_")
        cand = pool[(pool["part"] == part) & (pool["group"] == g)]
        order = np.random.default_rng(derive_seed(params.seed, STAGE, f"{part}/{key}"))
        pick = order.permutation(len(cand))[: needs[part][key]]
        return cand.iloc[np.sort(pick)]

    out = {
        "train": pd.concat([draw("train", g) for g in GROUPS]),
        "val": pd.concat([draw("val", g) for g in GROUPS]),
        "balanced_test": balanced_test,
        "imbalanced_test": imbalanced_test,
    }
    if params.balanced:
        out["balanced_train"] = pd.concat([draw("train", f"bal_{g}") for g in GROUPS])
        out["balanced_val"] = pd.concat([draw("val", f"bal_{g}") for g in GROUPS])
    return {
        k: v.drop(columns=["part"], errors="ignore").reset_index(drop=True) for k, v in out.items()
    }


def summarize(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Rows per split and group, with the split's patients."""
    rows = []
    for name, df in splits.items():
        counts = df["group"].value_counts()
        rows.append(
            {
                "split": name,
                **{g: int(counts.get(g, 0)) for g in GROUPS},
                "rows": len(df),
                "patients": int(df["patient_id"].nunique()),
            }
        )
    return pd.DataFrame(rows)


def _read_tables(tables: list[Path]) -> pd.DataFrame:
    frames = []
    for path in tables:
        if not path.is_file():
            raise bad_input(path, "not found", "a CheXpert CSV (train.csv or valid.csv)")
        try:
            frames.append(pd.read_csv(path, dtype=str, keep_default_na=False))
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise bad_input(path, f"not a readable CSV ({type(err).__name__})", "a CSV") from None
    return pd.concat(frames, ignore_index=True)


def shortcut_splits(
    manifest: str | Path, tables: list[str | Path], out: str | Path, raw: dict[str, Any]
) -> pd.DataFrame:
    """Write the splits folder; returns the summary table."""
    from medtraverse.core import provenance
    from medtraverse.core.io import atomic_path
    from medtraverse.core.tables import write_tables

    params = parse_params(SplitParams, raw, "shortcut.splits")
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise bad_input(manifest, "not found", "a manifest.parquet made by 'medtraverse prepare'")
    prepared = pd.read_parquet(manifest)
    for column in ("image_id", "path", "source_path"):
        if column not in prepared.columns:
            raise bad_input(manifest, f"no column {column!r}", "a CheXpert prepared manifest")
    table_paths = [Path(t) for t in tables]
    table = _read_tables(table_paths)
    grouped = assign_groups(table, params, where=", ".join(map(str, table_paths)))
    grouped = grouped.drop_duplicates("Path")
    keep = prepared.drop(columns=["split", "patient_id"], errors="ignore")
    rows = keep.merge(grouped, left_on="source_path", right_on="Path", how="inner")
    rows = rows.drop(columns=["Path"])
    if rows.empty:
        raise bad_input(manifest, "no row matches the tables' Path values", "the same dataset")
    rows[snake(params.a)] = rows["a"]
    rows[snake(params.b)] = rows["b"]
    splits = make_splits(rows, params)
    summary = summarize(splits)
    with atomic_path(out, stage=STAGE) as tmp:
        tmp.mkdir(parents=True)
        for name, df in splits.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        note = (
            f"A = {params.a} (a), B = {params.b} (b); ratio {params.ratio:g}; "
            f"seed {params.seed}; patient-disjoint across train, val and the tests"
        )
        write_tables(tmp, "summary", summary, note=note, caption="Shortcut study splits")
        study = {
            "a": params.a,
            "b": params.b,
            "a_column": snake(params.a),
            "b_column": snake(params.b),
        }
        (tmp / "study.json").write_text(json.dumps(study, indent=2, sort_keys=True) + "\n")
    provenance.record(
        out,
        stage=STAGE,
        params=asdict(params),
        inputs=[manifest, *table_paths],
        seeds={"seed": params.seed},
        extra={"a": params.a, "b": params.b, "a_column": snake(params.a)},
    )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="prepared manifest.parquet")
    parser.add_argument(
        "--table",
        type=Path,
        action="append",
        required=True,
        help="a raw CheXpert CSV (train.csv, valid.csv); repeat for each",
    )
    parser.add_argument("--out", type=Path, required=True, help="the splits folder to write")
    parser.add_argument("--params", default="{}", help="shortcut.splits as JSON or @file")


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.io import check_output

    check_output(args.out, STAGE, "folder")  # before any work; never replaces user data
    summary = shortcut_splits(args.manifest, args.table, args.out, load_params(args.params))
    print(summary.to_string(index=False))
