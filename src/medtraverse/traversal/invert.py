"""Inversion of real images to the sampler's start latent (``medtraverse invert``).

Why
    Traversal edits images it generates from seeds; to ask "what would *this* patient's X-ray
    look like with a pleural effusion?" the image must first become a start latent ``z_T`` (and,
    for guided sampling, per-step unconditional embeddings) from which the sampler reproduces it.

Methods (``params.method``)
    - ``ddim``: deterministic DDIM inversion with the sampler's own timesteps and arithmetic
      (eta 0), conditional on the image's prompt at guidance 1, from ``z_0 = E(x)`` (the VAE
      posterior mean times ``scaling_factor``). The unconditional embedding of every step is the
      empty prompt's. Sampled back at guidance 7.5 it drifts away from the image.
    - ``null_text`` (default; Mokady et al., CVPR 2023): the DDIM inversion above is the pivot
      trajectory ``z_0 .. z_T``; walking back from ``z_T``, step ``i``'s unconditional embedding
      is optimised (Adam, ``inner_steps`` at most, learning rate ``learning_rate * (1 - i /
      (2 * steps))``, i.e. the paper's ``1e-2 * (1 - i / 100)`` at 50 steps) so that one guided
      DDIM step lands on the pivot's latent; it stops early once the step's latent MSE is below
      ``early_stop + i * early_stop_slope`` (the paper's ``1e-5 + i * 2e-5``). Each step starts
      from the previous step's optimised embedding (the empty prompt's for the first).

    Images of a block are optimised together: every image's loss depends on its own embedding
    only, the summed loss gives each the gradient of its own, Adam works per element, and an
    image that met its early stop keeps its embedding while its block-mates go on. Block-mates
    still change an image's bits (the U-Net's float results depend on the batch's row count,
    and Adam's normalised step turns that noise into +-lr moves of entries whose gradient is
    near zero), so blocks are fixed by the image's index, never by the shard.

Inputs
    ``--manifest`` a prepared dataset folder (its ``manifest.parquet``; ``params.split``,
    default ``test``, ``all`` for every split; each image's prompt is its own caption) or
    ``--images`` a CSV (column ``path``, optional ``image_id`` and ``prompt``; relative paths
    are relative to the CSV) or a folder of PNG/JPEG images (``image_id`` = file stem).
    ``params.prompt`` replaces every image's prompt. The selection is sorted by ``image_id``;
    a shard is its rows ``start .. start + count - 1``; images are batched in blocks
    ``index // batch_size``, so an image always meets the same batch-mates.

Shard layout (``--out``, e.g. ``results/<run>/inversions/<dataset>/shard-0000/``)
    - ``latents.safetensors``: float32 ``(4, h, w)`` per image: ``"<image_id>/z_T"`` (the start
      latent of ``method``), ``"<image_id>/z_0"`` (the encoded image), ``"<image_id>/recon"``
      (the reconstruction's final latent).
    - ``uncond.safetensors``: ``"<image_id>"``, float32 ``(steps, tokens, dim)``: the
      unconditional embedding of each denoising step (the empty prompt's, repeated, for ddim).
    - ``images/<image_id>/real.png`` (the image as inverted, at the model's resolution) and
      ``images/<image_id>/recon.png``.
    - ``inversion.parquet``: one row per image: ``image_id``, ``index``, ``source``, ``prompt``,
      ``method``, errors of the reconstruction against the image in [0, 1] pixels (``mse``,
      ``psnr``), of plain DDIM inversion sampled at the same guidance (``ddim_mse``,
      ``ddim_psnr``), and of the VAE alone (``vae_mse``, ``vae_psnr``: the floor), the latent
      MSEs, ``inner_steps_used``, paths, the settings, and the manifest's own
      label columns; ``latent_mse`` and ``ddim_latent_mse`` compare the final latents with
      ``z_0`` (the meaningful error on the untrained tiny model, whose VAE alone loses most of
      the image). LPIPS needs the evaluation backbones (a layer above): the score stage adds
      it from the two PNGs.
    - ``provenance.json``.

Crash safety
    As traversal shards: finished blocks go atomically to ``<out>.partial/`` (reused while the
    settings are unchanged), ``<out>`` is assembled atomically and the scratch removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.device import resolve_device
from medtraverse.core.errors import InputError, bad_input
from medtraverse.core.io import atomic_path, check_output
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.traversal import blocks as block_io

if TYPE_CHECKING:
    import pandas as pd
    import torch

STAGE = "invert"
METHODS = ("null_text", "ddim")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class InvertParams:
    """The invert stage's settings; defaults are Mokady et al.'s at the paper's sampler."""

    steps: int = setting(50, min=1, help="DDIM steps (the traversal sampler's)")
    guidance: float = setting(7.5, min=1.0, help="guidance the reconstruction is sampled at")
    method: str = setting("null_text", choices=METHODS, help="null_text or plain ddim")
    inner_steps: int = setting(10, min=0, help="null-text Adam steps per DDIM step (at most)")
    learning_rate: float = setting(1e-2, min=0.0, help="Adam rate at step 0 (halves by the end)")
    early_stop: float = setting(1e-5, min=0.0, help="stop a step when latent MSE < this + i*slope")
    early_stop_slope: float = setting(2e-5, min=0.0, help="per-step growth of early_stop")
    split: str = setting("test", help="manifest split to invert, or 'all'")
    where: dict[str, float] | None = setting(
        None, help='manifest labels the images must have, e.g. {"No Finding": 1}'
    )
    prompt: str | None = setting(None, help="one prompt for every image (else each caption)")
    batch_size: int = setting(4, min=1, help="images optimised together")
    device: str = setting("auto", help='"auto", "cpu", "cuda" or "cuda:<n>"')
    save_images: bool = setting(True, help="write real.png and recon.png")

    def validate(self, where: str) -> None:
        if self.prompt is not None and not self.prompt.strip():
            raise bad_input(f"{where}.prompt", "got an empty prompt", "a prompt or null")
        d = self.device
        if not (d in {"auto", "cpu", "mps"} or d.startswith("cuda")):
            raise bad_input(f"{where}.device", f"got {d!r}", '"auto", "cpu", "cuda" or "cuda:<n>"')

    def bits(self) -> dict[str, Any]:
        """The settings that change a result's bits (device and image saving excluded)."""
        out = asdict(self)
        for key in ("device", "save_images", "split", "where"):
            out.pop(key)
        return out


