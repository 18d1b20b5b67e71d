"""Classifier probabilities for every generated image of one traversal shard.

``medtraverse score --shard SHARD_DIR --classifier DIR [--classifier DIR ...] --out PARQUET
--params JSON``

Reads ``<shard>/meta.parquet`` (one row per image: neutral, swaps, Bezier frames) and writes one
parquet with the meta columns ``seed, kind, k, frame, t, path`` (plus ``dataset``, ``trajectory``
when the meta has them, and ``shard``, the shard folder's name) and one ``p_<attribute>`` column
per attribute of every classifier (sigmoid outputs). Batched, no_grad, float16 autocast on CUDA.
Attribute names must be unique across the classifiers.

Optional columns:

- ``truth_<factor>``: the synthetic twins' ground-truth detector scores, when the param
  ``truth_detector`` is "chexpert" or "isic" (``medtraverse.data.synth.detect.detect_<name>``).
- ``id_<factor>``: with ``truth_detector``, the twin's identity measurements
  (``detect.<name>_identity``: anatomy or lesion and skin, in fractions of the image), which an
  edit should leave alone.
- ``lpips`` (+ ``lpips_backbone``): LPIPS of each swap to the seed's neutral image and of each
  Bezier frame to frame 0 (0 for the reference images themselves), when the param
  ``lpips_backbone`` is set ("alex" or "random"; see backbones.py). Computing it here keeps the
  GPU work sharded; aggregate uses this column when present and computes LPIPS itself otherwise.

Real-image shards (``traversal.real``: meta with a ``real_path`` column) also get one row of kind
``real`` per image, before its other rows: the real image itself (``seed``, ``image_id`` as its
other rows, ``k`` and ``frame`` -1 and ``t`` NaN as for neutral), scored like every row; the
score file then keeps ``image_id``, and with ``lpips_backbone`` set gets ``lpips_real``: LPIPS of
each row's image to its real image (0 for the real row). ``lpips`` keeps its meaning: to the
neutral image, which here is the reconstruction (so the real row's ``lpips`` is the
reconstruction's distance to it).

Params: batch_size 64, device "auto", amp true, truth_detector None, lpips_backbone None,
lpips_alexnet_path None, lpips_random_seed 0.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtraverse.core.errors import InputError, bad_input
from medtraverse.core.params import load_params, parse_params, setting

META_COLUMNS = ("seed", "kind", "k", "frame", "t", "path")
KINDS = ("neutral", "swap", "bezier")  # a shard's meta.parquet
SCORE_KINDS = (*KINDS, "real")  # a score file (real: real-image shards only)
TRUTH_DETECTORS = ("chexpert", "isic")


@dataclass(frozen=True)
class ScoreParams:
    """The score stage's settings (``datasets.<d>.score``)."""

    batch_size: int = setting(64, min=1, help="images a classifier sees at once")
    device: str = setting("auto", help='"auto", "cpu", "cuda" or "cuda:<n>"')
    amp: bool = setting(True, help="mixed precision on CUDA")
    truth_detector: str | None = setting(
        None, choices=(None, *TRUTH_DETECTORS), help="the twin's pixel detectors (ground truth)"
    )
    lpips_backbone: str | None = setting(
        None, choices=(None, "alex", "alexnet", "random"), help="LPIPS here (null: in aggregate)"
    )
    lpips_alexnet_path: str | None = setting(None, help="AlexNet weights (torch hub cache)")
    lpips_random_seed: int = setting(0, min=0, help="seed of the random LPIPS trunk")
    lpips_batch_size: int = setting(32, min=1, help="image pairs per LPIPS call")

    def lpips(self) -> dict[str, Any]:
        """The LPIPS settings as the backbones module reads them (unset ones left out)."""
        return {k: v for k, v in asdict(self).items() if k.startswith("lpips") and v is not None}


