"""Tiny base model, tokenizer, build-base, train-vae and sample-grid (CPU, seconds each)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtraverse import cli
from medtraverse.core.errors import InputError
from tests.fakedata import write_prep
from tests.oneline import assert_one_line_error, one_line_input_error, run_main

NEUTRAL = "Normal chest X-ray with no significant findings"


# test_finetune imports the prepared-set fake under this name; it is fakedata's one fake.
make_prep = write_prep


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model  # conftest's one tiny pipeline (read only: tests write elsewhere)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bytes_to_unicode_is_a_bijection_on_printables() -> None:
    from medtraverse.models.tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"  # as OpenAI's table


def test_every_prompt_word_is_one_token() -> None:
    from medtraverse.models.tokenizer import PROMPT_TEXTS, build_tokenizer, words_of

    tokenizer = build_tokenizer()
    for word in words_of(PROMPT_TEXTS):
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    ids = tokenizer("a dermoscopic image with melanoma (MEL) with hairs visible on skin").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    words = "a dermoscopic image with melanoma ( mel ) with hairs visible on skin".split()
    assert len(ids) == 2 + len(words)
    # unknown words still tokenize (into characters), they never fail
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]


def test_tiny_pipeline_loads_in_stock_diffusers_and_generates(tiny: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny, local_files_only=True)
    assert pipe.unet.config.sample_size == 8 and pipe.vae_scale_factor == 4
    assert pipe.text_encoder.config.hidden_size == 32
    assert pipe.text_encoder.config.num_hidden_layers == 2
    assert list(pipe.unet.config.block_out_channels) == [32, 64]
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.clip_sample
    assert (tiny / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny / "tokenizer" / "vocab.json").is_file()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        NEUTRAL,
        num_inference_steps=3,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_tiny_pipeline_is_deterministic_from_the_seed(tiny: Path, tmp_path: Path) -> None:
    from medtraverse.models.pipeline import build_tiny_pipeline, load_pipeline

    a, b = load_pipeline(tiny), load_pipeline(build_tiny_pipeline(tmp_path / "again", seed=0))
    c = load_pipeline(build_tiny_pipeline(tmp_path / "other", seed=1))
    for name in ("unet", "vae", "text_encoder"):
        assert _same(_weights(getattr(a, name)), _weights(getattr(b, name))), name
        assert not _same(_weights(getattr(a, name)), _weights(getattr(c, name))), name


def test_build_base_arch_from_params(tmp_path: Path) -> None:
    from medtraverse.models.pipeline import load_pipeline, pipeline_resolution

    out = tmp_path / "base"
    params = {"resolution": 64, "unet_layers_per_block": 1, "extra_prompts": ["zebra stripes"]}
    assert cli.main(["build-base", "--out", str(out), "--params", json.dumps(params)]) == 0
    pipe = load_pipeline(out)
    assert pipeline_resolution(pipe) == 64 and pipe.unet.config.layers_per_block == 1
    assert pipe.tokenizer.tokenize("zebra") == ["zebra</w>"]
    assert json.loads((out / "provenance.json").read_text())["stage"] == "build-base"


def test_build_base_real_writes_a_pointer_that_load_pipeline_follows(
    tiny: Path, tmp_path: Path
) -> None:
    from medtraverse.models.pipeline import is_tiny, load_pipeline, resolve_base

    out = tmp_path / "real"
    assert (
        cli.main(["build-base", "--out", str(out), "--params", json.dumps({"base": str(tiny)})])
        == 0
    )
    assert not is_tiny(out) and resolve_base(out) == str(tiny.resolve())
    assert sorted(p.name for p in out.iterdir()) == ["base.json", "provenance.json"]
    pipe = load_pipeline(out)
    assert _same(_weights(pipe.unet), _weights(load_pipeline(tiny).unet))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"resolution": 30}, "params.resolution"),
        ({"unet_block_out_channels": "32"}, "params.unet_block_out_channels"),
        ({"colour": 1}, "params.colour: unknown key"),
        ({"base": "/no/such/folder", "resolution": 32}, "params.resolution"),
        ({"base": "no-such/hub-id"}, "params.base='no-such/hub-id'"),
    ],
)
def test_build_base_bad_params_one_line_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, params: dict, message: str
) -> None:
    out = tmp_path / "base"
    proc = run_main(capsys, "build-base", "--out", str(out), "--params", json.dumps(params))
    prefix = "medtraverse build-base: error: "
    assert_one_line_error(proc, message, prefix=prefix, trees={tmp_path: {}})


def test_check_pipeline_folder_names_the_missing_part(tiny: Path, tmp_path: Path) -> None:
    import shutil

    from medtraverse.models.pipeline import check_pipeline_folder

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(InputError, match=r"vae: missing folder"):
        check_pipeline_folder(broken)


def test_train_vae_learns_and_sets_the_scaling_factor(tiny: Path, tmp_path: Path) -> None:
    from medtraverse.models.cache import encode_images, load_images, load_manifest
    from medtraverse.models.pipeline import load_pipeline
    from medtraverse.models.vae import train_vae

    prep = write_prep(tmp_path / "prep")
    out = train_vae(tiny, prep, tmp_path / "vae", {"steps": 40, "batch_size": 8})
    images = load_images(prep, load_manifest(prep), 32)

    def recon_mse(path: Path) -> tuple[float, float]:
        vae = load_pipeline(path).vae
        with torch.no_grad():
            mean, _ = encode_images(vae, images)
            err = float(((vae.decode(mean).sample - images) ** 2).mean())
        return err, float(vae.config.scaling_factor * mean.std())

    before, _ = recon_mse(tiny)
    after, scaled_std = recon_mse(out)
    assert after < 0.5 * before
    assert scaled_std == pytest.approx(1.0, rel=1e-4)  # scaling_factor = 1 / std of the latents
    base, trained = load_pipeline(tiny), load_pipeline(out)
    assert _same(_weights(base.unet), _weights(trained.unet))
    assert _same(_weights(base.text_encoder), _weights(trained.text_encoder))
    assert json.loads((out / "provenance.json").read_text())["stage"] == "train-vae"


def test_train_vae_refuses_a_real_base_and_bad_images(tiny: Path, tmp_path: Path) -> None:
    from medtraverse.models.pipeline import build_base
    from medtraverse.models.vae import train_vae

    prep = write_prep(tmp_path / "prep")
    pointer = build_base(tmp_path / "real", {"base": str(tiny)})
    with one_line_input_error("demo only", untouched=[tmp_path / "out"]):
        train_vae(pointer, prep, tmp_path / "out", {"steps": 1})
    Image.new("RGB", (16, 16)).save(prep / "images" / "img001.png")
    wrong_size = re.compile(r"image_id='img001'.*16x16; expected 32x32")
    with one_line_input_error(wrong_size, untouched=[tmp_path / "out"]):
        train_vae(tiny, prep, tmp_path / "out", {"steps": 1})


def test_sample_grid_shares_the_initial_noise_across_prompts(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples.png"
    params = {"prompts": [NEUTRAL, NEUTRAL], "seeds": [3, 4], "steps": 2, "cell": 32}
    params["labels"] = False
    assert (
        cli.main(
            ["sample-grid", "--model", str(tiny), "--out", str(out), "--params", json.dumps(params)]
        )
        == 0
    )
    grid = np.asarray(Image.open(out))
    assert grid.shape == (64, 64, 3)
    # same prompt, same seed -> identical cells; different seeds -> different cells
    assert np.array_equal(grid[:32, :32], grid[:32, 32:])
    assert not np.array_equal(grid[:32, :32], grid[32:, :32])
    assert (out.parent / "samples.png.prov.json").is_file()
