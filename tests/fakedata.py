"""Tiny datasets in the real on-disk formats (CheXpert CSVs + JPEGs, ISIC 2019 + Bissoto table).

Small enough to write in a test's tmp_path in well under a second.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHEXPERT_LABELS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
ISIC_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
ARTIFACTS = ["dark_corner", "hair", "gel_border", "gel_bubble", "ruler", "ink", "patches"]
DATASET_DIR = "CheXpert-v1.0-small"


def write_jpeg(path: Path, size: tuple[int, int], seed: int, mode: str = "L") -> None:
    """A small noisy JPEG (grey for X-rays, colour for skin)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format="JPEG", quality=90)


def chexpert_row(path: str, view: str = "Frontal", **labels: str) -> dict[str, str]:
    """One CSV row; labels by name with spaces as underscores (``Pleural_Effusion="1.0"``)."""
    row = {"Path": path, "Sex": "Female", "Age": "63", "Frontal/Lateral": view}
    row["AP/PA"] = "AP" if view == "Frontal" else ""
    for name in CHEXPERT_LABELS:
        row[name] = labels.get(name.replace(" ", "_"), "")
    return row


def default_chexpert_rows(patients: int = 12, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """A dozen patients: 1-2 studies each, a lateral view for even patients, random labels.

    The last two patients go to valid.csv, the rest to train.csv.
    """
    rng = np.random.default_rng(seed)
    values = ["1.0", "0.0", "-1.0", ""]
    out: dict[str, list[dict[str, str]]] = {"train.csv": [], "valid.csv": []}
    for p in range(1, patients + 1):
        csv_name = "valid.csv" if p > patients - 2 else "train.csv"
        folder = "valid" if csv_name == "valid.csv" else "train"
        for study in range(1, 2 + p % 2):
            views = [("view1_frontal", "Frontal")]
            if p % 2 == 0 and study == 1:
                views.append(("view2_lateral", "Lateral"))
            for name, view in views:
                path = f"{DATASET_DIR}/{folder}/patient{p:05d}/study{study}/{name}.jpg"
                labels = {n.replace(" ", "_"): str(rng.choice(values)) for n in CHEXPERT_LABELS}
                out[csv_name].append(chexpert_row(path, view, **labels))
    return out


def write_chexpert(
    root: Path,
    rows: dict[str, list[dict[str, str]]] | None = None,
    size: tuple[int, int] = (24, 20),
    columns: list[str] | None = None,
    images: bool = True,
) -> dict[str, list[dict[str, str]]]:
    """Write ``<root>/CheXpert-v1.0-small/{train,valid}.csv`` and a JPEG for every row."""
    rows = default_chexpert_rows() if rows is None else rows
    columns = CHEXPERT_COLUMNS if columns is None else columns
    folder = root / DATASET_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, table) in enumerate(rows.items()):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)
        if images:
            for i, row in enumerate(table):
                target = root / row["Path"]
                if ".." not in row["Path"] and not row["Path"].startswith("/"):
                    write_jpeg(target, size, seed=1000 * k + i)
    return rows


def default_isic_rows(n: int = 16) -> list[dict[str, Any]]:
    """Ground-truth rows cycling MEL, NV, NV, BCC (so a quarter are dropped)."""
    cycle = ["MEL", "NV", "NV", "BCC"]
    out = []
    for i in range(n):
        label = cycle[i % len(cycle)]
        row: dict[str, Any] = {"image": f"ISIC_{i:07d}"}
        row.update({c: "1.0" if c == label else "0.0" for c in ISIC_CLASSES})
        out.append(row)
    return out


