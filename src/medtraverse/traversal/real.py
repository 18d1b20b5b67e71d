"""Traversal from real images (``medtraverse traverse-real``): one shard of swap trajectories
and Bezier frames starting from an inversion shard's ``z_T`` and per-step unconditional
embeddings, on the same engine and shared prefix as seed traversal (``traversal.engine``).

Why
    The neutral run of an inverted image is its reconstruction (the inversion fitted the
    embeddings to the image's own prompt), so every swap is a counterfactual of *that* image.
    The neutral prompt is therefore each image's inversion prompt (its caption, or the
    inversion's configured prompt), unless ``params.neutral`` names one for all; the attribute
    prompt is the trajectory's. ``steps`` and ``guidance`` must be the inversion's, ``eta`` 0.

Shard layout: a seed shard's (``traversal.engine``), keyed by image id instead of seed:
``latents.safetensors`` keys ``"<image_id>/neutral"``, ``"<image_id>/k<k>"``; images
``images/<image_id>/neutral.png``, ``k<kk>.png`` and the real image ``real.png``; frames
``frames/<image_id>/f<fff>.png``; ``meta.parquet`` with the seed shard's columns, where ``seed``
is the image's index in the inversion (so downstream grouping by seed works), plus
``image_id``, ``real_path`` (the real image in the shard) and ``inversion`` (the shard it came
from); ``provenance.json``. Blocks ``index // batch_size`` resume from ``<out>.partial/``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.device import resolve_device
from medtraverse.core.errors import bad_input
from medtraverse.core.io import atomic_path, check_output
from medtraverse.core.params import load_params
from medtraverse.traversal.blocks import (
    check_scratch,
    fingerprint,
    gather_blocks,
    open_scratch,
    record_shard,
    scratch_of,
)
from medtraverse.traversal.engine import (
    FOLDERS,
    Embeddings,
    TraversalEngine,
    TraverseParams,
    frame_path,
    image_path,
    latent_key,
    sort_meta,
)
from medtraverse.traversal.invert import IMAGE_BLOCKS, image_blocks, read_inversion

if TYPE_CHECKING:
    import pandas as pd

STAGE = "traverse-real"


def _params(params: TraverseParams | Mapping[str, Any] | None) -> TraverseParams:
    if isinstance(params, TraverseParams):
        return params
    return TraverseParams.from_dict(dict(params or {}))


def traverse_images_shard(
    model: str | Path,
    out: str | Path,
    *,
    inversion: str | Path,
    dataset: str,
    trajectory: str,
    attribute: str,
    params: TraverseParams | Mapping[str, Any] | None = None,
    pipe: Any = None,
    on_block_done: Callable[[list[int]], None] | None = None,
) -> Path:
    """Write the real-image shard ``out`` for every image of the inversion shard ``inversion``."""
    import torch

    params = _params(params)
    out, model, inversion = Path(out), Path(model), Path(inversion)
    table, latents, uncond = read_inversion(inversion)
    row0 = table.iloc[0]
    for key in ("steps", "guidance"):
        if float(getattr(params, key)) != float(row0[key]):
            raise bad_input(
                f"params.{key}", f"got {getattr(params, key)}", f"the inversion's {row0[key]}"
            )
    if params.eta != 0:
        raise bad_input("params.eta", f"got {params.eta}", "0 (inversion is deterministic)")
    if not isinstance(attribute, str) or not attribute.strip():
        raise bad_input("attribute", f"got {attribute!r}", "a non-empty prompt")
    if pipe is None:
        from medtraverse.models.pipeline import load_pipeline

        pipe = load_pipeline(
            model, dtype=getattr(torch, params.dtype), device=resolve_device(params.device)
        )
    engine = TraversalEngine(pipe, params)
    identity = {
        "model": str(model),
        "model_files": fingerprint(model),
        "code": fingerprint(
            *(Path(__file__).with_name(f) for f in ("real.py", "engine.py", "bezier.py"))
        ),
        "inversion": fingerprint(inversion),
        "torch": torch.__version__,
        "device": engine.device.type,
        "dataset": dataset,
        "trajectory": trajectory,
        "attribute": attribute,
        "params": params.sampler_dict(),
        "neutral": params.neutral,
        "save_images": params.save_images,
        "decode_batch_size": params.decode_batch_size,
    }
    scratch = open_scratch(out, identity, STAGE)

    index = {int(i): r for i, r in zip(table["index"], table.itertuples(), strict=True)}
    first, last = min(index), max(index)
    blocks = [
        [i for i in blk if i in index]
        for blk in image_blocks(first, last - first + 1, params.batch_size)
    ]
    blocks = [blk for blk in blocks if blk]
    p = params
    keys: list[str | int] = ["neutral", *p.swap_steps]
    frames = p.bezier_frames if p.save_images else 0
    for block in blocks:
        dest = IMAGE_BLOCKS.dir(scratch, block)
        if dest.is_dir():
            continue
        rows = [index[i] for i in block]
        ids = [str(r.image_id) for r in rows]
        prompts = [p.neutral or str(r.prompt) for r in rows]
        e_neutral, empty = pipe.encode_prompt(prompts, engine.device, 1, True)
        e_attr, _ = pipe.encode_prompt(attribute, engine.device, 1, True)
        emb = Embeddings(neutral=e_neutral, attribute=e_attr, uncond=empty[:1])
        start = torch.stack([latents[f"{i}/z_T"] for i in ids])
        steps_u = torch.stack([uncond[i] for i in ids], dim=1).contiguous()  # as fitted
        lat = engine.generate(block, emb, start=start, uncond_steps=steps_u)
        _save_block(engine, dest, block, ids, prompts, attribute, lat, keys, frames, inversion)
        if on_block_done is not None:
            on_block_done(block)

    with atomic_path(out, stage=STAGE) as tmp:
        meta = sort_meta(gather_blocks(scratch, blocks, IMAGE_BLOCKS, tmp, folders=FOLDERS))
        meta.reset_index(drop=True).to_parquet(tmp / "meta.parquet")
        record_shard(
            tmp,
            out,
            stage=STAGE,
            params={**asdict(params), "attribute": attribute},
            inputs=[q for q in (model, inversion) if q.exists()],
            seeds={"images": [str(i) for i in table["image_id"]], "from": str(inversion)},
            extra={"dataset": dataset, "trajectory": trajectory, "device": str(engine.device)},
        )
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _save_block(
    engine: TraversalEngine,
    dest: Path,
    block: list[int],
    ids: list[str],
    prompts: list[str],
    attribute: str,
    lat: dict[str | int, Any],
    keys: list[str | int],
    frames: int,
    inversion: Path,
) -> None:
    """Decode and save one block (latents, images, frames, rows) into ``dest`` atomically."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    from medtraverse.traversal.bezier import bezier_curve, control_points, frame_times

    p = engine.params
    ts = frame_times(frames)
    common = {
        "attribute_prompt": attribute,
        "steps": p.steps,
        "guidance": p.guidance,
        "eta": p.eta,
        "scheduler": type(engine.scheduler).__name__,
        "swap_steps": json.dumps(list(p.swap_steps)),
        "schedule": p.schedule,
        "lambdas": json.dumps(list(p.lambdas) if p.lambdas is not None else None),
        "height": engine.height,
        "width": engine.width,
        "dtype": p.dtype,
        "batch_size": p.batch_size,
        "batching": p.resolved_batching,
        "inversion": str(inversion),
    }
    rows: list[dict[str, Any]] = []
    for j, (index, image_id) in enumerate(zip(block, ids, strict=True)):
        base = {
            "seed": index,
            "image_id": image_id,
            "neutral_prompt": prompts[j],
            "real_path": f"images/{image_id}/real.png" if p.save_images else "",
            **common,
        }
        for key in keys:
            rows.append(
                {
                    **base,
                    "kind": "neutral" if key == "neutral" else "swap",
                    "k": -1 if key == "neutral" else int(key),
                    "frame": -1,
                    "t": math.nan,
                    "path": image_path(image_id, key) if p.save_images else "",  # type: ignore[arg-type]
                    "latent": latent_key(image_id, key),  # type: ignore[arg-type]
                    "prompt": prompts[j] if key == "neutral" else attribute,
                }
            )
        for f in range(frames):
            rows.append(
                {
                    **base,
                    "kind": "bezier",
                    "k": -1,
                    "frame": f,
                    "t": float(ts[f]),
                    "path": frame_path(image_id, f),  # type: ignore[arg-type]
                    "latent": "",
                    "prompt": attribute,
                }
            )
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        save_file(
            {
                latent_key(i, key): lat[key][j].contiguous()  # type: ignore[arg-type]
                for j, i in enumerate(ids)
                for key in keys
            },
            str(tmp / "latents.safetensors"),
        )
        if p.save_images:
            stacked = [lat[key] for key in keys]
            paths = [image_path(i, key) for key in keys for i in ids]  # type: ignore[arg-type]
            if frames:
                for j, i in enumerate(ids):
                    points = control_points({key: lat[key][j] for key in keys}, p.swap_steps)
                    stacked.append(bezier_curve(points, ts))
                    paths += [frame_path(i, f) for f in range(frames)]  # type: ignore[arg-type]
            for rel, image in zip(paths, engine.decode(torch.cat(stacked)), strict=True):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                image.save(tmp / rel, format="PNG")
            for i in ids:
                src = inversion / "images" / i / "real.png"
                if src.is_file():
                    shutil.copy2(src, tmp / "images" / i / "real.png")
        pd.DataFrame(rows).to_parquet(tmp / "rows.parquet", index=False)


