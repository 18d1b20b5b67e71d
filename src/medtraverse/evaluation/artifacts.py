"""``medtraverse annotate-artifacts``: soft artifact scores for every ISIC MEL/NV image.

Bissoto et al. annotated seven artifacts on a subset of ISIC (2,594 images with ISIC 2018 ids);
the authors fine-tuned on every MEL/NV image of ISIC 2019 with probabilities predicted for all
of them. This stage makes such a table: it trains a multi-label EfficientNet-B0 (the seven
artifacts, ``train_classifier``) on the annotated images (ids matched on their stem, so
``ISIC_0000017.png`` annotates ``ISIC_0000017_downsampled``), reports per-artifact AUROC on a
held-out part (split by lesion when the metadata table is there), and predicts the scores of
every MEL/NV image that has an image file, written in the authors' merged format, which
``medtraverse prepare`` reads with ``artifact_threshold``.

    medtraverse annotate-artifacts --root DIR --annotations CSV --out DIR --params JSON

Writes into ``--out`` atomically: ``ISIC2019_Artifacts_merged.csv``, ``auroc.{csv,md,tex}``
(held-out accuracy, F1, AUROC per artifact), ``classifier/`` (the model, its history and
metrics), ``summary.txt`` and ``provenance.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.device import resolve_device
from medtraverse.core.errors import bad_input
from medtraverse.core.formats import ISIC_ARTIFACTS, ISIC_CLASSES
from medtraverse.core.params import parse_params, setting

CLASSIFIER_DEFAULTS: dict[str, Any] = {"preset": "isic", "image_size": 224}


@dataclass(frozen=True)
class AnnotateParams:
    """The ``annotate`` config section of ISIC (the pseudo-label stage's settings)."""

    ground_truth: str = setting("ISIC_2019_Training_GroundTruth.csv", help="under the root")
    image_dir: str = setting("ISIC_2019_Training_Input", help="the images, under the root")
    image_ext: str = setting(".jpg", help="the images' extension")
    metadata: str | None = setting(None, help="lesion table; None: the one beside the GT")
    label_threshold: float = setting(
        0.5, min=0, max=1, help="an annotation (flag or score) is positive at >= this"
    )
    holdout_fraction: float = setting(
        0.2, min=0.01, max=0.9, help="share of annotated lesions held out for the AUROC table"
    )
    val_fraction: float = setting(0.1, min=0, max=0.9, help="share of the rest for model selection")
    seed: int = setting(0, min=0, help="global seed (splits, training)")
    batch_size: int = setting(64, min=1, help="prediction batch size")
    workers: int = setting(0, min=0, help="resize threads (0: one per core)")
    classifier: dict[str, Any] = setting(
        default_factory=dict, help="train-classifier settings (classifiers.params keys)"
    )


def annotate_artifacts(
    root: str | Path, annotations: str | Path, out: str | Path, params: dict[str, Any] | None
) -> pd.DataFrame:
    """Train on the annotated images, predict all MEL/NV images, write ``out``; returns the
    held-out metrics (one row per artifact)."""
    from medtraverse.core import provenance
    from medtraverse.core.io import atomic_path
    from medtraverse.core.tables import write_tables
    from medtraverse.data.prepare import split_rows
    from medtraverse.data.prepare.images import ResizeTask, resize_all
    from medtraverse.data.prepare.isic import (
        MERGED_FILE,
        IsicParams,
        load,
        match_key,
        read_artifacts,
        write_merged,
    )
    from medtraverse.evaluation.classify import (
        ClassifierParams,
        classifier_wide_table,
        load_classifier,
        load_image,
    )

    p = parse_params(AnnotateParams, params or {})
    classifier = {**CLASSIFIER_DEFAULTS, "seed": p.seed, **p.classifier}
    checked = ClassifierParams.from_dict(classifier, "params.classifier")
    size = checked.image_size
    root, annotations, out = Path(root), Path(annotations), Path(out)
    if not root.is_dir():
        raise bad_input(root, "no such folder", "the folder that holds ISIC 2019 (--root)")
    isic = IsicParams.from_params(
        {
            "ground_truth": p.ground_truth,
            "image_dir": p.image_dir,
            "image_ext": p.image_ext,
            "metadata": p.metadata,
            "artifact_threshold": p.label_threshold,
            "missing_artifacts": "zeros",
        },
        "params",
    )
    rows, inputs, notes = load(root, annotations, isic)
    flags = read_artifacts(annotations, p.label_threshold)
    present = np.array([Path(f).is_file() for f in rows["source_file"]], dtype=bool)
    missing = int((~present).sum())
    rows = rows.loc[present].reset_index(drop=True)
    annotated = rows["image_id"].map(match_key).isin(flags.index).to_numpy()
    if annotated.sum() < 10:
        raise bad_input(
            annotations,
            f"only {int(annotated.sum())} annotated MEL/NV images have an image file",
            "at least 10 (ids matched on their stem)",
        )
    labelled = rows.loc[annotated].reset_index(drop=True)
    labelled["split"] = split_rows(labelled, p.holdout_fraction, p.val_fraction, p.seed)
    if (labelled["split"] == "test").sum() == 0 or (labelled["split"] == "train").sum() == 0:
        raise bad_input(
            "params.holdout_fraction",
            f"{len(labelled)} annotated images leave an empty train or held-out part",
            "more annotated images or another fraction",
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.work-") as work:
        work = Path(work)
        # every MEL/NV image resized once; the classifier trains and predicts on the copies
        rows["path"] = [f"images/{i}.png" for i in rows["image_id"]]
        tasks = [
            ResizeTask(Path(src), work / rel, size)
            for src, rel in zip(rows["source_file"], rows["path"], strict=True)
        ]
        results = resize_all(tasks, workers=p.workers, desc="annotate-artifacts resize")
        failed = [i for i, r in enumerate(results) if r is not None]
        if failed:
            i = failed[0]
            raise bad_input(
                rows["origin"].iloc[i],
                f"image file {rows['source_file'].iloc[i]} is {results[i]}",
                "a readable image",
            )
        labelled["path"] = [f"images/{i}.png" for i in labelled["image_id"]]
        manifest = work / "manifest.parquet"
        labelled[["image_id", "path", "split", *ISIC_ARTIFACTS]].to_parquet(manifest, index=False)

        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            table = _train(manifest, tmp / "classifier", classifier)
            model = load_classifier(tmp / "classifier", device=resolve_device(checked.device))
            scores = np.zeros((len(rows), len(ISIC_ARTIFACTS)), dtype=np.float64)
            for start in range(0, len(rows), p.batch_size):
                batch = [
                    load_image(work / rel, size)
                    for rel in rows["path"][start : start + p.batch_size]
                ]
                scores[start : start + len(batch)] = model.predict_proba(batch, p.batch_size)
            order = [model.attributes.index(a) for a in ISIC_ARTIFACTS]
            records = []
            for i, row in enumerate(rows.itertuples()):
                onehot = {"MEL": float(row.label == "MEL"), "NV": float(row.label == "NV")}
                records.append(
                    {
                        "image": row.image_id,
                        **{c: onehot.get(c, 0.0) for c in ISIC_CLASSES},
                        **{
                            a: float(scores[i, j])
                            for a, j in zip(ISIC_ARTIFACTS, order, strict=True)
                        },
                        "label_string": row.label,
                    }
                )
            write_merged(tmp / MERGED_FILE, records)
            held = table[["attribute", "n", "positives", "auroc", "f1", "accuracy"]]
            note = (
                f"held-out annotated images: {int((labelled['split'] == 'test').sum())} "
                f"(split by {notes.get('group_by', 'images')}); weights {table['weights'].iloc[0]}"
            )
            write_tables(tmp, "auroc", held, wide=classifier_wide_table(table), note=note)
            summary = _summary(rows, labelled, scores, missing, notes, held)
            (tmp / "summary.txt").write_text(summary)
        params_record = {**asdict(p), "classifier": classifier}
        provenance.record(
            out,
            stage="annotate-artifacts",
            params=params_record,
            inputs=inputs,
            seeds={"split": p.seed, "classifier": classifier["seed"]},
            extra={"images": int(len(rows)), "annotated": int(annotated.sum())},
        )
    print(summary, end="")
    return table


def _train(manifest: Path, folder: Path, classifier: dict[str, Any]) -> pd.DataFrame:
    from medtraverse.evaluation.classify import train_classifier

    return train_classifier(manifest, folder, list(ISIC_ARTIFACTS), classifier, name="artifacts")


def _summary(
    rows: pd.DataFrame,
    labelled: pd.DataFrame,
    scores: np.ndarray,
    missing: int,
    notes: dict[str, Any],
    held: pd.DataFrame,
) -> str:
    parts = ", ".join(
        f"{s} {int((labelled['split'] == s).sum())}" for s in ("train", "val", "test")
    )
    lines = [
        f"annotate-artifacts: {len(rows)} MEL/NV images scored; {len(labelled)} annotated "
        f"({parts}; grouped by {notes.get('group_by', 'images')}); "
        f"{missing} without an image file skipped",
        f"{'artifact':<14}{'held-out n':>11}{'pos':>6}{'AUROC':>8}{'scored >= 0.9':>15}",
    ]
    for row in held.itertuples():
        auroc = f"{row.auroc:.3f}" if np.isfinite(row.auroc) else "n/a"
        high = int((scores[:, ISIC_ARTIFACTS.index(row.attribute)] >= 0.9).sum())
        lines.append(f"{row.attribute:<14}{row.n:>11}{row.positives:>6}{auroc:>8}{high:>15}")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medtraverse.core.params import describe

    parser.epilog = "params keys: " + "; ".join(
        f"{row['name']} ({row['default']!r}): {row['help']}" for row in describe(AnnotateParams)
    )
    parser.add_argument("--root", required=True, type=Path, help="the folder that holds ISIC")
    parser.add_argument(
        "--annotations",
        required=True,
        type=str,
        help="the artifact annotations (Bissoto et al.'s isic_bias.csv or a table prepare reads)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the folder to write")
    parser.add_argument("--params", default=None, help="the annotate section: JSON or @file")


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.params import load_params

    if not args.annotations.strip():
        raise bad_input("--annotations", "an empty path", "the artifact annotations (a CSV file)")
    annotate_artifacts(args.root, args.annotations, args.out, load_params(args.params))
