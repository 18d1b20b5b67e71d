"""Training-step speed of the demo's three small models on the CPU, variants side by side.

Why the demo's settings are what they are: how a second thread, fused AdamW, the number of
attention heads and channels-last memory change one training step of the tiny U-Net (8x8x4
latents, 77 text tokens, batch 32; 8 heads unless said), the tiny VAE
(32 px, batch 32) and EfficientNet-B0 (64 px, batch 32), each measured in this one process.

    python benchmarks/train_steps.py            # ~3 min on a 2-core machine
    python benchmarks/train_steps.py --steps 40 --json steps.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch


def unet(heads: int = 8) -> Any:
    """The tiny U-Net with ``heads`` attention heads (diffusers' ``attention_head_dim``), 77 text
    tokens of width 32 as the tiny text encoder gives."""

    def make() -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
        from diffusers import UNet2DConditionModel

        model = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=heads,
        )
        x, t = torch.randn(32, 4, 8, 8), torch.randint(0, 1000, (32,))
        c = torch.randn(32, 77, 32)
        return model, lambda m: m(x, t, c).sample.pow(2).mean()

    return make


def vae() -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
    from diffusers import AutoencoderKL

    model = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 32],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )
    x = torch.randn(32, 3, 32, 32)
    return model, lambda m: (m(x).sample - x).pow(2).mean()


def efficientnet(channels_last: bool) -> Any:
    def make() -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
        import timm

        model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1)
        x = torch.randn(32, 3, 64, 64)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return model, lambda m: m(x).pow(2).mean()

    return make


def ms_per_step(make: Any, threads: int, fused: bool, steps: int) -> float:
    """Mean ms of one forward + backward + AdamW step, after 5 warm-up steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, loss_of = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    for i in range(5 + steps):
        if i == 5:
            start = time.perf_counter()
        loss = loss_of(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps a variant")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    cases = [
        ("unet", "1 thread, AdamW", unet(), 1, False),
        ("unet", "1 thread, fused AdamW", unet(), 1, True),
        ("unet", "2 threads, AdamW", unet(), 2, False),
        ("unet", "2 threads, fused AdamW", unet(), 2, True),
        ("unet", "1 thread, fused AdamW, 2 heads of 16", unet(2), 1, True),
        ("unet", "1 thread, fused AdamW, 1 head of 32 (the demo's)", unet(1), 1, True),
        ("vae", "1 thread", vae, 1, True),
        ("vae", "2 threads, AdamW", vae, 2, False),
        ("vae", "2 threads", vae, 2, True),
        ("efficientnet_b0", "1 thread, contiguous", efficientnet(False), 1, True),
        ("efficientnet_b0", "1 thread, channels-last", efficientnet(True), 1, True),
        ("efficientnet_b0", "2 threads, contiguous", efficientnet(False), 2, True),
        ("efficientnet_b0", "2 threads, channels-last", efficientnet(True), 2, True),
    ]
    rows = []
    print("| model | variant | ms / step |\n|---|---|---:|")
    for model, variant, make, threads, fused in cases:
        ms = ms_per_step(make, threads, fused, args.steps)
        rows.append({"model": model, "variant": variant, "ms_per_step": round(ms, 1)})
        print(f"| {model} | {variant} | {ms:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
