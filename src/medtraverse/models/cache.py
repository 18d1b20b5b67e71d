"""Encoder cache: the frozen VAE and text encoder run once per image and once per prompt.

Fine-tuning trains only the U-Net, so the VAE posterior of every training image and the CLIP
embedding of every distinct prompt are the same in every epoch. ``medtraverse cache`` computes
them once (DESIGN.md rule 5) and ``medtraverse finetune --cache`` reads them.

Stored per image (and per flipped image when ``flip`` is on): the posterior mean and std, so a
training step still samples ``latent = mean + std * noise`` as on-the-fly encoding would. Stored
per distinct prompt: the text encoder's last hidden state, with the empty prompt at index 0 (the
unconditional embedding used for prompt dropout). Layout of the cache folder::

    latents.safetensors   mean, std: float32 (rows, 4, h, w); rows = images (+ flipped images)
    prompts.safetensors   embeddings: float32 (prompts, 77, hidden); prompts[0] = ""
    index.parquet         row, image_id, flip (0/1), prompt_id
    cache.json            prompts, flip, resolution, model, scaling_factor, counts
    provenance.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.errors import bad_input
from medtraverse.core.io import atomic_path, check_output, read_safetensors
from medtraverse.core.params import load_params, parse_params, setting

if TYPE_CHECKING:
    import pandas as pd
    import torch

MANIFEST = "manifest.parquet"
MANIFEST_COLUMNS = ("image_id", "path", "split", "prompt")


# ----------------------------------------------------------------------------- manifest & images
def load_manifest(prep: str | Path, split: str | None = "train") -> pd.DataFrame:
    """The prepared manifest's rows of ``split`` (all rows when None), checked for the columns
    the model stages need."""
    import pandas as pd

    path = Path(prep) / MANIFEST
    if not path.is_file():
        raise bad_input(path, "not found", "a prepared dataset folder with manifest.parquet")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - a corrupt file is one line
        raise bad_input(path, f"unreadable ({type(err).__name__})", "a parquet manifest") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise bad_input(path, f"missing column {missing[0]!r}", f"columns {MANIFEST_COLUMNS}")
    if split is not None:
        frame = frame[frame["split"] == split]
    if frame.empty:
        raise bad_input(path, f"no rows with split == {split!r}", "at least one training image")
    if frame["image_id"].duplicated().any():
        dup = frame.loc[frame["image_id"].duplicated(), "image_id"].iloc[0]
        raise bad_input(path, f"duplicate image_id {dup!r}", "unique image ids")
    return frame.reset_index(drop=True)


def load_images(prep: str | Path, frame: pd.DataFrame, resolution: int) -> torch.Tensor:
    """The manifest's images as float32 (N, 3, H, W) in [-1, 1] (METHOD.md section 3)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    root = Path(prep).resolve()
    out = torch.empty(len(frame), 3, resolution, resolution)
    for i, (image_id, rel) in enumerate(zip(frame["image_id"], frame["path"], strict=True)):
        where = f"{Path(prep) / MANIFEST} row image_id={image_id!r}"
        path = (root / str(rel)).resolve()
        if not path.is_relative_to(root):
            raise bad_input(where, f"path {rel!r} escapes the dataset folder", "a relative path")
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except FileNotFoundError:
            raise bad_input(where, f"image {rel!r} not found", "an existing PNG") from None
        except (UnidentifiedImageError, OSError) as err:
            raise bad_input(where, f"image {rel!r} unreadable ({err})", "a valid PNG") from None
        if rgb.size != (resolution, resolution):
            raise bad_input(
                where, f"image is {rgb.size[0]}x{rgb.size[1]}", f"{resolution}x{resolution}"
            )
        array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
        out[i] = torch.from_numpy(array).permute(2, 0, 1)
    return out