def read_shard_meta(shard: Path) -> pd.DataFrame:
    """The shard's meta.parquet with absolute paths in ``abs_path``; one-line errors."""
    from medtraverse.core.io import read_parquet

    meta_path = shard / "meta.parquet"
    if not meta_path.is_file():
        raise bad_input(meta_path, "not found", "a traversal shard folder with meta.parquet")
    meta = read_parquet(meta_path, "a parquet file")
    for col in META_COLUMNS:
        if col not in meta.columns:
            raise bad_input(meta_path, f"no column {col!r}", f"columns {', '.join(META_COLUMNS)}")
    bad = ~meta["kind"].isin(KINDS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise bad_input(
            f"{meta_path} row {row}", f"kind {meta['kind'].iloc[row]!r}", "neutral, swap or bezier"
        )
    meta = meta.reset_index(drop=True).copy()
    meta["abs_path"] = _shard_paths(shard, meta["path"], "path")
    return meta


def _shard_paths(shard: Path, rels: Any, column: str) -> list[Path]:
    """Absolute paths of the images ``rels`` (a meta column), each inside the shard and present."""
    meta_path = shard / "meta.parquet"
    root = shard.resolve()
    paths = []
    for row, rel in enumerate(rels):
        path = (root / str(rel)).resolve()
        if not path.is_relative_to(root):
            raise bad_input(
                f"{meta_path} row {row}",
                f"{column} {rel!r} escapes the shard",
                "a path inside the shard",
            )
        if not str(rel) or not path.is_file():
            raise bad_input(f"{meta_path} row {row}", f"image {rel!r} not found", "an existing PNG")
        paths.append(path)
    return paths


def with_real_rows(meta: pd.DataFrame, shard: Path) -> pd.DataFrame:
    """``meta`` (from ``read_shard_meta``) with a row of kind ``real`` before each image's rows
    when it is a real-image shard (a ``real_path`` column); unchanged otherwise."""
    if "real_path" not in meta.columns:
        return meta
    first = ~meta["seed"].duplicated()
    real = meta[first].copy()
    real["abs_path"] = _shard_paths(shard, real["real_path"], "real_path")
    real["kind"], real["k"], real["frame"], real["t"] = "real", -1, -1, np.nan
    real["path"] = real["real_path"]
    rank = {seed: i for i, seed in enumerate(meta.loc[first, "seed"])}
    both = pd.concat([real, meta], ignore_index=True)
    order = np.lexsort((both["kind"] != "real", both["seed"].map(rank).to_numpy()))
    return both.iloc[order].reset_index(drop=True)


def _load_detector(name: str, pattern: str = "detect_{}") -> Any:
    """``medtraverse.data.synth.detect``'s function ``pattern`` for the twin ``name``
    (``detect_{}``: the findings, ``{}_identity``: the identity measurements)."""
    try:
        from medtraverse.data.synth import detect
    except ImportError as err:
        raise InputError(
            f"params.truth_detector: {name!r} needs medtraverse.data.synth.detect ({err}); "
            "expected the synth package to be installed"
        ) from None
    fn = getattr(detect, pattern.format(name), None)
    if fn is None:
        raise bad_input(
            "params.truth_detector",
            f"medtraverse.data.synth.detect has no {pattern.format(name)}",
            " or ".join(pattern.format(n) for n in TRUTH_DETECTORS),
        )
    return fn


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def lpips_column(
    meta: pd.DataFrame,
    params: dict[str, Any],
    device: str,
    reference: str = "neutral",
    loaded: tuple[Any, str] | None = None,
) -> tuple[np.ndarray, str]:
    """LPIPS of each row to its reference, at the images' own resolution, inputs in [-1, 1];
    images are read again batch by batch (only the reference images stay in memory).

    ``reference`` "neutral": the seed's neutral image for swaps (and real rows), frame 0 for
    frames (0 for the neutral image); "real": the seed's ``real`` row (0 for that row).
    ``loaded``: the (model, label) of ``backbones.load_lpips``, to load it once for both."""
    import torch

    from medtraverse.evaluation.backbones import load_lpips
    from medtraverse.evaluation.metrics import lpips_distances

    model, label = loaded if loaded is not None else load_lpips(params, device)
    ref_of: dict[tuple[int, str], Path] = {}
    for seed, kind, frame, path in zip(
        meta["seed"], meta["kind"], meta["frame"], meta["abs_path"], strict=True
    ):
        if kind == "neutral" and reference == "neutral":
            ref_of[(int(seed), "swap")] = path
        elif kind == "bezier" and int(frame) == 0 and reference == "neutral":
            ref_of[(int(seed), "bezier")] = path
        elif kind == "real" and reference == "real":
            ref_of[(int(seed), "real")] = path

    def ref_kind(kind: str) -> str:
        if reference == "real":
            return "real"
        return "bezier" if kind == "bezier" else "swap"

    values = np.zeros(len(meta))
    pairs = [
        (i, ref_of.get((int(s), ref_kind(k))), p)
        for i, (s, k, p) in enumerate(
            zip(meta["seed"], meta["kind"], meta["abs_path"], strict=True)
        )
        if k != ("real" if reference == "real" else "neutral")
    ]
    for i, ref, _ in pairs:
        if ref is None:
            row = meta.iloc[i]
            what = {"swap": "neutral image", "bezier": "bezier frame 0", "real": "real image"}[
                ref_kind(row["kind"])
            ]
            raise bad_input(
                f"meta.parquet row {i}",
                f"seed {row['seed']} has no {what}",
                "a reference image for LPIPS",
            )
    batch = int(params.get("lpips_batch_size", 32))
    refs: dict[Path, np.ndarray] = {}

    def as_tensor(paths: list[Path], cache: bool = False) -> Any:
        if cache:
            for q in paths:
                if q not in refs:
                    refs[q] = _read_rgb(q)
            arr = np.stack([refs[q] for q in paths])
        else:
            arr = np.stack([_read_rgb(q) for q in paths])
        if min(arr.shape[1:3]) < 32:
            raise bad_input(
                paths[0],
                f"image of {arr.shape[2]}x{arr.shape[1]} px",
                "at least 32 px for LPIPS (AlexNet)",
            )
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)

    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        a, b = as_tensor([c[1] for c in chunk], cache=True), as_tensor([c[2] for c in chunk])
        d = lpips_distances(model, a, b, batch)
        values[[c[0] for c in chunk]] = d
    return values, label


