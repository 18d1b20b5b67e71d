"""``medtraverse prepare``: build a prepared dataset folder (manifest, resized images, summary).

    medtraverse prepare --dataset chexpert --root DIR --out DIR --params JSON
    medtraverse prepare --dataset isic --root DIR --artifacts CSV --out DIR --params JSON

The whole ``--out`` folder is written under a temporary name and renamed at the end, so bad
input (one line naming the file, row or key) leaves no manifest behind.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import InputError, bad_input
from medtraverse.core.formats import CHEXPERT_LABELS, ISIC_ARTIFACTS, snake
from medtraverse.core.params import parse_params, setting

DATASETS = ("chexpert", "isic")
SPLITS = ("train", "val", "test")
MISSING_IMAGES = ("fail", "skip")


@dataclass(frozen=True)
class CommonParams:
    """Keys every dataset's prepare section shares (METHOD.md section 1 values as defaults)."""

    resolution: int = setting(512, min=8, help="images are resized once to this side")
    test_fraction: float = setting(0.15, min=0, help="test share (< 1)")
    val_fraction: float = setting(0.15, min=0, help="validation share of the rest (< 1)")
    seed: int = setting(42, min=0, help="split seed (the workflow passes the global seed)")
    missing_images: str = setting(
        "fail", choices=MISSING_IMAGES, help="skip: list missing or unreadable images"
    )

    @classmethod
    def from_params(cls, params: dict[str, Any], where: str = "params") -> CommonParams:
        """This class's keys of the prepare section, typed (one-line errors naming the key)."""
        return parse_params(cls, {k: v for k, v in params.items() if k in COMMON_KEYS}, where)

    def validate(self, where: str) -> None:
        """Fractions below 1."""
        for key in ("test_fraction", "val_fraction"):
            if getattr(self, key) >= 1.0:
                raise bad_input(f"{where}.{key}", f"got {getattr(self, key)}", "a number in [0, 1)")


COMMON_KEYS = {f.name for f in fields(CommonParams)}


def _check_known(params: dict[str, Any], specific: type, where: str) -> None:
    """Keys of the section are the common ones and the dataset's (a typo is an error)."""
    known = COMMON_KEYS | {f.name for f in fields(specific)}
    for key in params:
        if key not in known:
            raise bad_input(f"{where}.{key}", "unknown key", f"one of {', '.join(sorted(known))}")