def read_real_meta(shard: str | Path) -> pd.DataFrame:
    """A real-image shard's meta.parquet."""
    import pandas as pd

    return pd.read_parquet(Path(shard) / "meta.parquet")


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="StableDiffusionPipeline folder")
    parser.add_argument("--inversion", type=Path, required=True, help="an invert shard folder")
    parser.add_argument("--out", type=Path, required=True, help="the shard folder to write")
    parser.add_argument("--dataset", required=True, help="dataset name (recorded in meta)")
    parser.add_argument("--trajectory", required=True, help="trajectory name (recorded in meta)")
    parser.add_argument("--attribute", help="attribute prompt (or params.attribute)")
    parser.add_argument("--params", default="", help="JSON object or @file (traverse.params)")


def main(args: argparse.Namespace) -> None:
    check_output(args.out, STAGE, "folder")
    check_scratch(scratch_of(args.out), STAGE)
    params = TraverseParams.from_dict(load_params(args.params))
    attribute = args.attribute or params.attribute
    if attribute is None:
        raise bad_input("--attribute", "missing", "--attribute TEXT or params.attribute")
    out = traverse_images_shard(
        args.model,
        args.out,
        inversion=args.inversion,
        dataset=args.dataset,
        trajectory=args.trajectory,
        attribute=attribute,
        params=params,
    )
    print(f"medtraverse traverse-real: wrote {out}", file=sys.stderr)
