"""Inversion of real images: DDIM against diffusers' DDIMInverseScheduler, null-text round trip,
shards (layout, resume after kill -9), one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medtraverse.core.errors import InputError
from medtraverse.core.params import parse_params
from medtraverse.traversal.invert import (
    Inverter,
    InvertParams,
    image_blocks,
    invert_shard,
    load_images,
    select_images,
)
from tests.oneline import assert_one_line_error, run_cli
from tests.test_traverse import model_dir, pipe  # noqa: F401 - the shared tiny pipeline
from tests.workflow_utils import env

PROMPT = "Chest X-ray showing Pleural Effusion"
# The tiny U-Net is untrained: its embeddings need a larger Adam rate than SD's 1e-2.
TINY = {"steps": 10, "inner_steps": 20, "learning_rate": 0.1, "batch_size": 2}


def write_images(folder: Path, n: int, size: int = 32) -> Path:
    """``n`` distinct images (a bright block at a different place each) and a CSV of them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.full((size, size, 3), 40, np.uint8)
        a[8:24, 2 + 2 * i : 16 + 2 * i] = 200
        a += rng.integers(0, 20, a.shape, dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i:02d}.png")
    pd.DataFrame({"path": [f"img{i:02d}.png" for i in range(n)]}).to_csv(
        folder / "images.csv", index=False
    )
    return folder


def test_ddim_inversion_equals_diffusers_inverse_scheduler(pipe: Any) -> None:  # noqa: F811
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    inv = Inverter(pipe, parse_params(InvertParams, {"steps": 10}))
    cond, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    z0 = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    mine = inv.ddim_inversion(z0, cond.expand(2, -1, -1))

    # diffusers' inverse scheduler used the standard way (as its inversion pipelines do)
    ref = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    ref.set_timesteps(10)
    sampler = DDIMScheduler.from_config(pipe.scheduler.config)
    sampler.set_timesteps(10)
    assert torch.equal(ref.timesteps, sampler.timesteps.flip(0))  # the sampler's own timesteps
    x = z0
    with torch.no_grad():
        for i, t in enumerate(ref.timesteps):
            eps = pipe.unet(
                ref.scale_model_input(x, t), t, encoder_hidden_states=cond.expand(2, -1, -1)
            ).sample
            x = ref.step(eps, t, x).prev_sample
            torch.testing.assert_close(mine[i + 1], x, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mine[-1], z0, atol=1e-2)  # it really moved