def write_isic(
    root: Path,
    rows: list[dict[str, Any]] | None = None,
    image_dir: str | None = "ISIC_2019_Training_Input",
    size: tuple[int, int] = (30, 24),
) -> list[dict[str, Any]]:
    """Write ``ISIC_2019_Training_GroundTruth.csv`` and ``<image_dir>/<id>.jpg`` per row."""
    rows = default_isic_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0].keys())
    with open(root / "ISIC_2019_Training_GroundTruth.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    folder = root / image_dir if image_dir else root
    for i, row in enumerate(rows):
        write_jpeg(folder / f"{row['image']}.jpg", size, seed=i, mode="RGB")
    return rows


def artifact_rows(ids: list[str], scores: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """Artifact rows for ``ids`` (all zero unless ``scores[id][artifact]`` says otherwise)."""
    scores = scores or {}
    out = []
    for image in ids:
        row: dict[str, Any] = {"image": f"{image}.png"}
        row.update({a: scores.get(image, {}).get(a, 0) for a in ARTIFACTS})
        row["label"] = 0
        row["label_string"] = "benign"
        out.append(row)
    return out


def write_artifacts(
    path: Path, rows: list[dict[str, Any]], sep: str = ";", index: bool = True
) -> Path:
    """Bissoto et al. format: ``;image;dark_corner;...;label;label_string`` (leading index)."""
    columns = ["image", *ARTIFACTS, "label", "label_string"]
    lines = [(sep if index else "") + sep.join(columns)]
    for i, row in enumerate(rows):
        cells = [str(row[c]) for c in columns]
        lines.append((f"{i}{sep}" if index else "") + sep.join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


PREP_PROMPTS = (
    "Normal chest X-ray with no significant findings",
    "Chest X-ray showing Support Devices",
    "Chest X-ray showing Pleural Effusion",
)


def write_prep(root: Path, n: int = 12, size: int = 32, seed: int = 0, test: int = 0) -> Path:
    """The one fake of a prepared CheXpert-like folder (``manifest.parquet`` + PNGs, the prepare
    stage's contract), for fine-tuning, the encoder cache, the VAE and classifiers: a bright body
    on dark with a 'heart' on the right, plus an off-centre 'device' bar (support_devices; a flip
    moves it) or an 'effusion' band (pleural_effusion) in turn, the rest no_finding. The last
    ``test`` images are the test split (classifiers need one), the two before them validation,
    the rest training."""
    import pandas as pd

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = [name.lower().replace(" ", "_") for name in CHEXPERT_LABELS]
    rows = []
    for i in range(n):
        kind = i % 3
        img = np.full((size, size, 3), 40, np.uint8)
        img[size // 8 : size - size // 8, size // 5 : size - size // 5] = 120 + rng.integers(30)
        if kind == 1:
            img[size // 4 : size // 4 + 4, size // 5 : size // 2] = 250
        img[size // 2 : size // 2 + 5, size // 2 : size // 2 + 6] = 170
        if kind == 2:
            img[size - size // 3 : size - size // 8, size // 5 : size - size // 5] = 200
        rel = f"images/img{i:03d}.png"
        Image.fromarray(img).save(root / rel)
        row: dict[str, Any] = {
            "image_id": f"img{i:03d}",
            "path": rel,
            "source_path": f"raw/patient{i:05d}/view1_frontal.jpg",
            "split": "train" if i < n - test - 2 else "val" if i < n - test else "test",
            "prompt": PREP_PROMPTS[kind],
            "patient_id": f"patient{i:05d}",
        }
        row.update(dict.fromkeys(labels, 0))
        row.update(
            no_finding=int(kind == 0),
            support_devices=int(kind == 1),
            pleural_effusion=int(kind == 2),
        )
        rows.append(row)
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    return root


def noise_pixels(seed: int, size: int = 32, grey: bool = False) -> np.ndarray:
    """A seeded noise image (uint8; RGB unless ``grey``)."""
    shape = (size, size) if grey else (size, size, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_shard(
    shard: Path,
    seeds: tuple[int, ...] | range = (0, 1),
    ks: tuple[int, ...] = (5, 10, 15, 45),
    frames: int = 4,
    pixels: Any = None,
    **columns: Any,
) -> Any:
    """The one fake of the traversal shard contract (what score, aggregate and the shortcut
    study read): per seed a neutral image ``images/<seed>/neutral.png``, a swap image
    ``images/<seed>/k<k:02d>.png`` per k, Bezier frames ``frames/<seed>/f<frame:03d>.png``, and
    ``meta.parquet`` with one row per image (seed, kind, k, frame, t, path, then ``columns`` as
    constants). ``pixels(seed, kind, k, frame)`` draws each image, called in row order (default:
    noise seeded by the image's path). Returns the meta table."""
    import pandas as pd

    rows = []
    for seed in seeds:
        items = [("neutral", -1, -1, float("nan"), f"images/{seed}/neutral.png")]
        items += [("swap", k, -1, float("nan"), f"images/{seed}/k{k:02d}.png") for k in ks]
        items += [
            ("bezier", -1, f, f / max(frames - 1, 1), f"frames/{seed}/f{f:03d}.png")
            for f in range(frames)
        ]
        for kind, k, frame, t, rel in items:
            (shard / rel).parent.mkdir(parents=True, exist_ok=True)
            if pixels is None:
                img = noise_pixels(zlib.crc32(rel.encode()))
            else:
                img = pixels(seed, kind, k, frame)
            Image.fromarray(img).save(shard / rel)
            row = {"seed": seed, "kind": kind, "k": k, "frame": frame, "t": t, "path": rel}
            rows.append({**row, **columns})
    shard.mkdir(parents=True, exist_ok=True)
    meta = pd.DataFrame(rows)
    meta.to_parquet(shard / "meta.parquet", index=False)
    return meta
