"""Train the tiny base's VAE on the prepared training images (demo only).

Why: the tiny base is built with random weights, and a random VAE cannot reconstruct images, so
the demo trains it briefly before fine-tuning the U-Net. A real run starts from SD 1.5, whose
VAE is already trained and stays frozen (METHOD.md section 3); this stage refuses real bases.
The text encoder stays random and frozen: the U-Net learns to read its embeddings.

Loss: reconstruction MSE on [-1, 1] of a posterior sample, plus ``kl_weight`` x KL. After
training, the VAE's ``scaling_factor`` is set to 1 / std of the training latents (posterior
means), as SD's 0.18215 was chosen, so the U-Net sees unit-variance latents.
Measured on the 2-core dev box: VAE (16, 32, 32), lr 1e-3, batch 32, 32 px: ~2,000 steps in
150 s, reconstruction MSE 0.0023.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtraverse.core.errors import bad_input
from medtraverse.core.io import atomic_path, check_output
from medtraverse.core.params import load_params, parse_params, setting
from medtraverse.core.seeding import derive_seed
from medtraverse.models.cache import add_prep_arguments
from medtraverse.models.finetune import LR_SCHEDULERS


@dataclass
class VaeParams:
    """``train-vae`` params with their defaults (``lr`` is accepted for ``learning_rate``)."""

    steps: int = setting(2000, min=0, help="training steps")
    learning_rate: float = setting(1e-3, above=0, help="AdamW learning rate")
    lr_scheduler: str = setting("constant", choices=LR_SCHEDULERS, help="diffusers scheduler")
    batch_size: int = setting(32, min=1, help="images a step")
    kl_weight: float = setting(1e-6, min=0, help="weight of the KL term")
    flip: bool = setting(False, help="random horizontal flips")
    seed: int = setting(0, min=0, help="global seed")

    @classmethod
    def from_dict(cls, params: dict[str, Any], where: str = "params") -> VaeParams:
        """Typed settings, one-line errors naming the key."""
        params = dict(params)
        if "lr" in params:  # short alias
            if "learning_rate" in params:
                raise bad_input(f"{where}.lr", "given with learning_rate", "only one of them")
            params["learning_rate"] = params.pop("lr")
        return parse_params(cls, params, where)


def train_vae(base: str | Path, prep: str | Path, out: str | Path, params: dict[str, Any]) -> Path:
    """Train the VAE of the tiny ``base`` on ``prep``'s training split; write the whole
    pipeline (base + trained VAE) at ``out`` atomically, with provenance."""
    import torch
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from medtraverse.core import provenance
    from medtraverse.core.device import fused_adam
    from medtraverse.models.cache import MANIFEST, encode_images, load_images, load_manifest
    from medtraverse.models.pipeline import is_tiny, load_pipeline, pipeline_resolution

    spec = VaeParams.from_dict(params)
    if not is_tiny(base):
        raise bad_input(
            base, "is a pointer to a real base", "the tiny base (train-vae is demo only)"
        )
    frame = load_manifest(prep, "train")
    pipe = load_pipeline(base)
    images = load_images(prep, frame, pipeline_resolution(pipe))
    vae = pipe.vae.train().requires_grad_(True)
    # fused: one kernel for all parameters, 1.1x a 2-thread step here (docs/benchmarks.md)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=spec.learning_rate, fused=fused_adam(str(images.device))
    )
    # the fine-tuning stage's schedules (cosine: the rate decays to 0 by the last step, so a
    # short run ends on settled weights)
    schedule = get_scheduler(
        spec.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=max(1, spec.steps)
    )
    gen = torch.Generator().manual_seed(derive_seed(spec.seed, "train-vae"))
    start, losses = time.perf_counter(), []
    for _ in tqdm(range(spec.steps), desc="train-vae", unit="step"):
        idx = torch.randint(len(images), (spec.batch_size,), generator=gen)
        batch = images[idx]
        if spec.flip:
            flip = torch.rand(len(batch), generator=gen) < 0.5
            batch = torch.where(flip[:, None, None, None], torch.flip(batch, dims=[-1]), batch)
        dist = vae.encode(batch).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        mse = torch.nn.functional.mse_loss(recon, batch)
        loss = mse + spec.kl_weight * dist.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(mse.detach()))
    vae.eval().requires_grad_(False)

    means, recon_mse = [], 0.0
    with torch.no_grad():
        for s in range(0, len(images), 64):
            mean, _ = encode_images(vae, images[s : s + 64])
            means.append(mean)
            recon = vae.decode(mean).sample
            recon_mse += float(((recon - images[s : s + 64]) ** 2).mean()) * len(mean)
    latents = torch.cat(means)
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    summary = {
        "seconds": round(time.perf_counter() - start, 1),
        "final_train_mse_last100": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "train_reconstruction_mse": recon_mse / len(images),
        "scaling_factor": scaling_factor,
        "images": len(images),
    }
    out = Path(out)
    with atomic_path(out, stage="train-vae") as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name in ("vocab.json", "merges.txt"):
            source = Path(base) / "tokenizer" / name
            if source.is_file():
                (tmp / "tokenizer" / name).write_bytes(source.read_bytes())
    provenance.record(
        out,
        stage="train-vae",
        params=params,
        inputs=[base, Path(prep) / MANIFEST],
        seeds=spec.seed,
        extra=summary,
    )
    print(
        f"train-vae: {spec.steps} steps in {summary['seconds']} s, reconstruction MSE "
        f"{summary['train_reconstruction_mse']:.4f}, scaling_factor {scaling_factor:.4f}"
    )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, required=True, help="tiny base pipeline folder")
    add_prep_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    parser.add_argument(
        "--params",
        default="{}",
        help='JSON: {"steps": 2000, "learning_rate": 0.001, "lr_scheduler": "constant", '
        '"batch_size": 32, "kl_weight": 1e-6, "flip": false, "seed": 0}',
    )


def main(args: argparse.Namespace) -> None:
    from medtraverse.models.cache import prep_folder

    check_output(args.out, "train-vae", "folder")  # before any work; never replaces user data
    print(train_vae(args.base, prep_folder(args), args.out, load_params(args.params)))
