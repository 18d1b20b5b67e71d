"""Fine-tuning throughput with and without the encoder cache, side by side in one run.

Baseline: every step reads its images from disk and runs the frozen VAE encoder and CLIP text
encoder (what diffusers' train_text_to_image.py does). Project path: ``medtraverse cache`` once,
then steps that read posterior mean/std and prompt embeddings (DESIGN.md rule 5). Both run the
same ``medtraverse.models.finetune.finetune`` with the same params and seed; samples/second counts
training steps only (model loading, checkpoints and the final save excluded).

    python benchmarks/finetune.py                 # tiny model, 32 px, CPU (seconds)
    python benchmarks/finetune.py --sd15          # SD 1.5's architecture, random weights, 512 px
                                                  # (built from config dicts, nothing downloaded;
                                                  # needs a GPU to finish in reasonable time)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_prep(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """A prepared dataset of ``n`` random-blob images with three prompts (manifest columns as
    COMMON.md; labels left out: fine-tuning reads only id, path, split and prompt)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    prompts = [
        "Normal chest X-ray with no significant findings",
        "Chest X-ray showing Support Devices",
        "Chest X-ray showing Pleural Effusion",
    ]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        rel = f"images/img{i:05d}.png"
        Image.fromarray(img).save(root / rel)
        rows.append(
            {
                "image_id": f"img{i:05d}",
                "path": rel,
                "source_path": rel,
                "split": "train",
                "prompt": prompts[i % 3],
                "patient_id": f"patient{i:05d}",
            }
        )
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    return root


def build_sd15_random(out: Path) -> Path:
    """SD 1.5's architecture with random weights (no download), tiny tokenizer."""
    from medtraverse.models.pipeline import pipeline_from_configs, sd15_configs
    from medtraverse.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    configs = sd15_configs(bos=int(tokenizer.bos_token_id), eos=int(tokenizer.eos_token_id))
    pipe = pipeline_from_configs(configs, tokenizer, seed=0)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    from medtraverse.models.cache import build_cache
    from medtraverse.models.finetune import finetune
    from medtraverse.models.pipeline import build_tiny_pipeline

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    size = 512 if args.sd15 else 32
    base = build_sd15_random(tmp / "base") if args.sd15 else build_tiny_pipeline(tmp / "base")
    prep = write_prep(tmp / "prep", args.images, size)
    params = {
        "train_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "max_train_steps": args.steps,
        "checkpointing_steps": 10**9,
        "mixed_precision": "fp16" if torch.cuda.is_available() else "no",
        "learning_rate": 1e-5,
    }
    t = time.perf_counter()
    cache = build_cache(base, prep, tmp / "cache", {"batch_size": args.batch_size})
    cache_seconds = time.perf_counter() - t
    results = {}
    for name, source in (("on the fly", {"prep": prep}), ("cache", {"cache": cache})):
        out = tmp / name.replace(" ", "-") / "pipeline"
        finetune(base, out, params, **source)
        extra = json.loads((out / "provenance.json").read_text())["extra"]
        results[name] = extra["samples_per_second"]
    report = {
        "model": "SD 1.5 architecture (random), 512 px" if args.sd15 else "tiny, 32 px",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": args.threads,
        "machine": platform.platform(),
        "date": dt.date.today().isoformat(),
        "images": args.images,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "samples_per_second": results,
        "speedup": round(results["cache"] / results["on the fly"], 2),
        "cache_build_seconds": round(cache_seconds, 2),
        "cache_images_per_second": round(args.images / cache_seconds, 1),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="SD 1.5 architecture at 512 px")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: shared box)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
