"""What one inversion costs: DDIM and null-text inversion of real images on the tiny model.

Times :class:`medtraverse.traversal.invert.Inverter` on synthetic 32 px images (the tiny
pipeline's resolution) at the paper's sampler (50 DDIM steps, guidance 7.5) and Mokady et al.'s
null-text settings (10 inner Adam steps at most, early stop 1e-5 + i * 2e-5), at several batch
sizes, and reports per image: seconds, U-Net rows (forward) and seconds per inner step (each a
forward and a backward through the U-Net for the unconditional half). Prints one JSON object.

    python benchmarks/invert.py --threads 1 --images 4 --batch-sizes 1 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--learning-rate", type=float, default=0.1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()

    import numpy as np
    import torch

    from medtraverse.core.params import parse_params
    from medtraverse.models.pipeline import build_tiny_pipeline, load_pipeline
    from medtraverse.traversal.engine import UNetCounter
    from medtraverse.traversal.invert import Inverter, InvertParams

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(build_tiny_pipeline(Path(tmp) / "tiny", seed=0))
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(-1, 1, (args.images, 3, size, size)).astype("float32"))
    prompts = ["Chest X-ray showing Pleural Effusion"] * args.images
    results = {}
    for method in ("ddim", "null_text"):
        for bs in args.batch_sizes:
            params = parse_params(
                InvertParams,
                {
                    "steps": args.steps,
                    "method": method,
                    "inner_steps": args.inner_steps,
                    "learning_rate": args.learning_rate,
                    "batch_size": bs,
                },
            )
            inv = Inverter(pipe, params)
            counter = UNetCounter().attach(pipe.unet)
            inner = 0
            t0 = time.perf_counter()
            for start in range(0, args.images, bs):
                res = inv.invert(images[start : start + bs], prompts[start : start + bs], None)
                inner += sum(res.inner_used)
            seconds = time.perf_counter() - t0
            counter.detach()
            results[f"{method}/batch{bs}"] = {
                "seconds_per_image": seconds / args.images,
                "unet_rows_per_image": counter.rows / args.images,
                "inner_steps_per_image": inner / args.images,
                "seconds_per_inner_step_per_image": (seconds / inner if inner else None),
            }
    print(
        json.dumps(
            {
                "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "threads": args.threads,
                "images": args.images,
                "resolution": size,
                "steps": args.steps,
                "inner_steps": args.inner_steps,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