def _parse_section(
    params: dict[str, Any], specific: type, where: str = "params"
) -> tuple[CommonParams, Any]:
    """A dataset's prepare section: unknown keys refused first, then the common keys and the
    dataset's own (``specific``) parsed, each error one line naming ``where``."""
    _check_known(params, specific, where)
    return CommonParams.from_params(params, where), specific.from_params(params, where)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_groups(
    groups: Sequence[str],
    strata: Sequence[str],
    test_fraction: float,
    val_fraction: float,
    seed: int,
) -> dict[str, str]:
    """Assign each group (patient or image) to train/val/test: test first, then val of the rest.

    Within each stratum the sorted groups are shuffled by a generator seeded from ``seed``,
    so the split depends only on the set of groups, never on row order.
    """
    from medtraverse.core.seeding import derive_seed

    by_stratum: dict[str, set[str]] = {}
    for group, stratum in zip(groups, strata, strict=True):
        by_stratum.setdefault(stratum, set()).add(group)
    owners: dict[str, str] = {}
    for group, stratum in zip(groups, strata, strict=True):
        if owners.setdefault(group, stratum) != stratum:
            raise InputError(f"group {group!r}: in strata {owners[group]!r} and {stratum!r}")
    rng = np.random.default_rng(derive_seed(seed, "prepare", "split"))
    out: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        members = sorted(by_stratum[stratum])
        order = [members[i] for i in rng.permutation(len(members))]
        n_test = _round(len(order) * test_fraction)
        n_val = _round((len(order) - n_test) * val_fraction)
        for i, group in enumerate(order):
            out[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def split_rows(
    rows: pd.DataFrame, test_fraction: float, val_fraction: float, seed: int
) -> pd.Series:
    """Each row's split, the one :func:`split_groups` gives its ``group`` (with the ``stratum``
    column as the strata), so the rows of one group never straddle two splits."""
    assignment = split_groups(
        rows["group"].tolist(), rows["stratum"].tolist(), test_fraction, val_fraction, seed
    )
    return rows["group"].map(assignment)


def check_params(params: dict[str, Any], where: str, dataset: str) -> None:
    """The workflow's ``prepare`` section of ``dataset``, checked as `prepare_chexpert` /
    `prepare_isic` would, before any job runs."""
    if dataset == "chexpert":
        from medtraverse.data.prepare.chexpert import ChexpertParams as specific
    else:
        from medtraverse.data.prepare.isic import IsicParams as specific  # type: ignore[assignment]
    _parse_section(params, specific, where)


def prepare_chexpert(
    root: str | Path, out: str | Path, params: dict[str, Any] | None = None, workers: int = 0
) -> dict[str, Any]:
    """Prepare CheXpert under ``root`` into ``out``; returns the summary."""
    from medtraverse.data.prepare import chexpert

    common, specific = _parse_section(dict(params or {}), chexpert.ChexpertParams)
    root = _check_root(root)
    rows, inputs, notes = chexpert.load(root, specific)
    columns = ["patient_id", *(snake(n) for n in CHEXPERT_LABELS), "age", "sex", "view", "ap_pa"]
    counted = [snake(n) for n in CHEXPERT_LABELS]
    resolved = {**asdict(common), **asdict(specific)}
    return _finish(
        "chexpert", root, out, rows, columns, counted, inputs, notes, common, resolved, workers
    )


def prepare_isic(
    root: str | Path,
    artifacts: str | Path,
    out: str | Path,
    params: dict[str, Any] | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Prepare ISIC 2019 (MEL/NV) under ``root`` with the artifact table into ``out``."""
    from medtraverse.data.prepare import isic

    common, specific = _parse_section(dict(params or {}), isic.IsicParams)
    root = _check_root(root)
    rows, inputs, notes = isic.load(root, Path(artifacts), specific)
    columns = ["label", "mel", *ISIC_ARTIFACTS]
    counted = ["mel", *ISIC_ARTIFACTS]
    resolved = {**asdict(common), **asdict(specific)}
    resolved["caption"] = specific.caption.as_dict()
    return _finish(
        "isic", root, out, rows, columns, counted, inputs, notes, common, resolved, workers
    )


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise bad_input(root, "no such folder", "the folder that holds the dataset (--root)")
    return root


def _finish(
    dataset: str,
    root: Path,
    out: str | Path,
    rows: pd.DataFrame,
    columns: list[str],
    counted: list[str],
    inputs: list[Path],
    notes: dict[str, Any],
    common: CommonParams,
    resolved: dict[str, Any],
    workers: int,
) -> dict[str, Any]:
    """Split, resize, and write manifest, summary and provenance into ``out`` atomically."""
    from medtraverse.core import provenance
    from medtraverse.core.io import atomic_path
    from medtraverse.data.prepare.images import ResizeTask, resize_all

    skipped: list[dict[str, str]] = []
    present = np.array([Path(p).is_file() for p in rows["source_file"]], dtype=bool)
    if not present.all():
        if common.missing_images == "fail":
            first = int(np.flatnonzero(~present)[0])
            raise bad_input(
                rows["origin"].iloc[first],
                f"image file {rows['source_file'].iloc[first]} not found "
                f"({int((~present).sum())} missing in all)",
                "every listed image on disk (or params.missing_images: skip)",
            )
        skipped += [
            {"image_id": i, "source_path": s, "reason": "missing"}
            for i, s in zip(
                rows.loc[~present, "image_id"], rows.loc[~present, "source_path"], strict=True
            )
        ]
        rows = rows.loc[present].reset_index(drop=True)
    _nothing_left(rows, inputs, "after skipping missing images")

    rows["split"] = split_rows(rows, common.test_fraction, common.val_fraction, common.seed)
    rows["path"] = [f"images/{i}.png" for i in rows["image_id"]]
    _train_left(rows)
    _held_out_left(rows, common)

    out = Path(out)
    with atomic_path(out, stage="prepare") as tmp:
        tmp.mkdir(parents=True)
        tasks = [
            ResizeTask(Path(src), tmp / rel, common.resolution)
            for src, rel in zip(rows["source_file"], rows["path"], strict=True)
        ]
        results = resize_all(
            tasks,
            workers=workers,
            stop_on_error=common.missing_images == "fail",
            desc=f"prepare {dataset}",
        )
        failed = [i for i, r in enumerate(results) if r is not None]
        if failed and common.missing_images == "fail":
            i = failed[0]
            raise bad_input(
                rows["origin"].iloc[i],
                f"image file {rows['source_file'].iloc[i]} is {results[i]}",
                "a readable image (or params.missing_images: skip)",
            )
        if failed:
            skipped += [
                {
                    "image_id": rows["image_id"].iloc[i],
                    "source_path": rows["source_path"].iloc[i],
                    "reason": results[i],
                }
                for i in failed
            ]
            rows = rows.drop(index=failed).reset_index(drop=True)
            _nothing_left(rows, inputs, "after skipping unreadable images")
        _train_left(rows)

        manifest = rows[["image_id", "path", "source_path", "split", "prompt", *columns]]
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
        summary = _summary(dataset, root, rows, counted, notes, skipped, resolved)
        text = _summary_text(summary, counted)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        (tmp / "summary.txt").write_text(text)
        record = provenance.record(
            tmp,
            stage="prepare",
            params=resolved,
            inputs=inputs,
            seeds={"split": common.seed},
            extra={"dataset": dataset, "root": str(root), "images": int(len(rows))},
        )
        rec = json.loads(record.read_text())
        rec["artifact"] = str(out)
        record.write_text(json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n")
    print(text, end="")
    return summary


def _train_left(rows: pd.DataFrame) -> None:
    if (rows["split"] == "train").sum() == 0:
        raise bad_input(
            "params.test_fraction/val_fraction",
            f"no training images left ({len(rows)} images in all)",
            "fractions that leave a training split",
        )


def _held_out_left(rows: pd.DataFrame, common: CommonParams) -> None:
    """A val or test split asked for (fraction > 0) but left empty by rounding is bad input:
    classifiers select on val and report on test."""
    for split in ("val", "test"):
        if getattr(common, f"{split}_fraction") > 0 and (rows["split"] == split).sum() == 0:
            raise bad_input(
                f"params.{split}_fraction",
                f"the {split} split is empty ({rows['group'].nunique()} groups in all)",
                "more images or a larger fraction",
            )


def _nothing_left(rows: pd.DataFrame, inputs: list[Path], when: str) -> None:
    if rows.empty:
        raise bad_input(inputs[0], f"no images left {when}", "at least one image on disk")


def _summary(
    dataset: str,
    root: Path,
    rows: pd.DataFrame,
    counted: list[str],
    notes: dict[str, Any],
    skipped: list[dict[str, str]],
    resolved: dict[str, Any],
) -> dict[str, Any]:
    """Counts per split, per label and per finding/artifact, and what was dropped and why."""
    per_split: dict[str, Any] = {}
    for split in SPLITS:
        part = rows[rows["split"] == split]
        entry: dict[str, Any] = {"images": int(len(part)), "groups": int(part["group"].nunique())}
        entry["positives"] = {c: int(part[c].sum()) for c in counted}
        if "label" in part:
            entry["labels"] = {
                k: int(v) for k, v in part["label"].value_counts().sort_index().items()
            }
        per_split[split] = entry
    group_name = notes.get("group_by") or ("patients" if dataset == "chexpert" else "images")
    return {
        "dataset": dataset,
        "root": str(root),
        "images": int(len(rows)),
        "group_by": group_name,
        "splits": per_split,
        "dropped": {
            k.removeprefix("dropped_"): v for k, v in notes.items() if k.startswith("dropped_")
        },
        "counts": {
            k: v for k, v in notes.items() if not k.startswith("dropped_") and k != "group_by"
        },
        "skipped_images": {"count": len(skipped), "items": skipped},
        "params": resolved,
    }


def _summary_text(summary: dict[str, Any], counted: list[str]) -> str:
    splits = summary["splits"]
    lines = [
        f"prepare {summary['dataset']}: {summary['images']} images "
        + "("
        + ", ".join(f"{s} {splits[s]['images']}" for s in SPLITS)
        + "); "
        + f"{summary['group_by']} per split: "
        + ", ".join(f"{s} {splits[s]['groups']}" for s in SPLITS),
        "read: " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items()),
        "dropped: " + (", ".join(f"{k} {v}" for k, v in summary["dropped"].items()) or "none"),
        f"skipped images: {summary['skipped_images']['count']}",
    ]
    for item in summary["skipped_images"]["items"][:20]:
        lines.append(f"  {item['source_path']}: {item['reason']}")
    if "labels" in splits["train"]:
        labels = sorted({k for s in SPLITS for k in splits[s]["labels"]})
        lines.append(f"{'label':<28}" + "".join(f"{s:>8}" for s in SPLITS))
        for label in labels:
            counts = "".join(f"{splits[s]['labels'].get(label, 0):>8}" for s in SPLITS)
            lines.append(f"{label:<28}" + counts)
    lines.append(f"{'positives':<28}" + "".join(f"{s:>8}" for s in SPLITS))
    for column in counted:
        lines.append(
            f"{column:<28}" + "".join(f"{splits[s]['positives'][column]:>8}" for s in SPLITS)
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="chexpert or isic")
    parser.add_argument(
        "--root", required=True, type=Path, help="the folder that holds the dataset"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="the prepared dataset folder to write"
    )
    parser.add_argument(
        "--artifacts",
        type=str,
        default=None,
        help="ISIC only: artifact table (Bissoto et al. format, ';' or ',' separated)",
    )
    parser.add_argument(
        "--params", default=None, help="the dataset's prepare section: JSON or @file"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="resize threads (0: --threads, else one per core, at most 16); same outputs",
    )


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.io import check_output

    check_output(args.out, "prepare", "folder")  # before any work; never replaces user data
    from medtraverse.core.params import load_params

    params = load_params(args.params)
    if args.dataset not in DATASETS:
        raise bad_input("--dataset", f"unknown dataset {args.dataset!r}", " or ".join(DATASETS))
    workers = args.workers or getattr(args, "threads", None) or 0  # the CLI's --threads
    if args.dataset == "isic":
        if args.artifacts is None:
            raise bad_input("--artifacts", "missing", "the artifact table for --dataset isic")
        if not args.artifacts.strip():
            raise bad_input("--artifacts", "an empty path", "the artifact table (a CSV file)")
        prepare_isic(args.root, args.artifacts, args.out, params, workers=workers)
    else:
        if args.artifacts is not None:
            raise bad_input(
                "--artifacts", "given with --dataset chexpert", "it only with --dataset isic"
            )
        prepare_chexpert(args.root, args.out, params, workers=workers)