def test_null_text_round_trip_beats_plain_ddim_at_guidance(
    pipe: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    folder = write_images(tmp_path, 2)
    images = load_images([str(folder / f"img{i:02d}.png") for i in range(2)], 32)
    inv = Inverter(pipe, parse_params(InvertParams, TINY))
    res = inv.invert(images, [PROMPT, PROMPT], None)
    null_err = ((res.recon - res.z0) ** 2).mean(dim=(1, 2, 3))
    ddim_err = ((res.ddim_recon - res.z0) ** 2).mean(dim=(1, 2, 3))
    assert (null_err * 5 < ddim_err).all(), (null_err, ddim_err)
    assert res.uncond.shape == (10, 2, *pipe.encode_prompt("", "cpu", 1, False)[0].shape[1:])
    # sampling again from z_T with the fitted embeddings is the reconstruction
    again = inv.sample(res.z_t, pipe.encode_prompt([PROMPT] * 2, "cpu", 1, False)[0], res.uncond)
    torch.testing.assert_close(again, res.recon, rtol=1e-4, atol=1e-4)
    assert all(n > 0 for n in res.inner_used)


# --- inputs and shards ----------------------------------------------------------------------


def test_select_images_from_manifest_csv_and_folder(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "imgs", 3)
    params = parse_params(InvertParams, {"prompt": PROMPT})
    by_folder = select_images(images=folder, params=params)
    by_csv = select_images(images=folder / "images.csv", params=params)
    assert (
        by_folder["image_id"].tolist()
        == by_csv["image_id"].tolist()
        == [
            "img00",
            "img01",
            "img02",
        ]
    )
    assert (by_csv["file"] == by_folder["file"]).all()
    prepared = tmp_path / "prepared"
    (prepared / "images").mkdir(parents=True)
    for i in range(3):
        (prepared / "images" / f"p{i}.png").write_bytes((folder / f"img0{i}.png").read_bytes())
    pd.DataFrame(
        {
            "image_id": ["p2", "p0", "p1"],
            "path": [f"images/p{i}.png" for i in (2, 0, 1)],
            "source_path": ["x", "y", "z"],
            "split": ["test", "train", "test"],
            "prompt": ["caption 2", "caption 0", "caption 1"],
            "pleural_effusion": [1, 0, 0],
        }
    ).to_parquet(prepared / "manifest.parquet")
    rows = select_images(manifest=prepared, params=parse_params(InvertParams, {}))
    assert rows["image_id"].tolist() == ["p1", "p2"] and rows["prompt"].tolist() == [
        "caption 1",
        "caption 2",
    ]
    assert rows["pleural_effusion"].tolist() == [0, 1]
    normal = parse_params(InvertParams, {"where": {"pleural_effusion": 0}})
    assert select_images(manifest=prepared, params=normal)["image_id"].tolist() == ["p1"]
    assert normal.bits() == parse_params(InvertParams, {}).bits()  # selection, not bits
    for where, message in (
        ({"cardiomegaly": 1}, "not a manifest column"),
        ({"pleural_effusion": 5}, "selects no images"),
    ):
        with pytest.raises(InputError, match=message):
            select_images(manifest=prepared, params=parse_params(InvertParams, {"where": where}))
    assert image_blocks(1, 4, 2) == [[1], [2, 3], [4]]


def test_shard_layout_and_table(pipe: Any, tmp_path: Path) -> None:  # noqa: F811
    folder = write_images(tmp_path / "imgs", 3)
    out = invert_shard(
        "tiny",
        tmp_path / "shard-0000",
        dataset="chexpert",
        images=folder,
        params={**TINY, "inner_steps": 2, "prompt": PROMPT},
        pipe=pipe,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "shard-0000"]
    table = pd.read_parquet(out / "inversion.parquet")
    assert table["image_id"].tolist() == ["img00", "img01", "img02"]
    assert table["index"].tolist() == [0, 1, 2]
    for col in ("mse", "psnr", "ddim_mse", "ddim_psnr", "vae_mse", "latent_mse", "prompt"):
        assert col in table, col
    assert (table["method"] == "null_text").all() and (table["guidance"] == 7.5).all()
    lat = load_file(str(out / "latents.safetensors"))
    assert sorted(lat) == sorted(f"img0{i}/{k}" for i in range(3) for k in ("z_T", "z_0", "recon"))
    unc = load_file(str(out / "uncond.safetensors"))
    assert sorted(unc) == ["img00", "img01", "img02"] and unc["img00"].shape[0] == 10
    assert all((out / p).is_file() for p in [*table["real_path"], *table["recon_path"]])
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "invert" and prov["artifact"] == str(out)


def test_ddim_method_keeps_the_empty_prompt(pipe: Any, tmp_path: Path) -> None:  # noqa: F811
    folder = write_images(tmp_path / "imgs", 1)
    out = invert_shard(
        "tiny",
        tmp_path / "s",
        dataset="chexpert",
        images=folder,
        params={"steps": 4, "method": "ddim", "prompt": PROMPT},
        pipe=pipe,
    )
    unc = load_file(str(out / "uncond.safetensors"))["img00"]
    empty = pipe.encode_prompt("", "cpu", 1, False)[0][0]
    assert all(torch.equal(unc[i], empty) for i in range(4))
    table = pd.read_parquet(out / "inversion.parquet")
    assert table["latent_mse"].iloc[0] == table["ddim_latent_mse"].iloc[0]


def _cli_args(model: Path, folder: Path, out: Path) -> list[str]:
    params = '{"steps": 6, "inner_steps": 4, "learning_rate": 0.1, "batch_size": 1, '
    params += f'"prompt": "{PROMPT}"}}'
    return [
        "invert",
        "--model",
        str(model),
        "--out",
        str(out),
        "--dataset",
        "chexpert",
        "--images",
        str(folder),
        "--params",
        params,
    ]


@pytest.mark.slow
def test_kill_9_resumes_to_identical_bytes(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from tests.kill import assert_blocks_reused, saved_blocks

    folder = write_images(tmp_path / "imgs", 3)
    clean = tmp_path / "clean"
    assert run_cli(*_cli_args(model_dir, folder, clean)).returncode == 0
    out = tmp_path / "shard"
    scratch = tmp_path / "shard.partial"
    cmd = [sys.executable, "-m", "medtraverse", *_cli_args(model_dir, folder, out)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(scratch.glob("images-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert not out.exists() and len(list(scratch.glob("images-*"))) in (1, 2)
    saved = saved_blocks(scratch, ["images"])  # the finished blocks' images, merged into out
    assert run_cli(*_cli_args(model_dir, folder, out)).returncode == 0
    assert not scratch.exists()
    files = sorted(p.relative_to(clean) for p in clean.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "provenance.json":  # provenance: its clock differs
            assert (clean / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert_blocks_reused(saved, out)  # the killed run's blocks were reused, not recomputed


def test_cli_bad_input_is_one_line_and_writes_nothing(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = write_images(tmp_path / "imgs", 1)
    out = tmp_path / "out"
    args = _cli_args(model_dir, folder, out)
    bad = run_cli(*args[:-1], '{"inner_stepz": 3}')
    assert_one_line_error(bad, "params.inner_stepz: unknown key", untouched=[out])
    bad = run_cli(*args[:-1], '{"method": "exact"}')
    assert_one_line_error(bad, "params.method", "null_text", untouched=[out])
    nocap = run_cli(*args[:-1], '{"steps": 2}')
    assert_one_line_error(nocap, "an image has no prompt", untouched=[out])


# --- traversal from real images -------------------------------------------------------------


def _inverted_images(pipe: Any, tmp_path: Path, inner_steps: int) -> Path:  # noqa: F811
    """An inversion shard of three written images, all with one prompt."""
    return invert_shard(
        "tiny",
        tmp_path / "inv",
        dataset="chexpert",
        images=write_images(tmp_path / "imgs", 3),
        params={**TINY, "inner_steps": inner_steps, "prompt": PROMPT},
        pipe=pipe,
    )


def test_traversal_from_real_images(pipe: Any, tmp_path: Path) -> None:  # noqa: F811
    from medtraverse.traversal.real import traverse_images_shard

    inv = _inverted_images(pipe, tmp_path, inner_steps=3)
    settings = {"steps": 10, "swap_steps": [2, 6], "bezier_frames": 3, "batch_size": 2}
    kw = {"inversion": inv, "dataset": "chexpert", "trajectory": "support_devices", "pipe": pipe}
    attribute = "Chest X-ray showing Support Devices"
    out = traverse_images_shard(
        "tiny",
        tmp_path / "real-0000",
        attribute=attribute,
        params={**settings, "batching": "branch"},
        **kw,
    )
    lat = load_file(str(out / "latents.safetensors"))
    assert sorted(lat) == sorted(f"img0{i}/{k}" for i in range(3) for k in ("neutral", "k2", "k6"))
    # the neutral run from the inverted z_T with the fitted embeddings is the reconstruction
    recon = load_file(str(inv / "latents.safetensors"))
    for i in range(3):
        assert torch.equal(lat[f"img0{i}/neutral"], recon[f"img0{i}/recon"]), i
    assert not torch.equal(lat["img00/k2"], lat["img00/neutral"])
    meta = pd.read_parquet(out / "meta.parquet")
    assert len(meta) == 3 * (3 + 3) and set(meta["kind"]) == {"neutral", "swap", "bezier"}
    assert meta.groupby("image_id")["seed"].nunique().eq(1).all()
    assert (meta.loc[meta.kind == "neutral", "prompt"] == PROMPT).all()
    assert all((out / q).is_file() for q in [*meta["path"], *meta["real_path"]])
    # wavefront batching: the same trajectories within float tolerance of the branch mode
    wave = traverse_images_shard(
        "tiny",
        tmp_path / "real-wave",
        attribute=attribute,
        params={**settings, "save_images": False, "batching": "wavefront"},
        **kw,
    )
    lw = load_file(str(wave / "latents.safetensors"))
    assert sorted(lw) == sorted(lat)
    with pytest.raises(InputError, match="params.steps: got 5; expected the inversion's 10"):
        traverse_images_shard(
            "tiny",
            tmp_path / "bad",
            attribute=attribute,
            params={"steps": 5, "swap_steps": [2]},
            **kw,
        )


def test_traverse_real_cli_bad_input_is_one_line(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "real"
    base = ["traverse-real", "--model", str(model_dir), "--out", str(out), "--dataset", "chexpert"]
    base += [
        "--trajectory",
        "support_devices",
        "--attribute",
        "Chest X-ray showing Support Devices",
    ]
    missing = run_cli(*base, "--inversion", str(tmp_path / "nope"))
    assert_one_line_error(missing, "has no inversion.parquet", untouched=[out])
    no_attr = run_cli(*base[:-2], "--inversion", str(tmp_path))
    assert_one_line_error(no_attr, "--attribute", untouched=[out])


def test_real_shard_resumes_finished_blocks(pipe: Any, tmp_path: Path) -> None:  # noqa: F811
    from medtraverse.traversal.real import traverse_images_shard

    inv = _inverted_images(pipe, tmp_path, inner_steps=1)
    kw = {
        "inversion": inv,
        "dataset": "chexpert",
        "trajectory": "support_devices",
        "attribute": "Chest X-ray showing Support Devices",
        "params": {"steps": 10, "swap_steps": [4], "bezier_frames": 2, "batch_size": 2},
        "pipe": pipe,
    }
    clean = traverse_images_shard("tiny", tmp_path / "clean", **kw)

    def crash(block: list[int]) -> None:
        raise RuntimeError("killed")

    out = tmp_path / "real"
    with pytest.raises(RuntimeError):
        traverse_images_shard("tiny", out, on_block_done=crash, **kw)
    assert not out.exists() and len(list((tmp_path / "real.partial").glob("images-*"))) == 1
    ran: list[list[int]] = []
    traverse_images_shard("tiny", out, on_block_done=ran.append, **kw)
    assert ran == [[2]]  # only the unfinished block
    pd.testing.assert_frame_equal(
        pd.read_parquet(clean / "meta.parquet"), pd.read_parquet(out / "meta.parquet")
    )
    for rel in pd.read_parquet(out / "meta.parquet")["path"]:
        assert (clean / rel).read_bytes() == (out / rel).read_bytes(), rel
