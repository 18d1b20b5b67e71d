"""Fine-tune the U-Net of a Stable Diffusion pipeline on one prepared dataset (METHOD.md sec. 3).

Only the U-Net trains; the VAE and the CLIP text encoder stay frozen (the output pipeline holds
the base's VAE and text encoder bit for bit). Loss: epsilon-prediction MSE with the DDPM
schedule of the base's scheduler config, timesteps uniform on [0, T). Each hyperparameter is a
params key (:class:`FinetuneParams`) with the paper's value as default.

Inputs come from the encoder cache (``--cache``, :mod:`medtraverse.models.cache`: each image's VAE
posterior and each prompt's embedding computed once) or are encoded on the fly from the
manifest (``--prep``); both give the same loss for the same random draws.

Reproducible and resumable (a SLURM timeout or preemption followed by a rerun continues):

- every random draw of micro-batch ``m`` (image order, flips, prompt dropout, timesteps,
  posterior and diffusion noise) comes from a generator seeded with
  ``derive_seed(seed, ..., m/process)``, and each epoch's image order from
  ``derive_seed(seed, "finetune-order", epoch)``, so nothing random has to be checkpointed;
- ``accelerator.save_state`` every ``checkpointing_steps`` optimizer steps into
  ``<checkpoints>/checkpoint-<step>`` (written under a temporary name, renamed when complete;
  the last ``checkpoints_total_limit`` kept; EMA weights as safetensors in ``unet_ema/``);
- a rerun loads the latest checkpoint whose training fingerprint (the params that change the
  weights, the base model, the data size, the number of processes) matches, and continues.
  Under a constant learning rate (``constant``, ``constant_with_warmup``) the run's length is
  not in the fingerprint, so a run can be extended and gives the longer run's weights. Every
  other schedule decays over the whole run, so its length is in: a 3,600-step cosine run
  (rate decayed to 0) resumed as a 4,800-step one jumped back to 0.15 x the peak rate and made
  weights no fresh run makes.

On CPU, N steps in one go and N/2 steps + resume give identical U-Net weights.

Multi-GPU: ``accelerate launch --num_processes N -m medtraverse finetune ...`` (what the
``finetune_unet`` rule runs when ``gpus > 1``); ``train_batch_size`` is per process, as in the
paper (8 per GPU). Param names follow diffusers' ``train_text_to_image.py`` where it has one.
Multi-node under SLURM: start one task per GPU with
``srun``; :func:`export_slurm_distributed_env` (called by the CLI) uses submitit's
``TorchDistributedEnvironment().export()`` to set ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` from SLURM's variables when ``SLURM_NTASKS > 1`` and they are not
already set, so Accelerate initialises ``torch.distributed`` with no launcher.

Outputs: the pipeline folder ``--out`` (stock diffusers, safetensors, written atomically, with
``provenance.json``), ``<logs>/loss.csv`` (step, epoch, loss, lr) and
``<logs>/validation/step-<step>.png`` grids; ``<logs>`` defaults to the parent of ``--out``
and ``<checkpoints>`` to ``<parent of --out>/checkpoints``.

fp16 mixed precision needs a GPU; on a CPU the run falls back to fp32 (recorded in provenance).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.errors import bad_input
from medtraverse.core.io import atomic_path, check_output
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.core.seeding import derive_seed

if TYPE_CHECKING:
    import torch

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
LOSS_COLUMNS = ("step", "epoch", "loss", "lr")
# Params that do not change the trained weights: left out of the resume fingerprint (the run's
# length is put back in, as ``total_steps``, unless the schedule is constant).
NOT_IN_FINGERPRINT = {
    "num_train_epochs",
    "max_train_steps",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "validation_steps",
    "validation_prompts",
    "validation_seeds",
    "validation_inference_steps",
    "validation_guidance",
}


CONSTANT_SCHEDULERS = ("constant", "constant_with_warmup")  # rates that ignore the run's length
LR_SCHEDULERS = (
    *CONSTANT_SCHEDULERS,
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


@dataclass
class FinetuneParams:
    """``finetune`` params; defaults are the paper's (METHOD.md section 3).

    ``prompt_dropout``: share of training captions replaced by the empty prompt, so the U-Net
    also learns the unconditional prediction that classifier-free guidance needs. The authors'
    value is not stated in the paper or code; 0.1 is the usual choice (and learned the prompts
    in the CPU probe).
    """

    learning_rate: float = setting(1e-5, above=0, help="AdamW learning rate")
    adam_beta1: float = setting(0.9, min=0, max=1, help="AdamW beta1")
    adam_beta2: float = setting(0.999, min=0, max=1, help="AdamW beta2")
    adam_weight_decay: float = setting(1e-2, min=0, help="AdamW weight decay")
    adam_epsilon: float = setting(1e-8, above=0, help="AdamW epsilon")
    train_batch_size: int = setting(8, min=1, help="images a step per process (GPU)")
    gradient_accumulation_steps: int = setting(4, min=1, help="micro-batches a step")
    mixed_precision: str = setting("fp16", choices=("no", "fp16", "bf16"), help="autocast")
    max_grad_norm: float = setting(1.0, min=0, help="gradient clipping")
    num_train_epochs: int = setting(100, min=0, help="epochs (unless max_train_steps)")
    max_train_steps: int = setting(0, min=0, help="> 0 overrides num_train_epochs")
    prompt_dropout: float = setting(0.1, min=0, max=1, help="share of empty captions")
    seed: int = setting(0, min=0, help="global seed")
    lr_scheduler: str = setting("constant", choices=LR_SCHEDULERS, help="diffusers scheduler")
    lr_warmup_steps: int = setting(0, min=0, help="warm-up steps")
    snr_gamma: float = setting(0.0, min=0, help="min-SNR loss weight cap (0: plain MSE)")
    flip: bool = setting(False, help="flipped cached images too")
    gradient_checkpointing: bool = setting(False, help="trade compute for memory")
    sdpa: bool = setting(True, help="scaled dot-product attention")
    use_ema: bool = setting(False, help="keep an EMA of the U-Net")
    ema_decay: float = setting(0.9999, min=0, max=1, help="EMA decay")
    allow_tf32: bool = setting(True, help="TF32 matmuls on Ampere+")
    checkpointing_steps: int = setting(500, min=1, help="steps between checkpoints")
    checkpoints_total_limit: int = setting(2, min=0, help="checkpoints kept")
    validation_steps: int = setting(0, min=0, help="steps between validation grids (0: none)")
    validation_prompts: list[str] = setting(default_factory=list, help="validation prompts")
    validation_seeds: list[int] = setting(
        default_factory=lambda: [0, 1, 2, 3], min=0, help="validation seeds"
    )
    validation_inference_steps: int = setting(25, min=1, help="validation DDIM steps")
    validation_guidance: float = setting(7.5, min=0, help="validation guidance")

    @classmethod
    def from_dict(cls, params: dict[str, Any], where: str = "params") -> FinetuneParams:
        """Typed and range-checked, one-line errors naming the key."""
        return parse_params(cls, params, where)

    def validate(self, where: str) -> None:
        """Epochs or steps: one of them must be positive."""
        if self.num_train_epochs < 1 and self.max_train_steps < 1:
            raise bad_input(
                f"{where}.num_train_epochs",
                "got 0 (and max_train_steps 0)",
                "a positive integer",
            )

    def fingerprint(self) -> dict[str, Any]:
        """The params that change the trained weights (a resume must match them)."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_IN_FINGERPRINT}


