"""Traversal engine: one shard of swap trajectories and Bezier frames (METHOD.md sections 4-5).

What a trajectory is
    One (neutral prompt ``e``, attribute prompt ``e'``) pair of a dataset. For every seed the
    neutral run denoises all ``steps`` DDIM steps with ``e``; the swap at step ``k`` uses ``e``
    for steps ``0..k`` and ``e'`` for steps ``k+1..steps-1``, exactly as the authors' stock
    ``StableDiffusionPipeline`` call with a ``callback_on_step_end`` that replaces
    ``prompt_embeds`` at the end of step ``k``. The unconditional (empty prompt) embedding is
    never swapped. With ``schedule="mix"`` (Wu et al., CVPR 2023), steps ``k+1..`` use
    ``lambda_i * e + (1 - lambda_i) * e'`` instead; the hard swap is ``lambda_i = 0`` there.

Shared prefix
    Steps ``0..k`` of swap ``k`` are the neutral run's, so the neutral run is computed once and
    its latents after step ``k`` seed branch ``k``: 266 U-Net evaluations per seed instead of the
    authors' 500 for 50 steps and k in {5, ..., 45} (guidance pairs counted once). Batchings:

    - ``batching="auto"`` (default): ``branch`` at ``batch_size: 1``, where it reproduces the
      authors' one-seed calls bit for bit, else ``wavefront`` (faster; at several seeds per batch
      the stock pipeline itself only agrees with its batch-1 self within float tolerance).
    - ``batching="wavefront"`` (fastest: 6.7x the authors' calls on the CPU here against 5.4x for
      ``branch``, docs/benchmarks.md): at each step one U-Net call
      holds the neutral trajectory and every branch already split off, for all seeds of the
      block. Equal to the stock per-k calls within float tolerance (the same tolerance stock
      diffusers shows between batch sizes: BLAS kernels depend on the batch's row count).
    - ``batching="branch"``: the neutral run, then one loop per branch, each U-Net call holding
      the block's seeds of one trajectory. Every call has the same rows as the stock pipeline
      called on that block's seeds, so the latents are bit-identical to the authors' per-k calls
      (``batch_size=1``: one seed per call, as the authors ran it).

Seeds and blocks
    The initial noise depends on the seed alone:
    ``torch.randn((1, 4, h, w), generator=torch.Generator("cpu").manual_seed(seed))``, moved to
    the device and scaled by ``scheduler.init_noise_sigma``, as the stock pipeline does with that
    generator (with ``eta > 0`` the same generator then draws each step's DDIM noise, one draw per
    seed and step shared by all of the seed's trajectories, again as the stock pipeline does).
    Seeds are batched in blocks ``seed // batch_size``, so a seed always meets the same batch-mates
    whatever the shard boundaries: same seed and block, same bits. If a shard's range is not a
    multiple of ``batch_size`` its edge blocks are partial (fewer batch-mates); those seeds then
    agree with a run where their block was whole only within float tolerance.

Shard layout (``--out``, e.g. ``results/<run>/traversals/<dataset>/<trajectory>/shard-0003/``)
    - ``latents.safetensors``: float32 ``(4, h, w)`` final latents, keys ``"<seed>/neutral"`` and
      ``"<seed>/k<k>"`` (``k`` without padding, e.g. ``"7/k5"``, ``"7/k45"``).
    - ``images/<seed>/neutral.png``, ``images/<seed>/k<kk>.png`` (``kk`` two digits: ``k05``).
    - ``frames/<seed>/f<fff>.png``: Bezier frames (``fff`` three digits) at
      ``t = linspace(0, 1, bezier_frames)`` over control points ``[neutral, k_max, ..., k_min]``.
    - ``meta.parquet``: one row per image: ``seed``, ``kind`` (neutral/swap/bezier), ``k`` (-1
      unless swap), ``frame`` (-1 unless bezier), ``t`` (NaN unless bezier), ``path`` (relative to
      the shard; "" when ``save_images`` is false, then no bezier rows), ``latent`` (key in
      ``latents.safetensors``, "" for bezier), ``prompt`` (neutral prompt for the neutral row, else
      the attribute prompt), ``neutral_prompt``, ``attribute_prompt``, ``dataset``,
      ``trajectory``, and the sampler settings that regenerate any row with stock diffusers:
      ``steps``, ``guidance``, ``eta``, ``scheduler`` (class name), ``scheduler_config`` (JSON),
      ``swap_steps`` (JSON), ``schedule``, ``lambdas`` (JSON or "null"), ``model``, ``height``,
      ``width``, ``dtype``, ``batch_size``, ``batching``.
    - ``provenance.json``.

Crash safety
    Finished seed blocks go to the scratch folder ``<out>.partial/`` (beside ``<out>``, not in it:
    Snakemake deletes the declared outputs of a failed job), each block written atomically. A rerun
    with the same settings skips the finished blocks; ``<out>`` is assembled atomically at the end
    and the scratch removed. A changed setting discards the scratch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.device import resolve_device
from medtraverse.core.errors import InputError, bad_input
from medtraverse.core.io import atomic_path, check_output
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.traversal.blocks import (
    BlockNames,
    check_scratch,
    cut_blocks,
    fingerprint,
    gather_blocks,
    open_scratch,
    record_shard,
    run_blocks,
    scratch_of,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

STAGE = "traverse"
PAPER_SWAP_STEPS: tuple[int, ...] = (5, 10, 15, 20, 25, 30, 35, 40, 45)
DTYPES = ("float32", "float16", "bfloat16")
SCHEDULES = ("swap", "mix")
BATCHINGS = ("auto", "wavefront", "branch")
KIND_ORDER = {"neutral": 0, "swap": 1, "bezier": 2}
SEED_BLOCKS = BlockNames("seeds", 9)  # scratch block folders seeds-<first>-<last>
FOLDERS = ("images", "frames")  # a block's files, merged into the shard


# --- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraverseParams:
    """The traverse stage's settings; defaults are the paper's where METHOD.md gives them."""

    steps: int = setting(50, min=1, help="DDIM steps")
    guidance: float = setting(7.5, help="classifier-free guidance scale")
    eta: float = setting(0.0, min=0, help="DDIM eta (0: deterministic)")
    swap_steps: tuple[int, ...] = setting(
        PAPER_SWAP_STEPS, min=0, help="steps k at which the prompt is swapped (each < steps)"
    )
    bezier_frames: int = setting(50, min=0, help="frames of each Bezier interpolation")
    batch_size: int = setting(8, min=1, help="seeds denoised together")
    decode_batch_size: int = setting(16, min=1, help="latents decoded together")
    dtype: str = setting("float32", choices=DTYPES, help="U-Net dtype")
    compile: bool = setting(False, help="torch.compile the U-Net")
    save_images: bool = setting(True, help="write PNGs beside the latents")
    schedule: str = setting("swap", choices=SCHEDULES, help="hard swap or soft mix")
    lambdas: tuple[float, ...] | None = setting(
        None, help="schedule mix: the attribute weight of each step (steps values)"
    )
    batching: str = setting("auto", choices=BATCHINGS, help="how a batch's swaps are run")
    device: str = setting("auto", help='"auto", "cpu", "mps", "cuda" or "cuda:<n>"')
    neutral: str | None = setting(None, help="neutral prompt (the trajectory's)")
    attribute: str | None = setting(None, help="attribute prompt (the trajectory's)")
    local_blend: float = setting(
        0.0,
        min=0,
        max=1,
        help="0: off; else keep the neutral run outside the edit (mask threshold, see blend_mask)",
    )

    @property
    def resolved_batching(self) -> str:
        """``auto``: exact one-seed calls at batch size 1, the wavefront's speed above it."""
        if self.batching == "auto":
            return "branch" if self.batch_size == 1 else "wavefront"
        return self.batching

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "params") -> TraverseParams:
        """Typed, validated settings (swap steps sorted); a one-line InputError names the key."""
        out = parse_params(cls, raw, where)
        return replace(out, swap_steps=tuple(sorted(out.swap_steps)))

    def validate(self, where: str) -> None:
        """Checks across fields: swap steps within the steps, lambdas one a step."""
        swap = list(self.swap_steps)
        if len(set(swap)) != len(swap):
            raise bad_input(f"{where}.swap_steps", f"got duplicates in {swap!r}", "distinct steps")
        for k in swap:
            if not 0 <= k < self.steps:
                raise bad_input(
                    f"{where}.swap_steps", f"got step {k}", f"0 <= k < steps ({self.steps})"
                )
        if self.schedule == "mix":
            if self.lambdas is None or len(self.lambdas) != self.steps:
                raise bad_input(
                    f"{where}.lambdas",
                    f"got {list(self.lambdas) if self.lambdas is not None else None!r}",
                    f"a list of {self.steps} numbers (one a step)",
                )
        elif self.lambdas is not None:
            raise bad_input(f"{where}.lambdas", "given with schedule 'swap'", 'schedule "mix"')
        for key in ("neutral", "attribute"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise bad_input(f"{where}.{key}", f"got {value!r}", "a non-empty prompt string")
        d = self.device
        if not (d in {"auto", "cpu", "mps"} or d.startswith("cuda")):
            raise bad_input(f"{where}.device", f"got {d!r}", '"auto", "cpu", "cuda" or "cuda:<n>"')

    def sampler_dict(self) -> dict[str, Any]:
        """Everything that changes the bits of a result (prompts and device excluded)."""
        out = asdict(self)
        for key in ("neutral", "attribute", "device", "save_images", "decode_batch_size"):
            out.pop(key)
        out["swap_steps"] = list(self.swap_steps)
        out["lambdas"] = list(self.lambdas) if self.lambdas is not None else None
        return out


def seed_blocks(seed_start: int, seed_count: int, batch_size: int) -> list[list[int]]:
    """The shard's seeds cut at multiples of ``batch_size`` (block id ``seed // batch_size``)."""
    return cut_blocks(range(seed_start, seed_start + seed_count), batch_size)


def initial_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The seed's ``z_T`` exactly as the authors drew it: float32 on a CPU generator, batch 1."""
    import torch

    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((1, *shape), generator=generator)


# --- the engine -------------------------------------------------------------------------------


@dataclass
class Embeddings:
    """Text embeddings of one trajectory, each ``(1, tokens, dim)``."""

    neutral: torch.Tensor
    attribute: torch.Tensor
    uncond: torch.Tensor | None  # None without classifier-free guidance


@dataclass
class UNetCounter:
    """Counts U-Net rows (images x evaluations), for the benchmark and tests."""

    calls: int = 0
    rows: int = 0
    _handle: Any = field(default=None, repr=False)

    def attach(self, unet: Any) -> UNetCounter:
        def hook(_module: Any, args: tuple, kwargs: dict) -> None:
            sample = args[0] if args else kwargs["sample"]
            self.calls += 1
            self.rows += int(sample.shape[0])

        self._handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class TraversalEngine:
    """Runs swap trajectories with a shared neutral prefix on a loaded StableDiffusionPipeline."""

    def __init__(self, pipe: Any, params: TraverseParams) -> None:
        import torch
        from diffusers import DDIMScheduler

        self.pipe = pipe
        self.params = params
        self.device = torch.device(pipe.device if hasattr(pipe, "device") else "cpu")
        self.unet = pipe.unet
        if self.unet.config.get("time_cond_proj_dim") is not None:
            raise InputError("model: U-Net has time_cond_proj_dim; expected a plain SD U-Net")
        # A private DDIM instance: the sampler is the method's, whatever the folder ships.
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.dtype = self.unet.dtype
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.height = int(self.unet.config.sample_size) * self.vae_scale_factor
        self.width = self.height
        self.latent_shape = (
            int(self.unet.config.in_channels),
            self.height // self.vae_scale_factor,
            self.width // self.vae_scale_factor,
        )
        self.cfg = params.guidance > 1.0
        if self.device.type == "cuda":
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.unet.set_attn_processor(AttnProcessor2_0())  # SDPA kernels
            self.unet.to(memory_format=torch.channels_last)
            self.pipe.vae.to(memory_format=torch.channels_last)
        if params.compile:
            self.unet = torch.compile(self.unet)

    # -- embeddings ------------------------------------------------------------------------

    def encode(self, neutral: str, attribute: str) -> Embeddings:
        """Encode the prompts as the stock pipeline does (the empty prompt as unconditional)."""
        e, uncond = self.pipe.encode_prompt(neutral, self.device, 1, self.cfg)
        e_attr, _ = self.pipe.encode_prompt(attribute, self.device, 1, self.cfg)
        return Embeddings(neutral=e, attribute=e_attr, uncond=uncond)

    def _cond(self, emb: Embeddings, branch: int | None, step: int) -> torch.Tensor:
        """Conditional embedding of trajectory ``branch`` (None = neutral) at denoising ``step``."""
        if branch is None or step <= branch:
            return emb.neutral
        if self.params.schedule == "swap":
            return emb.attribute
        lam = self.params.lambdas[step]  # type: ignore[index]
        return lam * emb.neutral + (1.0 - lam) * emb.attribute

    # -- denoising -------------------------------------------------------------------------

    def _step(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        t: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """One guided DDIM step, the same arithmetic as StableDiffusionPipeline.__call__."""
        import torch

        if self.cfg:
            model_in = torch.cat([x] * 2)
            hidden = torch.cat([uncond, cond])  # type: ignore[list-item]
        else:
            model_in, hidden = x, cond
        model_in = self.scheduler.scale_model_input(model_in, t)
        pred = self.unet(model_in, t, encoder_hidden_states=hidden, return_dict=False)[0]
        if self.cfg:
            pred_uncond, pred_text = pred.chunk(2)
            pred = pred_uncond + self.params.guidance * (pred_text - pred_uncond)
        return self.scheduler.step(
            pred, t, x, eta=self.params.eta, variance_noise=noise, return_dict=False
        )[0]

    def generate(
        self,
        seeds: Sequence[int],
        emb: Embeddings,
        start: torch.Tensor | None = None,
        uncond_steps: torch.Tensor | None = None,
    ) -> dict[str | int, torch.Tensor]:
        """Final latents of one seed block: ``{"neutral": (B,4,h,w), k: (B,4,h,w), ...}``.

        Tensors are float32 on the CPU, rows in the order of ``seeds``. Real images
        (``traversal.invert``): ``start`` replaces the seeds' noise with inverted ``z_T``
        ``(B,4,h,w)`` and ``uncond_steps`` ``(steps,B,tokens,dim)`` gives each step its own
        unconditional embedding (null-text); ``emb.neutral`` may then hold one row per image.
        """
        import torch

        p = self.params
        b = len(seeds)
        if start is not None and p.eta > 0:
            raise bad_input("params.eta", f"got {p.eta} with inverted start latents", "eta 0")
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self.scheduler.set_timesteps(p.steps, device=self.device)
        timesteps = self.scheduler.timesteps
        if start is None:
            z_t = torch.cat([torch.randn((1, *self.latent_shape), generator=g) for g in generators])
            latents = z_t.to(self.device, self.dtype) * self.scheduler.init_noise_sigma
        else:
            latents = start.to(self.device, self.dtype)  # already at the first step's level
        step_noise: list[torch.Tensor | None] = [None] * len(timesteps)
        if p.eta > 0:  # the stock pipeline's per-step draws from each seed's generator
            for i in range(len(timesteps)):
                step_noise[i] = torch.cat(
                    [
                        torch.randn((1, *self.latent_shape), generator=g, dtype=self.dtype)
                        for g in generators
                    ]
                ).to(self.device)
        uncond = emb.uncond.expand(b, -1, -1) if emb.uncond is not None else None
        if uncond_steps is not None and uncond_steps.shape[:2] != (len(timesteps), b):
            raise bad_input("uncond_steps", f"shape {tuple(uncond_steps.shape)}", "(steps, B, ...)")
        swaps = list(p.swap_steps)
        masks: dict[int, torch.Tensor] = {}

        def blend(k: int, x: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
            if not p.local_blend:
                return x
            if k not in masks:  # branch k's first move: its change is the prompts' difference
                if torch.equal(x, neutral):  # not yet (a mix schedule's lambda still 1)
                    return x
                masks[k] = self.blend_mask(x - neutral)
            return torch.lerp(neutral, x, masks[k])

        def unc(i: int) -> torch.Tensor | None:
            if uncond_steps is None or uncond is None:
                return uncond
            return uncond_steps[i].to(self.device, uncond.dtype)

        def cond(branch: int | None, step: int) -> torch.Tensor:
            return self._cond(emb, branch, step).expand(b, -1, -1)

        out: dict[str | int, torch.Tensor] = {}
        with torch.no_grad():
            if p.resolved_batching == "branch":
                path: list[torch.Tensor] = []  # the neutral run's latent after each step
                x = latents
                for i, t in enumerate(timesteps):
                    x = self._step(x, cond(None, i), unc(i), t, step_noise[i])
                    path.append(x)
                out["neutral"] = x
                for k in swaps:
                    x = path[k]
                    for i in range(k + 1, len(timesteps)):
                        x = self._step(x, cond(k, i), unc(i), timesteps[i], step_noise[i])
                        x = blend(k, x, path[i])
                    out[k] = x
            else:
                live: dict[str | int, torch.Tensor] = {"neutral": latents}
                for i, t in enumerate(timesteps):
                    names = list(live)
                    n = len(names)
                    x = torch.cat([live[a] for a in names])
                    conds = torch.cat([cond(None if a == "neutral" else a, i) for a in names])
                    u_i = unc(i)
                    u_n = u_i.repeat(n, 1, 1) if u_i is not None else None
                    noise = step_noise[i].repeat(n, 1, 1, 1) if step_noise[i] is not None else None
                    x = self._step(x, conds, u_n, t, noise)
                    for a, part in zip(names, x.split(b), strict=True):
                        live[a] = part
                    for a in names[1:]:  # the branches, against this step's neutral latent
                        live[a] = blend(int(a), live[a], live["neutral"])
                    if i in swaps:  # branch k leaves the neutral run after step k
                        live[i] = live["neutral"]
                out = live
        return {key: val.float().cpu() for key, val in out.items()}

    def blend_mask(self, change: torch.Tensor) -> torch.Tensor:
        """Where a branch's edit lives: 1 at the latent pixels it may change, 0 where it keeps
        the neutral run's (Prompt-to-Prompt's local blend, read from latents instead of
        attention maps). A branch's first step after its swap starts from the neutral run's
        latent, so its difference from the neutral step is a multiple of the two prompts'
        noise-prediction difference; ``change`` (B, C, h, w) is that difference, its size the
        mean over channels over the image's maximum, and the mask is where that reaches
        ``local_blend``. No smoothing: at the demo's 8x8 latents a 3x3 max-pool (P2P's) covers
        most of the body and keeps little of the neutral run."""
        size = change.abs().mean(1, keepdim=True)
        size = size / size.amax((2, 3), keepdim=True).clamp_min(1e-12)
        return (size >= self.params.local_blend).to(change.dtype)

    # -- decoding --------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor) -> Iterator[Any]:
        """PIL images of ``latents`` (N,4,h,w), decoded ``decode_batch_size`` at a time."""
        import torch

        vae = self.pipe.vae
        for chunk in latents.split(self.params.decode_batch_size):
            with torch.no_grad():
                z = chunk.to(self.device, vae.dtype) / vae.config.scaling_factor
                decoded = vae.decode(z, return_dict=False)[0]
            yield from self.pipe.image_processor.postprocess(decoded, output_type="pil")


def generate_latents(
    pipe: Any,
    seeds: Sequence[int],
    neutral: str,
    attribute: str,
    params: TraverseParams | Mapping[str, Any] | None = None,
) -> dict[int, dict[str | int, torch.Tensor]]:
    """Final latents per seed: ``{seed: {"neutral": (4,h,w), k: (4,h,w), ...}}`` (float32, CPU).

    Seeds are batched in blocks ``seed // batch_size``, as in a shard.
    """
    params = _as_params(params)
    engine = TraversalEngine(pipe, params)
    emb = engine.encode(neutral, attribute)
    result: dict[int, dict[str | int, torch.Tensor]] = {}
    for block in cut_blocks(seeds, params.batch_size):
        lat = engine.generate(block, emb)
        for j, seed in enumerate(block):
            result[seed] = {key: val[j] for key, val in lat.items()}
    return result


def _as_params(params: TraverseParams | Mapping[str, Any] | None) -> TraverseParams:
    if isinstance(params, TraverseParams):
        return params
    return TraverseParams.from_dict(dict(params or {}))


# --- shards -----------------------------------------------------------------------------------


def latent_key(seed: int, key: str | int) -> str:
    """Key in ``latents.safetensors``: ``"<seed>/neutral"`` or ``"<seed>/k<k>"``."""
    return f"{seed}/neutral" if key == "neutral" else f"{seed}/k{key}"


def image_path(seed: int, key: str | int) -> str:
    return (
        f"images/{seed}/neutral.png" if key == "neutral" else f"images/{seed}/k{int(key):02d}.png"
    )


def frame_path(seed: int, frame: int) -> str:
    return f"frames/{seed}/f{frame:03d}.png"


def traverse_shard(
    model: str | Path,
    out: str | Path,
    *,
    dataset: str,
    trajectory: str,
    neutral: str,
    attribute: str,
    seed_start: int,
    seed_count: int,
    params: TraverseParams | Mapping[str, Any] | None = None,
    pipe: Any = None,
    on_block_done: Callable[[list[int]], None] | None = None,
) -> Path:
    """Write one shard to ``out`` atomically, resuming finished blocks from ``<out>.partial``.

    ``pipe`` may be passed already loaded (tests, benchmarks); else ``model`` is loaded with
    ``medtraverse.models.pipeline.load_pipeline``. ``on_block_done`` is called after each
    block is saved.
    """
    import torch

    params = _as_params(params)
    out = Path(out)
    model = Path(model)
    for name, value in (("neutral", neutral), ("attribute", attribute)):
        if not isinstance(value, str) or not value.strip():
            raise bad_input(name, f"got {value!r}", "a non-empty prompt")
    if seed_start < 0 or seed_count < 1:
        raise bad_input(
            "seeds", f"start {seed_start}, count {seed_count}", "start >= 0, count >= 1"
        )
    if pipe is None:
        from medtraverse.models.pipeline import load_pipeline

        pipe = load_pipeline(
            model, dtype=getattr(torch, params.dtype), device=resolve_device(params.device)
        )
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)

    engine = TraversalEngine(pipe, params)
    # Everything the bits depend on: a scratch block is reused only if all of it is unchanged.
    identity = {
        "model": str(model),
        "model_files": fingerprint(model),
        "code": fingerprint(Path(__file__).with_name("bezier.py"), Path(__file__)),
        "torch": torch.__version__,
        "device": engine.device.type,
        "dataset": dataset,
        "trajectory": trajectory,
        "neutral": neutral,
        "attribute": attribute,
        "params": params.sampler_dict(),
        "save_images": params.save_images,
        "decode_batch_size": params.decode_batch_size,
        "height": engine.height,
        "width": engine.width,
    }
    scratch = open_scratch(out, identity, STAGE)

    common = _common_columns(engine, params, model, dataset, trajectory, neutral, attribute)
    blocks = seed_blocks(seed_start, seed_count, params.batch_size)
    todo = SEED_BLOCKS.todo(scratch, blocks)
    emb = engine.encode(neutral, attribute) if todo else None
    desc = f"traverse {dataset}/{trajectory}"
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        for block in run_blocks(
            todo, total=seed_count, desc=desc, unit="seed", on_block_done=on_block_done
        ):
            assert emb is not None
            _run_block(engine, emb, block, SEED_BLOCKS.dir(scratch, block), common, pool)

    with atomic_path(out, stage=STAGE) as tmp:
        _assemble(scratch, blocks, tmp)
        record_shard(
            tmp,
            out,
            stage=STAGE,
            params={**asdict(params), "neutral": neutral, "attribute": attribute},
            inputs=[model] if model.exists() else [],
            seeds={"start": seed_start, "count": seed_count, "noise": "torch.Generator('cpu')"},
            extra={
                "dataset": dataset,
                "trajectory": trajectory,
                "device": str(engine.device),
                "dtype": params.dtype,
                "torch": torch.__version__,
                "key_scheme": "<seed>/neutral, <seed>/k<k>",
            },
        )
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _common_columns(
    engine: TraversalEngine,
    params: TraverseParams,
    model: Path,
    dataset: str,
    trajectory: str,
    neutral: str,
    attribute: str,
) -> dict[str, Any]:
    return {
        "neutral_prompt": neutral,
        "attribute_prompt": attribute,
        "dataset": dataset,
        "trajectory": trajectory,
        "steps": params.steps,
        "guidance": params.guidance,
        "eta": params.eta,
        "scheduler": type(engine.scheduler).__name__,
        "scheduler_config": json.dumps(dict(engine.scheduler.config), sort_keys=True, default=str),
        "swap_steps": json.dumps(list(params.swap_steps)),
        "schedule": params.schedule,
        "lambdas": json.dumps(list(params.lambdas) if params.lambdas is not None else None),
        "model": str(model),
        "height": engine.height,
        "width": engine.width,
        "dtype": params.dtype,
        "batch_size": params.batch_size,
        "batching": params.resolved_batching,
    }


def _run_block(
    engine: TraversalEngine,
    emb: Embeddings,
    block: list[int],
    dest: Path,
    common: dict[str, Any],
    pool: ThreadPoolExecutor,
) -> None:
    """Generate, decode and save one seed block into ``dest`` atomically."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    from medtraverse.traversal.bezier import bezier_curve, control_points, frame_times

    p = engine.params
    lat = engine.generate(block, emb)
    keys: list[str | int] = ["neutral", *p.swap_steps]
    frames = p.bezier_frames if p.save_images else 0
    ts = frame_times(frames)
    rows: list[dict[str, Any]] = []
    for seed in block:
        for key in keys:
            rows.append(
                {
                    "seed": seed,
                    "kind": "neutral" if key == "neutral" else "swap",
                    "k": -1 if key == "neutral" else int(key),
                    "frame": -1,
                    "t": math.nan,
                    "path": image_path(seed, key) if p.save_images else "",
                    "latent": latent_key(seed, key),
                    "prompt": common["neutral_prompt" if key == "neutral" else "attribute_prompt"],
                }
            )
        for f in range(frames):
            rows.append(
                {
                    "seed": seed,
                    "kind": "bezier",
                    "k": -1,
                    "frame": f,
                    "t": float(ts[f]),
                    "path": frame_path(seed, f),
                    "latent": "",
                    "prompt": common["attribute_prompt"],
                }
            )
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        tensors = {
            # clone: a swap at the last step shares the neutral run's storage, which
            # safetensors refuses to save twice
            latent_key(seed, key): lat[key][j].clone(memory_format=torch.contiguous_format)
            for j, seed in enumerate(block)
            for key in keys
        }
        save_file(tensors, str(tmp / "latents.safetensors"))
        pending: list[Future] = []
        try:
            if p.save_images:
                # trajectory images, then every seed's Bezier frames, decoded in fixed-size
                # batches (the decode batches depend on the block alone, so the bits do too)
                stacked = [lat[key] for key in keys]  # key-major: row = ki * B + j
                paths = [image_path(seed, key) for key in keys for seed in block]
                if frames:
                    for j, seed in enumerate(block):
                        points = control_points({key: lat[key][j] for key in keys}, p.swap_steps)
                        stacked.append(bezier_curve(points, ts))
                        paths += [frame_path(seed, f) for f in range(frames)]
                for rel, image in zip(paths, engine.decode(torch.cat(stacked)), strict=True):
                    pending.append(_save_png(pool, image, tmp, rel))
        finally:
            for fut in pending:
                fut.result()
        pd.DataFrame([{**row, **common} for row in rows]).to_parquet(
            tmp / "rows.parquet", index=False
        )


def _save_png(pool: ThreadPoolExecutor, image: Any, root: Path, rel: str) -> Future:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    return pool.submit(image.save, target, format="PNG")


def _assemble(scratch: Path, blocks: list[list[int]], dest: Path) -> None:
    """Merge the finished blocks into the shard folder ``dest`` (hard links where possible)."""
    meta = sort_meta(gather_blocks(scratch, blocks, SEED_BLOCKS, dest, folders=FOLDERS))
    meta = meta.drop_duplicates(subset=["seed", "kind", "k", "frame"]).reset_index(drop=True)
    meta.to_parquet(dest / "meta.parquet", index=False)


def sort_meta(meta: pd.DataFrame) -> pd.DataFrame:
    """A shard's rows in their fixed order: by seed, then neutral, swaps by k, Bezier frames."""
    meta = meta.assign(_kind=meta["kind"].map(KIND_ORDER))
    return meta.sort_values(["seed", "_kind", "k", "frame"], kind="stable").drop(columns="_kind")


# --- CLI --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="StableDiffusionPipeline folder")
    parser.add_argument("--out", type=Path, required=True, help="the shard folder to write")
    parser.add_argument("--dataset", required=True, help="dataset name (recorded in meta)")
    parser.add_argument("--trajectory", required=True, help="trajectory name (recorded in meta)")
    parser.add_argument("--neutral", help="neutral prompt (or params.neutral)")
    parser.add_argument("--attribute", help="attribute prompt (or params.attribute)")
    parser.add_argument("--seed-start", type=int, required=True, help="first seed of the shard")
    parser.add_argument("--seed-count", type=int, required=True, help="number of seeds")
    parser.add_argument("--params", default="", help="JSON object or @file (traverse.params)")


def main(args: argparse.Namespace) -> None:
    check_output(args.out, STAGE, "folder")  # before any work; never replaces user data
    check_scratch(scratch_of(args.out), STAGE)
    params = TraverseParams.from_dict(load_params(args.params))
    prompts = {}
    for key in ("neutral", "attribute"):
        flag, inner = getattr(args, key), getattr(params, key)
        if flag is not None and inner is not None and flag != inner:
            raise bad_input(f"--{key}", "differs from params." + key, "one prompt, given once")
        prompts[key] = flag if flag is not None else inner
        if prompts[key] is None:
            raise bad_input(f"--{key}", "missing", f"--{key} TEXT or params.{key}")
    out = traverse_shard(
        args.model,
        args.out,
        dataset=args.dataset,
        trajectory=args.trajectory,
        neutral=prompts["neutral"],
        attribute=prompts["attribute"],
        seed_start=args.seed_start,
        seed_count=args.seed_count,
        params=params,
    )
    print(f"medtraverse traverse: wrote {out}", file=sys.stderr)