def score_shard(
    shard: str | Path, classifiers: list[str | Path], out: str | Path, params: dict[str, Any]
) -> pd.DataFrame:
    """Score every image of ``shard`` with every classifier and write ``out`` (parquet)."""
    from tqdm import tqdm

    from medtraverse.core import provenance
    from medtraverse.core.device import resolve_device
    from medtraverse.core.io import write_parquet
    from medtraverse.evaluation.classify import load_classifier, load_image

    shard, out = Path(shard), Path(out)
    spec = parse_params(ScoreParams, params)
    batch_size, detector_name = spec.batch_size, spec.truth_detector
    if not classifiers:
        raise InputError("--classifier: none given; expected at least one classifier folder")
    if spec.lpips_backbone is not None:
        from medtraverse.evaluation.backbones import check_backbones

        check_backbones(spec.lpips())
    detector = _load_detector(detector_name) if detector_name else None
    identity = _load_detector(detector_name, "{}_identity") if detector_name else None
    meta = with_real_rows(read_shard_meta(shard), shard)
    real = bool((meta["kind"] == "real").any())
    device = resolve_device(spec.device)
    amp = spec.amp
    models = [load_classifier(c, device=device, amp=amp) for c in classifiers]
    seen: dict[str, Path] = {}
    for folder, model in zip(classifiers, models, strict=True):
        for attr in model.attributes:
            if attr in seen:
                raise bad_input(
                    folder,
                    f"attribute {attr!r} also in {seen[attr]}",
                    "unique attributes across classifiers",
                )
            seen[attr] = Path(folder)

    extra = ("dataset", "trajectory", "image_id") if real else ("dataset", "trajectory")
    keep = [c for c in (*META_COLUMNS, *extra) if c in meta.columns]
    table = meta[keep].copy()
    table["shard"] = shard.name
    probs = {attr: np.zeros(len(meta), dtype=np.float64) for attr in seen}
    truths: dict[str, np.ndarray] = {}
    ids: dict[str, np.ndarray] = {}
    paths = list(meta["abs_path"])
    for start in tqdm(range(0, len(paths), batch_size), desc=f"score {shard.name}", disable=None):
        chunk = paths[start : start + batch_size]
        native = [_read_rgb(path) for path in chunk]
        for model in models:
            sized = [
                im if im.shape[:2] == (model.image_size,) * 2 else load_image(q, model.image_size)
                for im, q in zip(native, chunk, strict=True)
            ]
            p = model.predict_proba(np.stack(sized), batch_size=batch_size)
            for j, attr in enumerate(model.attributes):
                probs[attr][start : start + len(chunk)] = p[:, j]
        if detector is not None:
            for offset, im in enumerate(native):
                for found, fn in ((truths, detector), (ids, identity)):
                    for factor, value in fn(im).items():
                        found.setdefault(factor, np.full(len(meta), np.nan))[start + offset] = (
                            float(value)
                        )
    for attr, values in probs.items():
        table[f"p_{attr}"] = values
    for factor, values in sorted(truths.items()):
        table[f"truth_{factor}"] = values
    for factor, values in sorted(ids.items()):
        table[f"id_{factor}"] = values
    if spec.lpips_backbone is not None:
        from medtraverse.evaluation.backbones import load_lpips

        loaded = load_lpips(spec.lpips(), device)  # once, for both columns
        table["lpips"], table["lpips_backbone"] = lpips_column(
            meta, spec.lpips(), device, loaded=loaded
        )
        if real:
            table["lpips_real"] = lpips_column(
                meta, spec.lpips(), device, reference="real", loaded=loaded
            )[0]
    write_parquet(table, out, stage="score")
    provenance.record(
        out,
        stage="score",
        params=params,
        inputs=[shard, *classifiers],
        extra={
            "rows": len(table),
            "attributes": list(seen),
            "device": device,
            "truth_detector": detector_name,
            **({"real_images": int((meta["kind"] == "real").sum())} if real else {}),
        },
    )
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard", type=Path, required=True, help="traversal shard folder (meta.parquet, images)"
    )
    parser.add_argument(
        "--classifier",
        type=Path,
        action="append",
        required=True,
        help="classifier folder (repeat for several)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output parquet")
    parser.add_argument("--params", default="{}", help="score params as JSON or @file")


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.io import check_output

    check_output(args.out, "score", "file")  # before any work; never replaces user data
    table = score_shard(args.shard, args.classifier, args.out, load_params(args.params))
    print(f"score: {len(table)} images -> {args.out}", file=sys.stderr)