# ----------------------------------------------------------------------------- random draws
@dataclass
class StepDraws:
    """Every random draw of one micro-batch on one process."""

    flip: torch.Tensor  # bool (B,)
    drop: torch.Tensor  # bool (B,): use the empty prompt
    timesteps: torch.Tensor  # long (B,)
    latent_noise: torch.Tensor  # (B, 4, h, w): posterior sample = mean + std * latent_noise
    noise: torch.Tensor  # (B, 4, h, w): diffusion noise (the epsilon target)


def draw_step(
    seed: int,
    micro_step: int,
    process_index: int,
    batch: int,
    latent_shape: tuple[int, int, int],
    *,
    num_train_timesteps: int,
    prompt_dropout: float,
) -> StepDraws:
    """The draws of micro-batch ``micro_step`` from ``derive_seed(seed, "finetune-step", ...)``:
    independent of what ran before, so a resumed run draws the same."""
    import torch

    gen = torch.Generator().manual_seed(
        derive_seed(seed, "finetune-step", f"{micro_step}/{process_index}")
    )
    return StepDraws(
        flip=torch.rand(batch, generator=gen) < 0.5,
        drop=torch.rand(batch, generator=gen) < prompt_dropout,
        timesteps=torch.randint(0, num_train_timesteps, (batch,), generator=gen),
        latent_noise=torch.randn((batch, *latent_shape), generator=gen),
        noise=torch.randn((batch, *latent_shape), generator=gen),
    )