# ----------------------------------------------------------------------------- the two encoders
def encode_images(vae: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior of images in [-1, 1]: (mean, std), unscaled, float32."""
    import torch

    with torch.no_grad():
        dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> torch.Tensor:
    """CLIP last hidden states of ``prompts`` (padded to the tokenizer's max length), as the
    pipeline computes them for generation, float32."""
    import torch

    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0].float()


# ----------------------------------------------------------------------------- the cache
@dataclass
class CacheParams:
    """``cache`` params."""

    flip: bool = setting(False, help="also cache horizontally flipped images")
    batch_size: int = setting(16, min=1, help="encoder batch")

    @classmethod
    def from_dict(cls, params: dict[str, Any], where: str = "params") -> CacheParams:
        """Typed settings, one-line errors naming the key."""
        return parse_params(cls, params, where)


@dataclass
class EncodedCache:
    """A cache folder in memory. ``rows`` of ``mean``/``std`` are indexed by (image, flip)."""

    mean: torch.Tensor
    std: torch.Tensor
    embeddings: torch.Tensor
    prompts: list[str]
    image_ids: list[str]
    row_of: dict[tuple[int, int], int]  # (image index, flip) -> row
    prompt_of_image: list[int]
    flip: bool
    meta: dict[str, Any]


def distinct_prompts(prompts: list[str]) -> tuple[list[str], list[int]]:
    """The empty prompt then the distinct prompts in first-seen order, and each input's index."""
    order: dict[str, int] = {"": 0}
    for prompt in prompts:
        order.setdefault(prompt, len(order))
    return list(order), [order[p] for p in prompts]


def build_cache(
    model: str | Path, prep: str | Path, out: str | Path, params: dict[str, Any]
) -> Path:
    """Encode the training split of ``prep`` with the frozen encoders of ``model``; write the
    cache folder ``out`` atomically with its provenance record."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from medtraverse.core import provenance
    from medtraverse.models.pipeline import load_pipeline, pipeline_resolution, resolve_base

    spec = CacheParams.from_dict(params)
    frame = load_manifest(prep, "train")
    pipe = load_pipeline(model)
    resolution = pipeline_resolution(pipe)
    images = load_images(prep, frame, resolution)
    prompts, prompt_ids = distinct_prompts([str(p) for p in frame["prompt"]])

    flips = [0, 1] if spec.flip else [0]
    means, stds, rows = [], [], []
    with tqdm(total=len(frame) * len(flips), desc="cache: images", unit="img") as bar:
        for flip in flips:
            for start in range(0, len(frame), spec.batch_size):
                batch = images[start : start + spec.batch_size]
                if flip:
                    batch = torch.flip(batch, dims=[-1])
                mean, std = encode_images(pipe.vae, batch)
                means.append(mean)
                stds.append(std)
                bar.update(len(batch))
            rows += [(i, flip) for i in range(len(frame))]
    embeddings = torch.cat(
        [
            encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts[s : s + spec.batch_size])
            for s in range(0, len(prompts), spec.batch_size)
        ]
    )
    index = pd.DataFrame(
        {
            "row": range(len(rows)),
            "image_id": [str(frame["image_id"].iloc[i]) for i, _ in rows],
            "flip": [f for _, f in rows],
            "prompt_id": [prompt_ids[i] for i, _ in rows],
        }
    )
    meta = {
        "prompts": prompts,
        "flip": spec.flip,
        "resolution": resolution,
        "model": resolve_base(model),
        "scaling_factor": float(pipe.vae.config.scaling_factor),
        "images": len(frame),
        "rows": len(rows),
    }
    out = Path(out)
    with atomic_path(out, stage="cache") as tmp:
        tmp.mkdir()
        save_file(
            {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()},
            str(tmp / "latents.safetensors"),
        )
        save_file({"embeddings": embeddings.contiguous()}, str(tmp / "prompts.safetensors"))
        index.to_parquet(tmp / "index.parquet", index=False)
        (tmp / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")
    provenance.record(
        out, stage="cache", params=params, inputs=[model, Path(prep) / MANIFEST], extra=meta
    )
    return out


def load_cache(path: str | Path) -> EncodedCache:
    """Read a cache folder written by :func:`build_cache`."""
    import pandas as pd

    path = Path(path)
    for name in ("latents.safetensors", "prompts.safetensors", "index.parquet", "cache.json"):
        if not (path / name).is_file():
            raise bad_input(path / name, "not found", "a cache folder made by medtraverse cache")
    meta = json.loads((path / "cache.json").read_text())
    what = "a cache folder made by medtraverse cache"
    latents = read_safetensors(path / "latents.safetensors", what)
    embeddings = read_safetensors(path / "prompts.safetensors", what)["embeddings"]
    index = pd.read_parquet(path / "index.parquet")
    image_ids = list(dict.fromkeys(index["image_id"].astype(str)))
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    row_of = {
        (position[str(i)], int(f)): int(r)
        for i, f, r in zip(index["image_id"], index["flip"], index["row"], strict=True)
    }
    prompt_of_image = [0] * len(image_ids)
    for image_id, prompt_id in zip(index["image_id"], index["prompt_id"], strict=True):
        prompt_of_image[position[str(image_id)]] = int(prompt_id)
    return EncodedCache(
        mean=latents["mean"],
        std=latents["std"],
        embeddings=embeddings,
        prompts=list(meta["prompts"]),
        image_ids=image_ids,
        row_of=row_of,
        prompt_of_image=prompt_of_image,
        flip=bool(meta["flip"]),
        meta=meta,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "--base", dest="model", type=Path, required=True, help="base pipeline folder"
    )
    add_prep_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="cache folder to write")
    parser.add_argument("--params", default="{}", help='JSON: {"flip": false, "batch_size": 16}')


def main(args: argparse.Namespace) -> None:
    check_output(args.out, "cache", "folder")  # before any work; never replaces user data
    print(build_cache(args.model, prep_folder(args), args.out, load_params(args.params)))


def add_prep_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prep DIR`` or ``--manifest DIR/manifest.parquet`` (the same dataset)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prep", type=Path, help="prepared dataset folder")
    group.add_argument("--manifest", type=Path, help="the prepared dataset's manifest.parquet")


def prep_folder(args: argparse.Namespace) -> Path:
    """The prepared dataset folder from ``--prep`` or ``--manifest``."""
    if args.prep is not None:
        return Path(args.prep)
    if Path(args.manifest).name != MANIFEST:
        raise bad_input(
            args.manifest, "not a manifest.parquet", "<prepared folder>/manifest.parquet"
        )
    return Path(args.manifest).parent
