"""Encoder cache and U-Net fine-tuning on the tiny model (CPU, seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medtraverse import cli
from tests.oneline import assert_one_line_error, one_line_input_error, run_main
from tests.test_models import NEUTRAL, make_prep

FAST = {"train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def base(tiny_model: Path) -> Path:
    return tiny_model  # conftest's one tiny pipeline (read only: tests write elsewhere)


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prep(tmp_path_factory.mktemp("prep"))


@pytest.fixture(scope="module")
def cache(base: Path, prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtraverse.models.cache import build_cache

    return build_cache(base, prep, tmp_path_factory.mktemp("cache") / "cache", {"flip": True})


def _unet(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_holds_each_image_flip_and_distinct_prompt_once(
    base: Path, prep: Path, cache: Path
) -> None:
    from medtraverse.models.cache import encode_images, load_cache, load_images, load_manifest
    from medtraverse.models.pipeline import load_pipeline

    enc = load_cache(cache)
    frame = load_manifest(prep, "train")
    assert enc.image_ids == list(frame["image_id"]) and len(enc.image_ids) == 10
    assert enc.mean.shape == (20, 4, 8, 8) and enc.std.shape == (20, 4, 8, 8)
    assert enc.prompts[0] == "" and sorted(enc.prompts[1:]) == sorted(set(frame["prompt"]))
    assert enc.embeddings.shape == (4, 77, 32)
    assert [enc.prompts[i] for i in enc.prompt_of_image] == list(frame["prompt"])
    images = load_images(prep, frame, 32)
    vae = load_pipeline(base).vae
    flipped_mean, flipped_std = encode_images(vae, torch.flip(images[3:4], dims=[-1]))
    row = enc.row_of[(3, 1)]
    assert torch.allclose(enc.mean[row], flipped_mean[0], atol=1e-5)
    assert torch.allclose(enc.std[row], flipped_std[0], atol=1e-5)
    assert not torch.allclose(enc.mean[enc.row_of[(3, 0)]], enc.mean[row])


def test_cached_and_on_the_fly_encoding_give_the_same_loss(
    base: Path, prep: Path, cache: Path
) -> None:
    from diffusers import DDPMScheduler

    from medtraverse.models.finetune import CachedInputs, EncodedInputs, diffusion_loss, draw_step
    from medtraverse.models.pipeline import load_pipeline

    pipe = load_pipeline(base)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    cached = CachedInputs(cache, flip=True)
    fresh = EncodedInputs(prep, pipe, True, torch.device("cpu"), torch.float32)
    assert cached.n == fresh.n and cached.latent_shape == fresh.latent_shape
    idx = torch.tensor([0, 3, 5, 7, 9, 2])
    for micro_step in range(100):  # a step whose draws mix flips and dropped prompts
        draws = draw_step(
            0, micro_step, 0, 6, cached.latent_shape, num_train_timesteps=1000, prompt_dropout=0.5
        )
        if draws.flip.any() and (~draws.flip).any() and draws.drop.any() and (~draws.drop).any():
            break
    else:
        pytest.fail("no mixed draws in 100 steps")
    scale = float(pipe.vae.config.scaling_factor)
    with torch.no_grad():
        a = diffusion_loss(
            pipe.unet, scheduler, *cached(idx, draws.flip), cached.uncond, draws, scale
        )
        b = diffusion_loss(
            pipe.unet, scheduler, *fresh(idx, draws.flip), fresh.uncond, draws, scale
        )
    assert torch.isfinite(a) and float(a) == pytest.approx(float(b), rel=1e-5)


def test_min_snr_weighting_caps_the_low_noise_timesteps(base: Path, cache: Path) -> None:
    """min-SNR-gamma: weight min(SNR, gamma) / SNR per sample, so timesteps with SNR above gamma
    count gamma / SNR, the noisy ones fully; a gamma above every SNR is the plain mean."""
    from diffusers import DDPMScheduler

    from medtraverse.models.finetune import CachedInputs, diffusion_loss, draw_step, min_snr_weights
    from medtraverse.models.pipeline import load_pipeline

    pipe = load_pipeline(base)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = scheduler.alphas_cumprod.double()
    snr = alphas / (1 - alphas)
    t = torch.tensor([0, 100, 999])  # SNR about 1,175, 8.5 and 0.005 on SD's schedule
    w = min_snr_weights(scheduler, t, 5.0)
    assert float(snr[0]) > 1000 and 8 < float(snr[100]) < 9 and float(snr[999]) < 0.01
    assert w.tolist() == pytest.approx([5 / float(snr[0]), 5 / float(snr[100]), 1.0], rel=1e-6)

    cached = CachedInputs(cache, flip=False)
    draws = draw_step(0, 0, 0, 6, cached.latent_shape, num_train_timesteps=1000, prompt_dropout=0)
    idx, scale = torch.arange(6), float(pipe.vae.config.scaling_factor)
    args = (pipe.unet, scheduler, *cached(idx, draws.flip), cached.uncond, draws, scale)
    with torch.no_grad():
        plain, huge, capped = (diffusion_loss(*args, g) for g in (0.0, 1e9, 5.0))
        weights = min_snr_weights(scheduler, draws.timesteps, 5.0)
    assert float(huge) == pytest.approx(float(plain), rel=1e-5)
    assert weights.min() < 1 and float(capped) < float(plain)


def test_epoch_order_is_a_permutation_split_across_processes() -> None:
    from medtraverse.models.finetune import batch_indices, micro_steps_per_epoch

    n, batch, world = 24, 4, 3
    assert micro_steps_per_epoch(n, batch, world) == 2
    for epoch in range(2):
        seen = [
            batch_indices(7, epoch * 2 + j, n, batch, world, rank)
            for j in range(2)
            for rank in range(world)
        ]
        assert sorted(torch.cat(seen).tolist()) == list(range(n))
    assert not torch.equal(batch_indices(7, 0, n, batch, 1, 0), batch_indices(7, 6, n, batch, 1, 0))


def test_two_step_finetune_writes_a_loadable_pipeline_and_keeps_encoders_frozen(
    base: Path, cache: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "models" / "chexpert" / "pipeline"
    params = {**FAST, "max_train_steps": 2, "checkpointing_steps": 1, "checkpoints_total_limit": 1}
    checkpoints = out.parent / "checkpoints"
    argv = ["finetune", "--base", str(base), "--cache", str(cache), "--out", str(out)]
    argv += ["--checkpoints", str(checkpoints)]  # the flags of the finetune_unet rule
    assert cli.main([*argv, "--params", json.dumps(params)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    image = pipe(NEUTRAL, num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert not _same(_unet(out), _unet(base))
    for part, name in (("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        assert (out / part / f"{name}.safetensors").read_bytes() == (
            base / part / f"{name}.safetensors"
        ).read_bytes(), part
    loss = (out.parent / "loss.csv").read_text().splitlines()
    assert loss[0] == "step,epoch,loss,lr" and [r.split(",")[0] for r in loss[1:]] == ["1", "2"]
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint-00000002"
    ]  # total limit 1: the older one was removed
    record = json.loads((out / "provenance.json").read_text())
    assert record["stage"] == "finetune" and record["extra"]["steps"] == 2


class Preempted(Exception):
    """Stands in for a SLURM timeout in the middle of a run."""


def test_resume_after_preemption_gives_identical_weights(
    base: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medtraverse.models import finetune as ft

    params = {
        **FAST,
        "gradient_accumulation_steps": 2,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "flip": True,
        "prompt_dropout": 0.3,
    }
    once = ft.finetune(base, tmp_path / "once" / "pipeline", params, cache=cache)

    real_draw = ft.draw_step

    def dying_draw(seed: int, micro_step: int, *args: object, **kwargs: object) -> object:
        if micro_step == 5:  # inside optimizer step 3, after checkpoint-2 was written
            raise Preempted
        return real_draw(seed, micro_step, *args, **kwargs)

    out = tmp_path / "twice" / "pipeline"
    monkeypatch.setattr(ft, "draw_step", dying_draw)
    with pytest.raises(Preempted):
        ft.finetune(base, out, params, cache=cache)
    assert not out.exists()
    assert [s for s, _ in ft.list_checkpoints(out.parent / "checkpoints")] == [2]
    monkeypatch.setattr(ft, "draw_step", real_draw)
    ft.finetune(base, out, params, cache=cache)

    assert _same(_unet(once), _unet(out))
    record = json.loads((out / "provenance.json").read_text())["extra"]
    assert record["resumed_from_step"] == 2 and record["trained_steps_this_run"] == 2
    assert (once.parent / "loss.csv").read_text() == (out.parent / "loss.csv").read_text()


def test_changed_params_do_not_resume_a_foreign_checkpoint(
    base: Path, cache: Path, tmp_path: Path
) -> None:
    from medtraverse.models.finetune import finetune

    out = tmp_path / "run" / "pipeline"
    finetune(base, out, {**FAST, "max_train_steps": 1}, cache=cache)
    finetune(base, out, {**FAST, "max_train_steps": 2, "learning_rate": 1e-4}, cache=cache)
    record = json.loads((out / "provenance.json").read_text())["extra"]
    assert record["resumed_from_step"] is None and record["trained_steps_this_run"] == 2


def test_on_the_fly_with_ema_checkpointing_and_validation(
    base: Path, prep: Path, tmp_path: Path
) -> None:
    from medtraverse.models.finetune import finetune

    out = tmp_path / "run" / "pipeline"
    params = {
        **FAST,
        "max_train_steps": 2,
        "use_ema": True,
        "ema_decay": 0.5,
        "gradient_checkpointing": True,
        "validation_steps": 2,
        "validation_prompts": [NEUTRAL],
        "validation_seeds": [0, 1],
        "validation_inference_steps": 2,
    }
    finetune(base, out, params, prep=prep)
    assert (out.parent / "validation" / "step-00000002.png").is_file()
    assert (out.parent / "checkpoints" / "checkpoint-00000002" / "unet_ema").is_dir()
    assert not _same(_unet(out), _unet(base))
    assert json.loads((out / "provenance.json").read_text())["extra"]["inputs"] == (
        "encoded on the fly"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"learning_rate": "fast"}, "params.learning_rate: got 'fast'"),
        ({"mixed_precision": "fp8"}, "params.mixed_precision"),
        ({"lr": 1e-4}, "params.lr: unknown key"),
        ({"flip": True, "max_train_steps": 1}, "has no flipped images"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    base: Path,
    prep: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    params: dict,
    message: str,
) -> None:
    from medtraverse.models.cache import build_cache

    plain = build_cache(base, prep, tmp_path / "cache", {})
    out = tmp_path / "run" / "pipeline"
    argv = ["finetune", "--model", str(base), "--cache", str(plain), "--out", str(out)]
    proc = run_main(capsys, *argv, "--params", json.dumps(params))
    assert_one_line_error(proc, message, prefix="medtraverse finetune: error: ", untouched=[out])


def test_cache_rejects_a_manifest_without_prompts(base: Path, prep: Path, tmp_path: Path) -> None:
    import shutil

    import pandas as pd

    from medtraverse.models.cache import build_cache

    broken = tmp_path / "prep"
    shutil.copytree(prep, broken)
    frame = pd.read_parquet(broken / "manifest.parquet").drop(columns=["prompt"])
    frame.to_parquet(broken / "manifest.parquet", index=False)
    with one_line_input_error("missing column 'prompt'", untouched=[tmp_path / "cache"]):
        build_cache(base, broken, tmp_path / "cache", {})


def test_cache_cli_takes_the_rule_flags(base: Path, prep: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    argv = ["cache", "--base", str(base), "--manifest", str(prep / "manifest.parquet")]
    assert cli.main([*argv, "--out", str(out), "--params", '{"flip": false}']) == 0
    meta = json.loads((out / "cache.json").read_text())
    assert meta["rows"] == meta["images"] == 10 and not meta["flip"]


@pytest.mark.parametrize(("schedule", "resumes"), [("constant", True), ("cosine", False)])
def test_a_longer_run_resumes_only_under_a_constant_rate(
    base: Path, cache: Path, tmp_path: Path, schedule: str, resumes: bool
) -> None:
    from medtraverse.models.finetune import finetune

    params = {**FAST, "lr_scheduler": schedule, "checkpointing_steps": 2}
    out = tmp_path / "run" / "pipeline"
    finetune(base, out, {**params, "max_train_steps": 2}, cache=cache)
    finetune(base, out, {**params, "max_train_steps": 4}, cache=cache)
    record = json.loads((out / "provenance.json").read_text())["extra"]
    assert record["resumed_from_step"] == (2 if resumes else None)
    # either way: the weights a fresh 4-step run makes (a cosine rate decays over all 4 steps)
    fresh = finetune(
        base, tmp_path / "fresh" / "pipeline", {**params, "max_train_steps": 4}, cache=cache
    )
    assert _same(_unet(fresh), _unet(out))