def batch_indices(
    seed: int, micro_step: int, n: int, batch: int, num_processes: int, process_index: int
) -> torch.Tensor:
    """Entries of micro-batch ``micro_step`` for one process: epoch ``e`` walks a permutation
    seeded by ``(seed, e)``; a global micro-batch holds ``batch * num_processes`` entries (wrapping
    around when the data set is smaller), and each process takes its slice."""
    import torch

    per_epoch = micro_steps_per_epoch(n, batch, num_processes)
    epoch, j = divmod(micro_step, per_epoch)
    gen = torch.Generator().manual_seed(derive_seed(seed, "finetune-order", epoch))
    perm = torch.randperm(n, generator=gen)
    start = j * batch * num_processes + process_index * batch
    return perm[(start + torch.arange(batch)) % n]


def micro_steps_per_epoch(n: int, batch: int, num_processes: int) -> int:
    return max(1, math.ceil(n / (batch * num_processes)))


# ----------------------------------------------------------------------------- training inputs
class CachedInputs:
    """Training inputs read from the encoder cache (no encoder runs)."""

    def __init__(self, cache_dir: str | Path, flip: bool) -> None:
        from medtraverse.models.cache import load_cache

        self.cache = load_cache(cache_dir)
        if flip and not self.cache.flip:
            raise bad_input(cache_dir, "has no flipped images", "a cache built with flip: true")
        self.flip = flip
        self.n = len(self.cache.image_ids)
        self.uncond = self.cache.embeddings[0:1]
        self.latent_shape = tuple(self.cache.mean.shape[1:])

    def __call__(self, idx: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(mean, std, prompt embeddings) of the entries ``idx``."""
        import torch

        flips = flip.tolist() if self.flip else [False] * len(idx)
        rows = torch.tensor(
            [self.cache.row_of[(int(i), int(f))] for i, f in zip(idx, flips, strict=True)]
        )
        prompt_ids = torch.tensor([self.cache.prompt_of_image[int(i)] for i in idx])
        return self.cache.mean[rows], self.cache.std[rows], self.cache.embeddings[prompt_ids]


class EncodedInputs:
    """Training inputs encoded on the fly (images read from disk every step): the baseline
    that the cache replaces."""

    def __init__(self, prep: str | Path, pipe: Any, flip: bool, device: Any, dtype: Any) -> None:
        from medtraverse.models.cache import encode_prompts, load_manifest
        from medtraverse.models.pipeline import pipeline_resolution

        self.prep, self.pipe, self.flip = Path(prep), pipe, flip
        self.frame = load_manifest(prep, "train")
        self.n = len(self.frame)
        self.resolution = pipeline_resolution(pipe)
        self.device, self.dtype = device, dtype
        self.uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]).cpu()
        size = int(pipe.unet.config.sample_size)
        self.latent_shape = (int(pipe.unet.config.in_channels), size, size)

    def __call__(self, idx: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch

        from medtraverse.models.cache import encode_images, encode_prompts, load_images

        rows = self.frame.iloc[idx.tolist()]
        images = load_images(self.prep, rows, self.resolution)
        if self.flip:
            images = torch.where(flip[:, None, None, None], torch.flip(images, dims=[-1]), images)
        mean, std = encode_images(self.pipe.vae, images.to(self.device, self.dtype))
        cond = encode_prompts(self.pipe.tokenizer, self.pipe.text_encoder, list(rows["prompt"]))
        return mean.cpu(), std.cpu(), cond.cpu()


def diffusion_loss(
    unet: Any,
    noise_scheduler: Any,
    mean: torch.Tensor,
    std: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    draws: StepDraws,
    scaling_factor: float,
    snr_gamma: float = 0.0,
) -> torch.Tensor:
    """Epsilon-prediction MSE (v-prediction if the scheduler says so) of one micro-batch.

    ``snr_gamma`` > 0 weights each sample by min(SNR(t), gamma) / SNR(t) (/ (SNR + 1) for
    v-prediction): min-SNR-gamma (Hang et al., ICCV 2023, diffusers' ``--snr_gamma``), which
    stops the easy low-noise timesteps from dominating the gradient and converges in fewer
    steps; 0 is the plain mean the paper's recipe uses."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    device = next(unet.parameters()).device
    latents = (mean + std * draws.latent_noise) * scaling_factor
    embeds = torch.where(draws.drop[:, None, None], uncond.to(cond.dtype).expand_as(cond), cond)
    latents, noise = latents.to(device), draws.noise.to(device)
    timesteps = draws.timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    pred = unet(noisy, timesteps, encoder_hidden_states=embeds.to(device)).sample
    if snr_gamma <= 0:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, snr_gamma)).mean()


