"""Traversal engine vs the authors' per-k pipeline calls, side by side in one run.

Compares LATENT GENERATION ONLY (text encoding + denoising, ``output_type="latent"``; VAE decode,
Bezier frames and PNG writing excluded: they are the same work on both sides) for:

- ``authors``: the authors' practice: one stock ``StableDiffusionPipeline`` call per seed and per
  trajectory (the neutral call + one call per swap step k with a ``callback_on_step_end`` that
  replaces ``prompt_embeds`` at step k), batch 1;
- ``per-k batched``: the same per-k calls, each batched over all the engine's seeds;
- ``engine wavefront`` and ``engine branch``: :func:`medtraverse.traversal.engine.generate_latents`.

It counts U-Net evaluations per seed by hooking ``unet.forward`` (batch rows / 2 with guidance),
reports wall-clock ratios, and checks the engine's latents against the authors' (max abs diff;
``branch`` at batch size 1 must be bit-identical).

    python benchmarks/traverse.py                 # tiny model, CPU, 8 seeds, 50 steps, 9 swaps
    python benchmarks/traverse.py --sd15 --device cuda --dtype bfloat16 --batch-size 8
    python benchmarks/traverse.py --authors-only  # the yardstick benchmarks/demo.py divides by

``--sd15`` builds SD 1.5's architecture with random weights at 512 px (no download) and also
reports images/s and the fraction of the GPU's bf16 peak at 0.80 TFLOP per U-Net evaluation
(METHOD.md section 8). It needs a GPU; it was not run on the CPU development machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from medtraverse.traversal.engine import TraverseParams, UNetCounter, generate_latents  # noqa: E402

NEUTRAL = "Normal chest X-ray with no significant findings"
ATTRIBUTE = "Chest X-ray showing Support Devices"
SD15_TFLOP_PER_EVAL = 0.80


def build_pipe(args: argparse.Namespace, tmp: Path) -> Any:
    """The tiny pipeline (or SD 1.5's architecture, random weights) on the chosen device."""
    from medtraverse.models.pipeline import build_tiny_pipeline, load_pipeline

    dtype = getattr(torch, args.dtype)
    if args.sd15:
        from medtraverse.models.pipeline import pipeline_from_configs, sd15_configs
        from medtraverse.models.tokenizer import build_tokenizer

        tok = build_tokenizer()
        configs = sd15_configs(len(tok), int(tok.bos_token_id), int(tok.eos_token_id))
        pipe = pipeline_from_configs(configs, tok, seed=0).to(args.device, dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    model = Path(args.model) if args.model else build_tiny_pipeline(tmp / "tiny", seed=0)
    return load_pipeline(model, dtype=dtype, device=args.device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def per_k_calls(pipe: Any, seeds: list[int], params: TraverseParams) -> dict[Any, torch.Tensor]:
    """The authors' method: one full pipeline call per trajectory, batched over ``seeds``."""
    b = len(seeds)
    out: dict[Any, torch.Tensor] = {}
    for k in [None, *params.swap_steps]:

        def swap(p: Any, i: int, t: Any, kw: dict, k: int | None = k) -> dict:
            if i != k:
                return {}
            e_attr, neg = p.encode_prompt(ATTRIBUTE, p.device, 1, True)
            return {"prompt_embeds": torch.cat([neg.expand(b, -1, -1), e_attr.expand(b, -1, -1)])}

        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        out["neutral" if k is None else k] = (
            pipe(
                [NEUTRAL] * b,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance,
                eta=params.eta,
                generator=gens if b > 1 else gens[0],
                output_type="latent",
                callback_on_step_end=swap if k is not None else None,
                callback_on_step_end_tensor_inputs=["prompt_embeds"],
            )
            .images.float()
            .cpu()
        )
    return out


def timed(name: str, fn: Any, pipe: Any, n_seeds: int, device: str) -> dict[str, Any]:
    counter = UNetCounter().attach(pipe.unet)
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - start
    counter.detach()
    evals = counter.rows / 2 / n_seeds  # guidance pairs counted once
    print(f"  {name:<18} {seconds:8.2f} s  {evals:6.1f} U-Net evals/seed", file=sys.stderr)
    return {"name": name, "seconds": seconds, "unet_evals_per_seed": evals, "result": result}


def best(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fastest repeat of each method (a shared machine only ever adds time)."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["name"] not in out or r["seconds"] < out[r["name"]]["seconds"]:
            out[r["name"]] = r
    for r in out.values():
        r["all_seconds"] = [x["seconds"] for x in runs if x["name"] == r["name"]]
    return list(out.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--swap-steps", default="5,10,15,20,25,30,35,40,45")
    ap.add_argument("--batch-size", type=int, default=8, help="engine seeds per block")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--model", help="a pipeline folder (default: build the tiny one)")
    ap.add_argument("--sd15", action="store_true", help="SD 1.5 architecture, random, 512 px")
    ap.add_argument("--compile", action="store_true", help="torch.compile the engine's U-Net")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--skip-authors", action="store_true", help="skip the batch-1 baseline")
    which.add_argument(
        "--authors-only",
        action="store_true",
        help="time only the batch-1 baseline (the demo's yardstick; no engine comparison)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="repeat, report the fastest of each")
    ap.add_argument("--authors-once", action="store_true", help="batch-1 baseline not repeated")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100)")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    swaps = [int(k) for k in args.swap_steps.split(",") if k]
    seeds = list(range(args.seeds))
    base = dict(steps=args.steps, swap_steps=swaps, batch_size=args.batch_size, dtype=args.dtype)
    base["compile"] = args.compile

    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipe(args, Path(tmp))
        print(
            f"{len(seeds)} seeds, {args.steps} steps, swaps {swaps}, {args.device}", file=sys.stderr
        )
        params = TraverseParams.from_dict(base)
        runs = []
        # Warm-up (allocators, lazy inits, compile) outside the timings.
        generate_latents(
            pipe, seeds[:1], NEUTRAL, ATTRIBUTE, {**base, "steps": 2, "swap_steps": [0]}
        )
        for rep in range(args.repeats):  # interleaved, so drifting load hits all alike
            print(f" repeat {rep + 1}/{args.repeats}", file=sys.stderr)
            if not args.skip_authors and (rep == 0 or not args.authors_once):
                runs.append(
                    timed(
                        "authors (batch 1)",
                        lambda: {s: per_k_calls(pipe, [s], params) for s in seeds},
                        pipe,
                        len(seeds),
                        args.device,
                    )
                )
            if args.authors_only:
                continue
            runs.append(
                timed(
                    "per-k batched",
                    lambda: per_k_calls(pipe, seeds, params),
                    pipe,
                    len(seeds),
                    args.device,
                )
            )
            for batching in ("wavefront", "branch"):
                p = TraverseParams.from_dict({**base, "batching": batching})
                runs.append(
                    timed(
                        f"engine {batching}",
                        lambda p=p: generate_latents(pipe, seeds, NEUTRAL, ATTRIBUTE, p),
                        pipe,
                        len(seeds),
                        args.device,
                    )
                )
        runs = best(runs)

    by = {r["name"]: r for r in runs}
    report: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "device": args.device
        if not args.device.startswith("cuda")
        else torch.cuda.get_device_name(),
        "threads": args.threads,
        "model": "sd15-random-512px" if args.sd15 else "tiny",
        "seeds": len(seeds),
        "steps": args.steps,
        "swap_steps": swaps,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "measured": "latent generation only (decode excluded)",
        "repeats": args.repeats,
        "runs": {
            r["name"]: {k: r[k] for k in ("seconds", "all_seconds", "unet_evals_per_seed")}
            for r in runs
        },
    }
    engines = [e for e in ("engine wavefront", "engine branch") if e in by]
    if engines:
        print("\nspeed-up of the engine (latent generation only, decode excluded):")
    for eng in engines:
        for ref in ("authors (batch 1)", "per-k batched"):
            if ref in by:
                ratio = by[ref]["seconds"] / by[eng]["seconds"]
                report[f"{eng} vs {ref}"] = ratio
                print(f"  {eng:<17} vs {ref:<18} {ratio:5.2f}x")
    # Correctness, side by side: the engine's latents against the per-k calls.
    ref_name = "authors (batch 1)" if "authors (batch 1)" in by else "per-k batched"
    ref = by[ref_name]["result"]
    for eng in engines:
        got = by[eng]["result"]
        diff = 0.0
        for j, s in enumerate(seeds):
            for key in ["neutral", *swaps]:
                want = ref[s][key][0] if ref_name.startswith("authors") else ref[key][j]
                diff = max(diff, (got[s][key] - want).abs().max().item())
        report[f"{eng} max abs diff vs {ref_name}"] = diff
        print(f"  {eng:<17} max |latent - {ref_name}| = {diff:.3g}")
    if args.sd15 or args.device.startswith("cuda"):
        for eng in engines:
            r = by[eng]
            images = len(seeds) * (1 + len(swaps)) / r["seconds"]
            tflops = r["unet_evals_per_seed"] * 2 * len(seeds) * SD15_TFLOP_PER_EVAL / r["seconds"]
            report[f"{eng} images/s"] = images
            report[f"{eng} fraction of peak"] = tflops / args.peak_tflops if args.sd15 else None
            print(
                f"  {eng:<17} {images:.2f} images/s (latents), {tflops:.0f} TFLOP/s (SD 1.5 count)"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