# --- the inverter -----------------------------------------------------------------------------


@dataclass
class Inversion:
    """One block's results, rows in the block's order (float32, CPU)."""

    z0: torch.Tensor  # (B, 4, h, w) the encoded images
    z_t: torch.Tensor  # (B, 4, h, w) start latents of the method
    uncond: torch.Tensor  # (steps, B, tokens, dim) per-step unconditional embeddings
    recon: torch.Tensor  # (B, 4, h, w) final latents sampled back at the guidance
    ddim_recon: torch.Tensor  # (B, 4, h, w) plain DDIM inversion sampled back at the guidance
    inner_used: list[int]  # Adam steps taken per image (0 for ddim)


class Inverter:
    """DDIM and null-text inversion on a loaded StableDiffusionPipeline (eta 0 throughout)."""

    def __init__(self, pipe: Any, params: InvertParams) -> None:
        import torch
        from diffusers import DDIMScheduler

        self.pipe = pipe
        self.params = params
        self.device = torch.device(pipe.device if hasattr(pipe, "device") else "cpu")
        self.unet = pipe.unet
        self.dtype = self.unet.dtype
        # The traversal sampler's own DDIM, whatever scheduler the folder ships.
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(params.steps, device=self.device)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.height = int(self.unet.config.sample_size) * self.vae_scale_factor
        if self.device.type == "cuda":  # the traversal engine's kernels, so its neutral run
            from diffusers.models.attention_processor import AttnProcessor2_0  # replays ours

            self.unet.set_attn_processor(AttnProcessor2_0())
            self.unet.to(memory_format=torch.channels_last)

    # -- pieces ----------------------------------------------------------------------------

    def _eps(self, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        x_in = self.scheduler.scale_model_input(x, t)
        return self.unet(x_in, t, encoder_hidden_states=hidden, return_dict=False)[0]

    def _alpha(self, t: int) -> torch.Tensor:
        """alpha_cumprod at train step ``t`` (the sampler's final alpha below 0)."""
        sch = self.scheduler
        return sch.alphas_cumprod[t] if t >= 0 else sch.final_alpha_cumprod

    def _down(self, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One DDIM denoising step, eta 0: the sampler's own ``step``."""
        return self.scheduler.step(eps, t, x, eta=0.0, return_dict=False)[0]

    def _guided(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> torch.Tensor:
        """One guided step as StableDiffusionPipeline does it ([uncond, cond] in one call)."""
        import torch

        pred = self._eps(torch.cat([x, x]), t, torch.cat([uncond, cond]))
        e_u, e_c = pred.chunk(2)
        return self._down(e_u + self.params.guidance * (e_c - e_u), t, x)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``z_0``: the VAE posterior mean (deterministic) times ``scaling_factor``."""
        import torch

        vae = self.pipe.vae
        with torch.no_grad():
            dist = vae.encode(images.to(self.device, vae.dtype)).latent_dist
        # contiguous: the VAE may hand back channels-last, whose U-Net kernels differ in the
        # last bits from the engine's (contiguous) latents
        return (dist.mean * vae.config.scaling_factor).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], float32 on the CPU."""
        import torch

        vae = self.pipe.vae
        with torch.no_grad():
            out = vae.decode(latents.to(self.device, vae.dtype) / vae.config.scaling_factor)[0]
        return (out.float().cpu() / 2 + 0.5).clamp(0, 1)

    # -- inversion -------------------------------------------------------------------------

    def ddim_inversion(self, z0: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        """The pivot trajectory ``[z_0, ..., z_T]``: the sampler's steps run backwards.

        Inverting denoising step ``i`` (timestep ``t``, from ``t_prev = t - T // steps``): the
        U-Net at ``t`` on the latent at ``t_prev``, the same arithmetic as diffusers'
        ``DDIMInverseScheduler``, guidance 1 (the prompt alone).
        """
        import torch

        sch = self.scheduler
        ratio = sch.config.num_train_timesteps // self.params.steps
        x = z0.to(self.dtype)
        out = [x]
        with torch.no_grad():
            for t in reversed(sch.timesteps):
                a_t, a_prev = self._alpha(int(t)), self._alpha(int(t) - ratio)
                eps = self._eps(x, t, cond)
                x0 = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
                x = a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps
                out.append(x)
        return out

    def sample(self, z_t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """Guided DDIM from ``z_t`` with per-step unconditional embeddings ``(steps, B, ...)``."""
        import torch

        x = z_t
        with torch.no_grad():
            for i, t in enumerate(self.scheduler.timesteps):
                x = self._guided(x, t, cond, uncond[i])
        return x

    def null_text(
        self,
        pivot: Sequence[torch.Tensor],
        cond: torch.Tensor,
        uncond0: torch.Tensor,
        on_inner: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Per-step unconditional embeddings fitted to the pivot; returns them ``(steps, B, ...)``,
        the final latent of the guided walk (the reconstruction) and Adam steps per image."""
        import torch

        p = self.params
        n = p.steps
        b = cond.shape[0]
        x = pivot[n]
        u = uncond0.detach().clone()
        used = [0] * b
        fitted = []
        for i, t in enumerate(self.scheduler.timesteps):
            target = pivot[n - 1 - i]
            with torch.no_grad():
                e_c = self._eps(x, t, cond)
            u = u.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([u], lr=p.learning_rate * (1.0 - i / (2.0 * n)))
            threshold = p.early_stop + i * p.early_stop_slope
            done = torch.zeros(b, dtype=torch.bool)
            for _ in range(p.inner_steps):
                with torch.enable_grad():
                    e_u = self._eps(x, t, u)
                    prev = self._down(e_u + p.guidance * (e_c - e_u), t, x)
                    loss = ((prev.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
                    opt.zero_grad(set_to_none=True)
                    loss.sum().backward()
                keep = u.detach().clone()
                opt.step()
                with torch.no_grad():
                    u[done.to(u.device)] = keep[done.to(u.device)]  # finished rows stay put
                for j in range(b):
                    used[j] += int(not done[j])
                done |= loss.detach().cpu() < threshold
                if on_inner is not None:
                    on_inner(i)
                if bool(done.all()):
                    break
            u = u.detach()
            fitted.append(u.clone())
            with torch.no_grad():  # the sampler's own guided step: the walk is what it samples
                x = self._guided(x, t, cond, u)
        return torch.stack(fitted), x, used

    def invert(
        self, images: torch.Tensor, prompts: Sequence[str], on_inner: Callable[[int], None] | None
    ) -> Inversion:
        """Invert one block of images in [-1, 1], ``(B, 3, H, W)``, with their prompts."""

        p = self.params
        cond, empty = self.pipe.encode_prompt(list(prompts), self.device, 1, True)
        z0 = self.encode_images(images).to(self.dtype)
        pivot = self.ddim_inversion(z0, cond)
        plain = empty.unsqueeze(0).expand(p.steps, -1, -1, -1)
        ddim_recon = self.sample(pivot[-1], cond, plain)
        if p.method == "null_text":
            unet_grad = [q.requires_grad for q in self.unet.parameters()]
            self.unet.requires_grad_(False)  # gradients flow to the embeddings only
            try:
                uncond, recon, used = self.null_text(pivot, cond, empty, on_inner)
            finally:
                for q, flag in zip(self.unet.parameters(), unet_grad, strict=True):
                    q.requires_grad_(flag)
        else:
            uncond, recon, used = plain, ddim_recon, [0] * len(prompts)
        return Inversion(
            z0=z0.float().cpu(),
            z_t=pivot[-1].float().cpu(),
            uncond=uncond.float().cpu().contiguous(),
            recon=recon.float().cpu(),
            ddim_recon=ddim_recon.float().cpu(),
            inner_used=used,
        )


def mse_psnr(a: torch.Tensor, b: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-image MSE and PSNR (dB, peak 1) of images in [0, 1], ``(B, C, H, W)``."""
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).tolist()
    psnr = [10 * math.log10(1.0 / m) if m > 0 else math.inf for m in mse]
    return mse, psnr


# --- inputs -----------------------------------------------------------------------------------


def select_images(
    *, manifest: Path | None = None, images: Path | None = None, params: InvertParams
) -> pd.DataFrame:
    """The images to invert, sorted by ``image_id``: ``image_id``, ``file`` (absolute),
    ``source`` (as given), ``prompt`` and the manifest's label columns."""
    import pandas as pd

    if (manifest is None) == (images is None):
        raise bad_input("input", "got both or neither", "--manifest DIR or --images CSV|FOLDER")
    if manifest is not None:
        table = manifest / "manifest.parquet" if manifest.is_dir() else manifest
        if not table.is_file():
            raise bad_input(manifest, "has no manifest.parquet", "a prepared dataset folder")
        rows = pd.read_parquet(table)
        if params.split != "all":
            present = sorted(set(rows["split"]))
            if params.split not in present:
                raise bad_input(
                    "params.split", f"got {params.split!r}", f"one of {present} or 'all'"
                )
            rows = rows[rows["split"] == params.split]
        for label, value in sorted((params.where or {}).items()):
            if label not in rows.columns:
                raise bad_input(f"params.where.{label}", "not a manifest column", "a label column")
            rows = rows[rows[label] == value]
        rows = rows.assign(file=[str(table.parent / p) for p in rows["path"]], source=rows["path"])
        rows = rows.drop(columns=["path", "source_path"], errors="ignore")
    elif images.is_dir():
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rows = pd.DataFrame(
            {
                "image_id": [p.stem for p in files],
                "file": [str(p) for p in files],
                "source": [p.name for p in files],
            }
        )
    elif images.is_file():
        rows = pd.read_csv(images, dtype=str, keep_default_na=False)
        if "path" not in rows:
            raise bad_input(images, "has no column 'path'", "a CSV with path[, image_id, prompt]")
        if "image_id" not in rows:
            rows["image_id"] = [Path(p).stem for p in rows["path"]]
        rows["file"] = [str(p if Path(p).is_absolute() else images.parent / p) for p in rows.path]
        rows = rows.rename(columns={"path": "source"})
    else:
        raise bad_input(images, "not found", "a CSV of image paths or a folder of images")
    if rows.empty:
        what = f"split {params.split}" + (f", labels {params.where}" if params.where else "")
        raise bad_input(manifest or images, "selects no images", f"images ({what})")
    rows["image_id"] = rows["image_id"].astype(str)
    dup = rows["image_id"][rows["image_id"].duplicated()]
    if len(dup):
        raise bad_input(manifest or images, f"image_id {dup.iloc[0]!r} twice", "unique image ids")
    bad = [i for i in rows["image_id"] if not i or "/" in i or i.startswith(".")]
    if bad:
        raise bad_input(manifest or images, f"image_id {bad[0]!r}", "ids without '/'")
    if params.prompt is not None:
        rows["prompt"] = params.prompt
    if "prompt" not in rows or (rows["prompt"].astype(str).str.strip() == "").any():
        raise bad_input(manifest or images, "an image has no prompt", "captions or params.prompt")
    missing = [f for f in rows["file"] if not Path(f).is_file()]
    if missing:
        raise bad_input(missing[0], "image file not found", "every selected image on disk")
    return rows.sort_values("image_id", kind="stable").reset_index(drop=True)


def load_images(files: Sequence[str], size: int) -> torch.Tensor:
    """RGB images resized (bicubic) to ``size``, as the VAE takes them: ``(B, 3, s, s)`` in
    [-1, 1]. A file that cannot be read is one line naming it."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BICUBIC)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as err:
            raise bad_input(f, f"cannot be read ({type(err).__name__})", "an image") from None
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out) * 2 - 1


def image_blocks(start: int, count: int, batch_size: int) -> list[list[int]]:
    """Row indices of the shard cut at multiples of ``batch_size`` (block ``index // size``)."""
    return block_io.cut_blocks(range(start, start + count), batch_size)


# --- shards -----------------------------------------------------------------------------------

IMAGE_BLOCKS = block_io.BlockNames("images", 7)  # scratch block folders images-<first>-<last>


def invert_shard(
    model: str | Path,
    out: str | Path,
    *,
    dataset: str,
    manifest: str | Path | None = None,
    images: str | Path | None = None,
    start: int = 0,
    count: int | None = None,
    params: InvertParams | dict[str, Any] | None = None,
    pipe: Any = None,
    on_block_done: Callable[[list[int]], None] | None = None,
    on_inner: Callable[[int], None] | None = None,
) -> Path:
    """Invert rows ``start .. start + count - 1`` of the selection into the shard ``out``
    atomically, resuming finished blocks from ``<out>.partial``."""
    import torch

    if not isinstance(params, InvertParams):
        params = parse_params(InvertParams, params or {})
    out, model = Path(out), Path(model)
    rows = select_images(
        manifest=Path(manifest) if manifest is not None else None,
        images=Path(images) if images is not None else None,
        params=params,
    )
    total = len(rows)
    if count is None:
        count = total - start
    if start < 0 or count < 1 or start >= total:
        raise bad_input("images", f"start {start}, count {count}", f"0 <= start < {total}")
    count = min(count, total - start)
    if pipe is None:
        from medtraverse.models.pipeline import load_pipeline

        pipe = load_pipeline(model, device=resolve_device(params.device))
    inv = Inverter(pipe, params)
    identity = {
        "model": str(model),
        "model_files": block_io.fingerprint(model),
        "code": block_io.fingerprint(Path(__file__)),
        "torch": torch.__version__,
        "device": inv.device.type,
        "dataset": dataset,
        "params": params.bits(),
        "save_images": params.save_images,
        "images": hashlib.sha256(
            rows[["image_id", "file", "prompt"]].to_json().encode()
        ).hexdigest(),
        "inputs": block_io.fingerprint(*(Path(f) for f in rows["file"][start : start + count])),
    }
    scratch = block_io.open_scratch(out, identity, STAGE)

    common = {
        "dataset": dataset,
        "method": params.method,
        "steps": params.steps,
        "guidance": params.guidance,
        "inner_steps": params.inner_steps,
        "learning_rate": params.learning_rate,
        "early_stop": params.early_stop,
        "early_stop_slope": params.early_stop_slope,
        "scheduler": type(inv.scheduler).__name__,
        "scheduler_config": json.dumps(dict(inv.scheduler.config), sort_keys=True, default=str),
        "model": str(model),
        "height": inv.height,
        "width": inv.height,
        "dtype": str(inv.dtype).removeprefix("torch."),
        "batch_size": params.batch_size,
    }
    blocks = image_blocks(start, count, params.batch_size)
    todo = IMAGE_BLOCKS.todo(scratch, blocks)
    desc = f"invert {dataset}"
    for block in block_io.run_blocks(
        todo, total=count, desc=desc, unit="image", on_block_done=on_block_done
    ):
        dest = IMAGE_BLOCKS.dir(scratch, block)
        _run_block(inv, rows.iloc[block], block, dest, common, on_inner)

    with atomic_path(out, stage=STAGE) as tmp:
        _assemble(scratch, blocks, tmp)
        block_io.record_shard(
            tmp,
            out,
            stage=STAGE,
            params=asdict(params),
            inputs=[p for p in (model, manifest, images) if p is not None and Path(p).exists()],
            seeds={"start": start, "count": count, "order": "image_id"},
            extra={"dataset": dataset, "device": str(inv.device), "torch": torch.__version__},
        )
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _run_block(
    inv: Inverter,
    rows: pd.DataFrame,
    block: list[int],
    dest: Path,
    common: dict[str, Any],
    on_inner: Callable[[int], None] | None,
) -> None:
    """Invert, reconstruct, measure and save one block into ``dest`` atomically."""
    import pandas as pd
    from safetensors.torch import save_file

    real = load_images(list(rows["file"]), inv.height)
    res = inv.invert(real, list(rows["prompt"]), on_inner)
    real01 = (real / 2 + 0.5).clamp(0, 1)
    recon = inv.decode(res.recon)
    mse, psnr = mse_psnr(recon, real01)
    ddim_mse, ddim_psnr = mse_psnr(inv.decode(res.ddim_recon), real01)
    vae_mse, vae_psnr = mse_psnr(inv.decode(res.z0), real01)
    lat_mse = ((res.recon.double() - res.z0.double()) ** 2).mean(dim=(1, 2, 3)).tolist()
    ddim_lat_mse = ((res.ddim_recon.double() - res.z0.double()) ** 2).mean(dim=(1, 2, 3)).tolist()
    ids = list(rows["image_id"])
    labels = [c for c in rows.columns if c not in {"file", "split"}]
    table = []
    for j, (index, image_id) in enumerate(zip(block, ids, strict=True)):
        save = inv.params.save_images
        table.append(
            {
                **{c: rows[c].iloc[j] for c in labels},
                "index": index,
                "mse": mse[j],
                "psnr": psnr[j],
                "ddim_mse": ddim_mse[j],
                "ddim_psnr": ddim_psnr[j],
                "vae_mse": vae_mse[j],
                "vae_psnr": vae_psnr[j],
                "latent_mse": lat_mse[j],
                "ddim_latent_mse": ddim_lat_mse[j],
                "inner_steps_used": res.inner_used[j],
                "real_path": f"images/{image_id}/real.png" if save else "",
                "recon_path": f"images/{image_id}/recon.png" if save else "",
                **common,
            }
        )
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        tensors = {}
        for j, image_id in enumerate(ids):
            tensors[f"{image_id}/z_T"] = res.z_t[j].contiguous()
            tensors[f"{image_id}/z_0"] = res.z0[j].contiguous()
            tensors[f"{image_id}/recon"] = res.recon[j].contiguous()
        save_file(tensors, str(tmp / "latents.safetensors"))
        save_file(
            {image_id: res.uncond[:, j].contiguous() for j, image_id in enumerate(ids)},
            str(tmp / "uncond.safetensors"),
        )
        if inv.params.save_images:
            from PIL import Image

            for j, image_id in enumerate(ids):
                (tmp / "images" / image_id).mkdir(parents=True)
                for name, img in (("real", real01[j]), ("recon", recon[j])):
                    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
                    Image.fromarray(arr).save(tmp / "images" / image_id / f"{name}.png")
        pd.DataFrame(table).to_parquet(tmp / "rows.parquet", index=False)


def _assemble(scratch: Path, blocks: list[list[int]], dest: Path) -> None:
    """Merge the finished blocks into the shard folder ``dest``."""
    table = block_io.gather_blocks(
        scratch,
        blocks,
        IMAGE_BLOCKS,
        dest,
        tensors=("latents.safetensors", "uncond.safetensors"),
        folders=("images",),
    ).sort_values("index", kind="stable")
    table.reset_index(drop=True).to_parquet(dest / "inversion.parquet", index=False)


def read_inversion(shard: str | Path) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """An inversion shard's table, latents and per-step unconditional embeddings."""
    import pandas as pd

    from medtraverse.core.io import read_safetensors

    shard = Path(shard)
    if not (shard / "inversion.parquet").is_file():
        raise bad_input(shard, "has no inversion.parquet", "an inversion shard folder")
    table = pd.read_parquet(shard / "inversion.parquet")
    latents = read_safetensors(shard / "latents.safetensors", "inversion latents")
    uncond = read_safetensors(shard / "uncond.safetensors", "null-text embeddings")
    return table, latents, uncond


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="StableDiffusionPipeline folder")
    parser.add_argument("--out", type=Path, required=True, help="the shard folder to write")
    parser.add_argument("--dataset", required=True, help="dataset name (recorded in the table)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="a prepared dataset folder")
    src.add_argument("--images", type=Path, help="a CSV (path[, image_id, prompt]) or a folder")
    parser.add_argument("--start", type=int, default=0, help="first row of the sorted selection")
    parser.add_argument("--count", type=int, help="number of images (default: to the end)")
    parser.add_argument("--params", default="", help="JSON object or @file (invert.params)")


def main(args: argparse.Namespace) -> None:
    check_output(args.out, STAGE, "folder")  # before any work; never replaces user data
    block_io.check_scratch(block_io.scratch_of(args.out), STAGE)
    params = parse_params(InvertParams, load_params(args.params))
    if args.count is not None and args.count < 1:
        raise InputError(f"--count: got {args.count}; expected an integer >= 1")
    out = invert_shard(
        args.model,
        args.out,
        dataset=args.dataset,
        manifest=args.manifest,
        images=args.images,
        start=args.start,
        count=args.count,
        params=params,
    )
    print(f"medtraverse invert: wrote {out}", file=sys.stderr)