def min_snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per timestep (/ (SNR + 1) for v-prediction), SNR = a / (1 - a) with
    a the scheduler's cumulative alpha."""
    import torch

    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]
    snr = alphas / (1.0 - alphas)
    denominator = snr + 1 if noise_scheduler.config.prediction_type == "v_prediction" else snr
    return (snr.clamp(max=gamma) / denominator).float()


# ----------------------------------------------------------------------------- checkpoints
def export_slurm_distributed_env() -> bool:
    """Under a multi-task SLURM step (``srun``, one task per GPU, possibly several nodes), set
    torch.distributed's env:// variables from SLURM's with submitit, unless a launcher already
    did. Returns whether it exported."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "RANK" in os.environ:
        return False
    if "SLURM_PROCID" not in os.environ:
        return False
    import submitit

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed from their temporary name) by step, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: Path, fingerprint: str) -> tuple[int, Path] | None:
    """The newest complete checkpoint of the same training (fingerprint), if any."""
    for step, path in reversed(list_checkpoints(ckpt_dir)):
        state = json.loads((path / "state.json").read_text())
        if state.get("fingerprint") == fingerprint:
            return step, path
    return None


# ----------------------------------------------------------------------------- the run
def finetune(
    model: str | Path,
    out: str | Path,
    params: dict[str, Any],
    *,
    cache: str | Path | None = None,
    prep: str | Path | None = None,
    checkpoints: str | Path | None = None,
    logs: str | Path | None = None,
) -> Path:
    """Fine-tune ``model``'s U-Net on the cache (or on ``prep`` encoded on the fly); write the
    pipeline folder ``out``; resume from ``checkpoints`` when possible. Returns ``out``."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from medtraverse.core import provenance
    from medtraverse.core.device import fused_adam
    from medtraverse.core.provenance import params_sha256
    from medtraverse.models.cache import MANIFEST
    from medtraverse.models.pipeline import load_pipeline, resolve_base

    spec = FinetuneParams.from_dict(params)
    if cache is None and prep is None:
        raise bad_input("finetune", "neither --cache nor --prep given", "one of them")
    out = Path(out)
    ckpt_dir = Path(checkpoints) if checkpoints else out.parent / "checkpoints"
    log_dir = Path(logs) if logs else out.parent

    mixed_precision = spec.mixed_precision
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        mixed_precision = "no"  # fp16 autocast needs a GPU; a CPU run trains in fp32
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        project_config=ProjectConfiguration(project_dir=str(log_dir)),
    )
    main_process = accelerator.is_main_process
    device = accelerator.device
    if spec.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        mixed_precision, torch.float32
    )

    cached_inputs = CachedInputs(cache, spec.flip) if cache is not None else None
    pipe = load_pipeline(model)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scaling_factor = float(pipe.vae.config.scaling_factor)
    pipe.vae.requires_grad_(False).eval()
    pipe.text_encoder.requires_grad_(False).eval()
    unet = pipe.unet
    unet.train()
    if spec.sdpa:
        unet.set_attn_processor(AttnProcessor2_0())
    if spec.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    if cached_inputs is not None:
        inputs: CachedInputs | EncodedInputs = cached_inputs
        cached_scale = float(inputs.cache.meta["scaling_factor"])
        if cached_scale != scaling_factor:
            raise bad_input(cache, f"scaling_factor {cached_scale}", f"{scaling_factor} (model's)")
    else:
        pipe.vae.to(device)
        if weight_dtype != torch.float32:
            pipe.vae.to(dtype=weight_dtype)
        pipe.text_encoder.to(device, weight_dtype)
        inputs = EncodedInputs(prep, pipe, spec.flip, device, weight_dtype)

    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = micro_steps_per_epoch(inputs.n, spec.train_batch_size, world)
    accum = spec.gradient_accumulation_steps
    total_steps = spec.max_train_steps or math.ceil(spec.num_train_epochs * per_epoch / accum)

    ema = None
    if spec.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=spec.ema_decay,
            model_cls=UNet2DConditionModel,
            model_config=unet.config,
        )
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=spec.learning_rate,
        betas=(spec.adam_beta1, spec.adam_beta2),
        weight_decay=spec.adam_weight_decay,
        eps=spec.adam_epsilon,
        fused=fused_adam(device.type),
    )
    lr_scheduler = get_scheduler(
        spec.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=spec.lr_warmup_steps * world,
        num_training_steps=total_steps * world,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    trained = {
        "params": spec.fingerprint(),
        "base": resolve_base(model),
        "entries": inputs.n,
        "num_processes": world,
    }
    if spec.lr_scheduler not in CONSTANT_SCHEDULERS:  # the rate at each step depends on the total
        trained["total_steps"] = total_steps
    fingerprint = params_sha256(trained)
    global_step = 0
    resumed = latest_checkpoint(ckpt_dir, fingerprint)
    if resumed is not None:
        global_step, path = resumed
        accelerator.load_state(str(path))
        if ema is not None:
            loaded = EMAModel.from_pretrained(str(path / "unet_ema"), UNet2DConditionModel)
            ema.load_state_dict(loaded.state_dict())
        accelerator.print(f"finetune: resumed from {path} (step {global_step}/{total_steps})")
    if ema is not None:
        ema.to(device)

    loss_csv = log_dir / "loss.csv"
    if main_process:
        _reset_loss_log(loss_csv, keep_through=global_step)

    def save_checkpoint(step: int) -> None:
        final = ckpt_dir / f"checkpoint-{step:08d}"
        tmp = ckpt_dir / f".checkpoint-{step:08d}.tmp"
        if main_process:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if main_process:
            if ema is not None:
                ema.save_pretrained(str(tmp / "unet_ema"))
            state = {"step": step, "fingerprint": fingerprint, "total_steps": total_steps}
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            if spec.checkpoints_total_limit > 0:
                for _, old in list_checkpoints(ckpt_dir)[: -spec.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    start_step, seconds = global_step, 0.0  # training time, checkpoints and validation excluded
    bar = tqdm(
        total=total_steps,
        initial=global_step,
        desc="finetune",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    while global_step < total_steps:
        t0 = time.perf_counter()
        losses = []
        for a in range(accum):
            micro = global_step * accum + a
            idx = batch_indices(spec.seed, micro, inputs.n, spec.train_batch_size, world, rank)
            draws = draw_step(
                spec.seed,
                micro,
                rank,
                spec.train_batch_size,
                inputs.latent_shape,
                num_train_timesteps=int(noise_scheduler.config.num_train_timesteps),
                prompt_dropout=spec.prompt_dropout,
            )
            mean, std, cond = inputs(idx, draws.flip)
            sync = a == accum - 1 or world == 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(unet):
                loss = diffusion_loss(
                    unet,
                    noise_scheduler,
                    mean,
                    std,
                    cond,
                    inputs.uncond,
                    draws,
                    scaling_factor,
                    spec.snr_gamma,
                )
                accelerator.backward(loss / accum)
            losses.append(loss.detach())
        if spec.max_grad_norm > 0:
            accelerator.clip_grad_norm_(unet.parameters(), spec.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())
        global_step += 1
        step_loss = float(accelerator.gather(torch.stack(losses).mean()[None]).mean())
        epoch = (global_step * accum - 1) // per_epoch
        lr = float(lr_scheduler.get_last_lr()[0])
        if main_process:
            with open(loss_csv, "a", newline="") as handle:
                csv.writer(handle).writerow([global_step, epoch, f"{step_loss:.6g}", f"{lr:.6g}"])
        seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", epoch=epoch)
        if global_step % spec.checkpointing_steps == 0 or global_step == total_steps:
            save_checkpoint(global_step)  # the last one lets a rerun with more steps continue
        if (
            spec.validation_steps
            and spec.validation_prompts
            and (global_step % spec.validation_steps == 0 or global_step == total_steps)
        ):
            if main_process:
                _validate(accelerator, unet, ema, pipe, spec, log_dir, global_step)
            accelerator.wait_for_everyone()
    bar.close()
    trained = global_step - start_step

    accelerator.wait_for_everyone()
    if main_process:
        final_unet = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(final_unet.parameters())
        _save_pipeline(model, final_unet, out, StableDiffusionPipeline)
        summary = {
            "steps": global_step,
            "trained_steps_this_run": trained,
            "resumed_from_step": start_step if resumed else None,
            "train_seconds": round(seconds, 2),
            "samples_per_second": round(
                trained * accum * spec.train_batch_size * world / max(seconds, 1e-9), 3
            ),
            "mixed_precision": mixed_precision,
            "num_processes": world,
            "entries": inputs.n,
            "inputs": "cache" if cache is not None else "encoded on the fly",
            "final_loss": step_loss if trained else None,
            "fingerprint": fingerprint,
        }
        sources = [model, cache] if cache is not None else [model, Path(prep) / MANIFEST]
        provenance.record(
            out, stage="finetune", params=params, inputs=sources, seeds=spec.seed, extra=summary
        )
        if loss_csv.is_file():  # the training curve is a result too: checksummed beside it
            provenance.record(
                loss_csv, stage="finetune", params=params, inputs=sources, seeds=spec.seed
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _reset_loss_log(path: Path, keep_through: int) -> None:
    """Start the loss CSV, or on resume keep only the rows up to the resumed step."""
    rows: list[list[str]] = []
    if keep_through > 0 and path.is_file():
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            rows = [r for r in reader if r and r[0].isdigit() and int(r[0]) <= keep_through]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOSS_COLUMNS)
        writer.writerows(rows)


def _save_pipeline(model: str | Path, unet: Any, out: Path, pipeline_cls: Any) -> None:
    """The base pipeline reloaded from disk (VAE, text encoder, tokenizer, scheduler untouched)
    with the trained U-Net, in float32, written atomically."""
    import torch

    from medtraverse.models.pipeline import load_pipeline, resolve_base

    base = load_pipeline(model)
    trained = unet.to("cpu")
    if trained.dtype != torch.float32:
        trained = trained.float()
    trained.set_default_attn_processor()
    pipe = pipeline_cls(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=trained,
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    source_tokenizer = Path(resolve_base(model)) / "tokenizer"
    with atomic_path(out, stage="finetune") as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name in ("vocab.json", "merges.txt"):
            if (source_tokenizer / name).is_file() and not (tmp / "tokenizer" / name).exists():
                shutil.copyfile(source_tokenizer / name, tmp / "tokenizer" / name)


def _validate(
    accelerator: Any,
    unet: Any,
    ema: Any,
    pipe: Any,
    spec: FinetuneParams,
    log_dir: Path,
    step: int,
) -> None:
    """A grid (rows = validation seeds, columns = validation prompts) at ``step``."""
    import torch

    from medtraverse.models.samples import generate, grid_image

    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    was_training = model.training
    model.eval()
    vae_dtype = pipe.vae.dtype
    pipe.vae.to(model.device)
    if vae_dtype != torch.float32:  # decode in float32 (SD's VAE overflows in fp16)
        pipe.vae.to(dtype=torch.float32)
    pipe.text_encoder.to(model.device)
    pipe.unet = model
    try:
        with torch.autocast(model.device.type, enabled=False):
            cells = generate(
                pipe,
                spec.validation_prompts,
                spec.validation_seeds,
                steps=spec.validation_inference_steps,
                guidance=spec.validation_guidance,
                eta=0.0,
            )
    finally:
        if vae_dtype != torch.float32:
            pipe.vae.to(dtype=vae_dtype)
        model.train(was_training)
        if ema is not None:
            ema.restore(model.parameters())
    out = log_dir / "validation" / f"step-{step:08d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        grid_image(cells, headers=spec.validation_prompts).save(tmp, format="PNG")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "--base", dest="model", type=Path, required=True, help="base pipeline folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="fine-tuned pipeline folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cache", type=Path, help="encoder cache folder (medtraverse cache)")
    source.add_argument("--prep", type=Path, help="prepared dataset (encode on the fly)")
    source.add_argument(
        "--manifest", type=Path, help="the prepared dataset's manifest.parquet (same as --prep)"
    )
    parser.add_argument(
        "--checkpoints", type=Path, help="checkpoint folder (default: <out>/../checkpoints)"
    )
    parser.add_argument("--logs", type=Path, help="loss.csv + validation/ (default: <out>/..)")
    parser.add_argument("--params", default="{}", help="JSON: FinetuneParams keys")


def main(args: argparse.Namespace) -> None:
    check_output(args.out, "finetune", "folder")  # before any work; never replaces user data
    export_slurm_distributed_env()
    out = finetune(
        args.model,
        args.out,
        load_params(args.params),
        cache=args.cache,
        prep=args.prep or (args.manifest.parent if args.manifest else None),
        checkpoints=args.checkpoints,
        logs=args.logs,
    )
    print(out)
