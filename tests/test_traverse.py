"""Traversal engine: exactness against the authors' per-k pipeline calls, shards, resume, CLI.

The reference is stock diffusers: ``StableDiffusionPipeline`` called once per swap step k with a
``callback_on_step_end`` that replaces ``prompt_embeds`` at the end of step k (the authors'
method), ``output_type="latent"``, on the tiny pipeline, CPU float32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medtraverse import cli
from medtraverse.traversal.engine import (
    TraverseParams,
    UNetCounter,
    generate_latents,
    initial_noise,
    seed_blocks,
    traverse_shard,
)
from tests.oneline import assert_one_line_error, one_line_input_error, run_main

NEUTRAL = "Normal chest X-ray with no significant findings"
ATTRIBUTE = "Chest X-ray showing Support Devices"
FAST = {"steps": 10, "swap_steps": [2, 4, 6, 8]}


@pytest.fixture(scope="module")
def model_dir(tiny_model: Path) -> Path:
    return tiny_model  # conftest's one tiny pipeline


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> Any:
    from medtraverse.models.pipeline import load_pipeline

    p = load_pipeline(model_dir)
    p.set_progress_bar_config(disable=True)
    return p


def stock(
    pipe: Any,
    seeds: list[int],
    k: int | None,
    steps: int,
    *,
    eta: float = 0.0,
    embeds: bool = False,
    mix: list[float] | None = None,
) -> torch.Tensor:
    """The authors' call: the neutral prompt, swapped to the attribute at the end of step k.

    ``embeds`` passes batch-1 prompt embeddings (so the text encoder's batch size is out of
    play); ``mix`` sets ``lambda_i e + (1 - lambda_i) e'`` for every step i > k instead.
    """
    b = len(seeds)
    e, neg = pipe.encode_prompt(NEUTRAL, "cpu", 1, True)
    e_attr, _ = pipe.encode_prompt(ATTRIBUTE, "cpu", 1, True)

    def swap(p: Any, i: int, t: Any, kw: dict) -> dict:
        if mix is not None and k is not None and i >= k and i + 1 < steps:
            lam = mix[i + 1]  # the embedding for the next step, i + 1
            cond = lam * e + (1.0 - lam) * e_attr
            return {"prompt_embeds": torch.cat([neg.expand(b, -1, -1), cond.expand(b, -1, -1)])}
        if mix is None and i == k:
            return {"prompt_embeds": torch.cat([neg.expand(b, -1, -1), e_attr.expand(b, -1, -1)])}
        return {}

    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    kwargs: dict[str, Any] = (
        {"prompt_embeds": e.expand(b, -1, -1), "negative_prompt_embeds": neg.expand(b, -1, -1)}
        if embeds
        else {"prompt": [NEUTRAL] * b}
    )
    return pipe(
        **kwargs,
        num_inference_steps=steps,
        guidance_scale=7.5,
        eta=eta,
        generator=gens if b > 1 else gens[0],
        output_type="latent",
        callback_on_step_end=swap if k is not None else None,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    ).images


def key(k: int | None) -> str | int:
    return "neutral" if k is None else k


# --- exactness ----------------------------------------------------------------------------


def test_branch_batch1_is_bit_identical_to_authors_calls(pipe: Any) -> None:
    seeds = [0, 1, 7]
    got = generate_latents(
        pipe, seeds, NEUTRAL, ATTRIBUTE, {**FAST, "batch_size": 1, "batching": "branch"}
    )
    default = generate_latents(pipe, seeds, NEUTRAL, ATTRIBUTE, {**FAST, "batch_size": 1})
    for s in seeds:
        for k in [None, *FAST["swap_steps"]]:
            assert torch.equal(got[s][key(k)], stock(pipe, [s], k, 10)[0]), (s, k)
            assert torch.equal(default[s][key(k)], got[s][key(k)]), (s, k)  # auto: branch
    # the swaps really differ from the neutral run and from each other
    assert not torch.equal(got[0][2], got[0]["neutral"]) and not torch.equal(got[0][2], got[0][8])


def test_no_swap_equals_the_neutral_call(pipe: Any) -> None:
    for batching in ("wavefront", "branch"):
        got = generate_latents(
            pipe,
            [3],
            NEUTRAL,
            ATTRIBUTE,
            {"steps": 10, "swap_steps": [], "batch_size": 1, "batching": batching},
        )
        assert list(got[3]) == ["neutral"]
        assert torch.equal(got[3]["neutral"], stock(pipe, [3], None, 10)[0])
    # batched too (same rows as the stock call over the same seeds)
    got = generate_latents(
        pipe, [0, 1, 2, 3], NEUTRAL, ATTRIBUTE, {"steps": 10, "swap_steps": [], "batch_size": 4}
    )
    ref = stock(pipe, [0, 1, 2, 3], None, 10, embeds=True)
    assert all(torch.equal(got[s]["neutral"], ref[s]) for s in range(4))


def test_batched_engine_within_stock_batch_size_tolerance(pipe: Any) -> None:
    """Batch 4: branch is bit-identical to stock batch 4; wavefront differs from the authors'
    batch-1 calls no more than stock diffusers differs from itself between batch 1 and 4."""
    seeds = [0, 1, 2, 3]
    ks = FAST["swap_steps"]
    wave = generate_latents(pipe, seeds, NEUTRAL, ATTRIBUTE, {**FAST, "batch_size": 4})
    branch = generate_latents(
        pipe, seeds, NEUTRAL, ATTRIBUTE, {**FAST, "batch_size": 4, "batching": "branch"}
    )
    stock_drift = 0.0
    engine_diff = 0.0
    for k in [None, *ks]:
        ref1 = torch.cat([stock(pipe, [s], k, 10) for s in seeds])
        ref4 = stock(pipe, seeds, k, 10, embeds=True)
        stock_drift = max(stock_drift, (ref1 - ref4).abs().max().item())
        for j, s in enumerate(seeds):
            assert torch.equal(branch[s][key(k)], ref4[j]), (s, k)
            engine_diff = max(engine_diff, (wave[s][key(k)] - ref1[j]).abs().max().item())
    tolerance = max(4 * stock_drift, 1e-6)
    assert engine_diff <= tolerance, (engine_diff, stock_drift)
    assert engine_diff < 1e-3  # and that is float noise, not a different trajectory


def test_blend_mask_marks_where_the_change_reaches_the_threshold(pipe: Any) -> None:
    from medtraverse.traversal.engine import TraversalEngine

    engine = TraversalEngine(pipe, TraverseParams(local_blend=0.5))
    change = torch.zeros(2, 4, 2, 3)
    change[0, :, 0, 0] = torch.tensor([4.0, -4.0, 4.0, -4.0])  # size 4: the image's maximum
    change[0, 0, 1, 2] = 8.0  # size 2 (mean over channels): half the maximum, kept in the edit
    change[0, 0, 1, 1] = 7.9  # just under half
    change[1] = 1e-3  # an image's scale is its own maximum
    mask = engine.blend_mask(change)
    assert mask.shape == (2, 1, 2, 3)
    assert mask[0, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert mask[1].eq(1.0).all()


def test_local_blend_keeps_the_neutral_run_outside_the_edit(pipe: Any) -> None:
    """Outside a branch's mask every step's latent is the neutral run's, so the final latent is
    the neutral one there bit for bit; inside, the edit goes on; both batchings agree; and a
    threshold near 0 (the whole image in the mask) is the plain swap."""
    seeds = [0, 1]
    blended = {
        b: generate_latents(
            pipe,
            seeds,
            NEUTRAL,
            ATTRIBUTE,
            {**FAST, "batch_size": 2, "batching": b, "local_blend": 0.4},
        )
        for b in ("branch", "wavefront")
    }
    plain = {
        b: generate_latents(
            pipe, seeds, NEUTRAL, ATTRIBUTE, {**FAST, "batch_size": 2, "batching": b}
        )
        for b in blended
    }
    whole = generate_latents(
        pipe, seeds, NEUTRAL, ATTRIBUTE, {**FAST, "batch_size": 2, "local_blend": 1e-9}
    )
    for s in seeds:
        kept_by = {}
        for b, got in blended.items():
            assert torch.equal(got[s]["neutral"], plain[b][s]["neutral"])  # untouched
            kept = {}
            for k in FAST["swap_steps"]:
                same = (got[s][k] == got[s]["neutral"]).all(0)  # latent pixels left alone
                assert 0 < same.float().mean() < 1, (b, s, k)  # some kept, some edited
                assert not torch.equal(got[s][k], plain[b][s][k])
                kept[k] = same
            kept_by[b] = kept
        for k in FAST["swap_steps"]:
            assert torch.equal(kept_by["branch"][k], kept_by["wavefront"][k]), (s, k)
            assert torch.allclose(blended["branch"][s][k], blended["wavefront"][s][k], atol=1e-3)
            assert torch.allclose(whole[s][k], plain["wavefront"][s][k], atol=1e-5), (s, k)


def test_local_blend_masks_a_mix_branch_where_it_first_moves(pipe: Any) -> None:
    """Under a mix schedule whose attribute weight is still 0 after the swap, the branch has
    not moved yet: the mask waits for its first move instead of keeping nothing."""
    lambdas = [1.0] * 6 + [0.0] * 4  # neutral prompt through step 5, attribute after
    params = {"steps": 10, "swap_steps": [2], "schedule": "mix", "lambdas": lambdas}
    got = generate_latents(pipe, [0], NEUTRAL, ATTRIBUTE, {**params, "local_blend": 0.4})[0]
    plain = generate_latents(pipe, [0], NEUTRAL, ATTRIBUTE, params)[0]
    same = (got[2] == got["neutral"]).all(0)
    assert 0 < same.float().mean() < 1 and not torch.equal(got[2], plain[2])


def test_paper_settings_50_steps_9_swaps(pipe: Any) -> None:
    params = {"steps": 50, "swap_steps": [5, 10, 15, 20, 25, 30, 35, 40, 45], "batch_size": 1}
    counter = UNetCounter().attach(pipe.unet)
    try:
        got = generate_latents(pipe, [11], NEUTRAL, ATTRIBUTE, {**params, "batching": "branch"})
    finally:
        counter.detach()
    assert counter.rows == 2 * 266  # 50 + 44 + 39 + ... + 4 guided evaluations, not 500
    wave = generate_latents(pipe, [11], NEUTRAL, ATTRIBUTE, params)
    for k in [None, *params["swap_steps"]]:
        ref = stock(pipe, [11], k, 50)[0]
        assert torch.equal(got[11][key(k)], ref), k
        assert (wave[11][key(k)] - ref).abs().max().item() < 1e-3, k


def test_wavefront_counts_unet_rows(pipe: Any) -> None:
    counter = UNetCounter().attach(pipe.unet)
    try:
        generate_latents(
            pipe, [0, 1, 2], NEUTRAL, ATTRIBUTE, {**FAST, "batch_size": 4, "batching": "wavefront"}
        )
    finally:
        counter.detach()
    assert counter.calls == 10  # one U-Net call per step: the wavefront
    assert counter.rows == 2 * 3 * (10 + 7 + 5 + 3 + 1)


def test_mix_schedule_wu_et_al(pipe: Any) -> None:
    base = {**FAST, "batch_size": 1, "batching": "branch"}
    swap = generate_latents(pipe, [5], NEUTRAL, ATTRIBUTE, base)[5]
    zeros = generate_latents(
        pipe, [5], NEUTRAL, ATTRIBUTE, {**base, "schedule": "mix", "lambdas": [0.0] * 10}
    )
    ones = generate_latents(
        pipe, [5], NEUTRAL, ATTRIBUTE, {**base, "schedule": "mix", "lambdas": [1.0] * 10}
    )
    for k in FAST["swap_steps"]:
        assert torch.equal(zeros[5][k], swap[k])  # hard swap = lambda 0 after step k
        assert torch.equal(ones[5][k], swap["neutral"])  # lambda 1 = never leaves e
    lambdas = [1.0 - i / 9 for i in range(10)]
    soft = generate_latents(
        pipe, [5], NEUTRAL, ATTRIBUTE, {**base, "schedule": "mix", "lambdas": lambdas}
    )
    for k in (2, 6):
        assert torch.equal(soft[5][k], stock(pipe, [5], k, 10, mix=lambdas)[0])
        assert not torch.equal(soft[5][k], swap[k])


def test_eta_noise_follows_the_seed_generator(pipe: Any) -> None:
    got = generate_latents(
        pipe,
        [4],
        NEUTRAL,
        ATTRIBUTE,
        {"steps": 8, "swap_steps": [3], "eta": 0.5, "batch_size": 1, "batching": "branch"},
    )
    for k in (None, 3):
        assert torch.equal(got[4][key(k)], stock(pipe, [4], k, 8, eta=0.5)[0])


def test_bfloat16_path_runs_and_stays_near_float32(model_dir: Path, pipe: Any) -> None:
    from medtraverse.models.pipeline import load_pipeline

    half = load_pipeline(model_dir, dtype=torch.bfloat16)
    params = {"steps": 6, "swap_steps": [3], "batch_size": 2}
    got = generate_latents(half, [0, 1], NEUTRAL, ATTRIBUTE, {**params, "dtype": "bfloat16"})
    ref = generate_latents(pipe, [0, 1], NEUTRAL, ATTRIBUTE, params)
    for s in (0, 1):
        assert got[s][3].dtype == torch.float32  # stored as float32 whatever the compute dtype
        scale = ref[s][3].abs().max().item()
        assert (got[s][3] - ref[s][3]).abs().max().item() < 0.1 * scale


def test_initial_noise_depends_on_the_seed_alone() -> None:
    ref = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(initial_noise(42, (4, 8, 8)), ref)
    assert not torch.equal(initial_noise(43, (4, 8, 8)), ref)


# --- parameters -----------------------------------------------------------------------------


def test_params_defaults_are_the_papers() -> None:
    p = TraverseParams.from_dict({})
    assert (p.steps, p.guidance, p.eta, p.bezier_frames) == (50, 7.5, 0.0, 50)
    assert p.swap_steps == (5, 10, 15, 20, 25, 30, 35, 40, 45)
    assert (p.schedule, p.batching, p.dtype, p.device) == ("swap", "auto", "float32", "auto")
    assert TraverseParams.from_dict({"swap_steps": [45, 5]}).swap_steps == (5, 45)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"steps": "50"}, "params.steps"),
        ({"swap_steps": [5, 50], "steps": 50}, "params.swap_steps"),
        ({"swap_steps": [5, 5]}, "params.swap_steps"),
        ({"swap_step": [5]}, "params.swap_step: unknown key"),
        ({"dtype": "fp8"}, "params.dtype"),
        ({"schedule": "mix"}, "params.lambdas"),
        (
            {"schedule": "mix", "lambdas": [0.5] * 3, "steps": 4, "swap_steps": [1]},
            "params.lambdas",
        ),
        ({"compile": "yes"}, "params.compile"),
        ({"neutral": ""}, "params.neutral"),
    ],
)
def test_params_errors_name_the_key(raw: dict, needle: str) -> None:
    with one_line_input_error(needle):
        TraverseParams.from_dict(raw)


def test_seed_blocks_align_to_batch_size() -> None:
    assert seed_blocks(0, 8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert seed_blocks(6, 5, 4) == [[6, 7], [8, 9, 10]]  # edge blocks partial, never shifted


# --- shards ---------------------------------------------------------------------------------

SHARD = {
    "steps": 6,
    "swap_steps": [2, 4],
    "bezier_frames": 5,
    "batch_size": 2,
    "decode_batch_size": 3,
}


def run(pipe: Any, out: Path, start: int, count: int, **kw: Any) -> Path:
    return traverse_shard(
        "tiny-model",
        out,
        dataset="chexpert",
        trajectory="support_devices",
        neutral=NEUTRAL,
        attribute=ATTRIBUTE,
        seed_start=start,
        seed_count=count,
        params={**SHARD, **kw.pop("params", {})},
        pipe=pipe,
        **kw,
    )


def test_shard_layout_and_meta(pipe: Any, tmp_path: Path) -> None:
    out = run(pipe, tmp_path / "shard-0000", 3, 3)
    assert not (tmp_path / "shard-0000.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0000"]
    lat = load_file(str(out / "latents.safetensors"))
    assert sorted(lat) == sorted(f"{s}/{k}" for s in (3, 4, 5) for k in ("neutral", "k2", "k4"))
    assert all(v.dtype == torch.float32 and v.shape == (4, 8, 8) for v in lat.values())
    meta = pd.read_parquet(out / "meta.parquet")
    assert len(meta) == 3 * (3 + 5)
    assert not meta.duplicated(["seed", "kind", "k", "frame"]).any()
    for column in (
        "seed",
        "kind",
        "k",
        "frame",
        "t",
        "path",
        "prompt",
        "neutral_prompt",
        "attribute_prompt",
        "dataset",
        "trajectory",
        "steps",
        "guidance",
        "eta",
        "scheduler",
        "swap_steps",
        "model",
        "height",
        "width",
    ):
        assert column in meta.columns, column
    assert all((out / p).is_file() for p in meta["path"])
    seed3 = meta[meta.seed == 3]
    assert seed3["path"].tolist()[:3] == [
        "images/3/neutral.png",
        "images/3/k02.png",
        "images/3/k04.png",
    ]
    bez = seed3[seed3.kind == "bezier"]
    assert bez["frame"].tolist() == list(range(5)) and bez["path"].iloc[-1] == "frames/3/f004.png"
    assert bez["t"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    swaps = seed3[seed3.kind == "swap"]
    assert (
        swaps["k"].tolist() == [2, 4] and swaps["t"].isna().all() and (swaps["frame"] == -1).all()
    )
    row = meta.iloc[0]
    assert (row.steps, row.guidance, row.eta, row.scheduler) == (6, 7.5, 0.0, "DDIMScheduler")
    assert json.loads(row.swap_steps) == [2, 4] and (row.height, row.width) == (32, 32)
    assert row.prompt == NEUTRAL and seed3[seed3.kind == "swap"].prompt.iloc[0] == ATTRIBUTE
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "traverse" and prov["artifact"] == str(out)
    assert prov["seeds"]["start"] == 3 and prov["seeds"]["count"] == 3
    # latents equal the engine's (the same blocks: seed // 2)
    direct = generate_latents(pipe, [3, 4, 5], NEUTRAL, ATTRIBUTE, SHARD)
    assert torch.equal(lat["4/k2"], direct[4][2]) and torch.equal(
        lat["3/neutral"], direct[3]["neutral"]
    )


def test_seed_results_do_not_depend_on_the_shard(pipe: Any, tmp_path: Path) -> None:
    no_img = {"params": {"save_images": False}}
    whole = load_file(str(run(pipe, tmp_path / "a", 0, 8, **no_img) / "latents.safetensors"))
    parts: dict[str, torch.Tensor] = {}
    for start, count in ((0, 2), (2, 6)):
        parts |= load_file(
            str(run(pipe, tmp_path / f"b{start}", start, count, **no_img) / "latents.safetensors")
        )
    assert sorted(whole) == sorted(parts)
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    meta = pd.read_parquet(tmp_path / "a" / "meta.parquet")
    assert len(meta) == 8 * 3 and set(meta.kind) == {"neutral", "swap"} and (meta.path == "").all()


def test_killed_shard_resumes_to_identical_outputs(pipe: Any, tmp_path: Path) -> None:
    clean = run(pipe, tmp_path / "clean", 0, 6)

    class Killed(RuntimeError):
        pass

    done: list[list[int]] = []

    def crash_after_two(block: list[int]) -> None:
        done.append(block)
        if len(done) == 2:
            raise Killed

    out = tmp_path / "shard"
    with pytest.raises(Killed):
        run(pipe, out, 0, 6, on_block_done=crash_after_two)
    assert not out.exists()  # nothing half-written in the declared output
    scratch = tmp_path / "shard.partial"
    assert len([p for p in scratch.iterdir() if p.name.startswith("seeds-")]) == 2

    resumed: list[list[int]] = []
    run(pipe, out, 0, 6, on_block_done=resumed.append)
    assert resumed == [[4, 5]]  # only the unfinished block ran again
    assert not scratch.exists()
    a, b = (
        load_file(str(clean / "latents.safetensors")),
        load_file(str(out / "latents.safetensors")),
    )
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = pd.read_parquet(clean / "meta.parquet"), pd.read_parquet(out / "meta.parquet")
    assert not mb.duplicated(["seed", "kind", "k", "frame"]).any()
    pd.testing.assert_frame_equal(ma, mb)
    for rel in ma["path"]:
        assert (clean / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_changed_settings_discard_the_scratch(pipe: Any, tmp_path: Path) -> None:
    def crash(block: list[int]) -> None:
        raise RuntimeError("killed")

    out = tmp_path / "shard"
    with pytest.raises(RuntimeError):
        run(pipe, out, 0, 4, on_block_done=crash, params={"save_images": False})
    ran: list[list[int]] = []
    run(pipe, out, 0, 4, on_block_done=ran.append, params={"save_images": False, "guidance": 3.0})
    assert ran == [[0, 1], [2, 3]]  # the old block (guidance 7.5) was not reused
    assert pd.read_parquet(out / "meta.parquet")["guidance"].eq(3.0).all()


# --- CLI ------------------------------------------------------------------------------------


def test_cli_treats_shell_metacharacters_as_text(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    evil = "x'; touch pwned; '"
    attribute = 'a dermoscopic image with melanoma (MEL) "showing" ink, $(touch pwned2)'
    params = {**SHARD, "bezier_frames": 0, "neutral": evil, "attribute": attribute}
    out = tmp_path / "shard-0000"
    argv = [
        "traverse",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--dataset",
        "isic",
        "--trajectory",
        "mel_ink",
        "--seed-start",
        "0",
        "--seed-count",
        "1",
        "--params",
        json.dumps(params),
    ]
    assert cli.main(argv) == 0
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    meta = pd.read_parquet(out / "meta.parquet")
    assert set(meta.neutral_prompt) == {evil} and set(meta.attribute_prompt) == {attribute}
    assert meta.prompt.tolist() == [evil, attribute, attribute]


def test_cli_bad_input_is_one_line_and_writes_nothing(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shard-0000"
    base = [
        "traverse",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--dataset",
        "d",
        "--trajectory",
        "t",
        "--seed-start",
        "0",
        "--seed-count",
        "2",
    ]
    prefix, empty = "medtraverse traverse: error: ", {tmp_path: {}}
    steps = '{"steps": "fifty", "neutral": "a", "attribute": "b"}'
    proc = run_main(capsys, *base, "--params", steps)
    assert_one_line_error(proc, prefix=prefix + "params.steps", trees=empty)
    proc = run_main(capsys, *base, "--params", '{"neutral": "a"}')
    assert_one_line_error(proc, "--attribute", prefix=prefix, trees=empty)
    missing = [
        *base[:2],
        str(tmp_path / "missing"),
        *base[3:],
        "--neutral",
        "a",
        "--attribute",
        "b",
    ]
    proc = run_main(capsys, *missing)
    assert_one_line_error(proc, str(tmp_path / "missing"), prefix=prefix, trees=empty)


def test_auto_batching_is_exact_at_one_seed_per_batch_and_fast_above() -> None:
    assert TraverseParams.from_dict({"batch_size": 1}).resolved_batching == "branch"
    assert TraverseParams.from_dict({"batch_size": 8}).resolved_batching == "wavefront"
    assert TraverseParams.from_dict({"batch_size": 8, "batching": "branch"}).resolved_batching == (
        "branch"
    )


def test_a_swap_at_the_last_step_is_saved_and_equals_the_neutral_run(
    pipe: Any, tmp_path: Path
) -> None:
    # k = steps - 1: no step uses the attribute, so the branch shares the neutral run's tensor;
    # both are saved (safetensors refuses shared storage) and equal (wavefront, batch 2)
    params = {"swap_steps": [2, 5], "save_images": False, "bezier_frames": 0}
    out = run(pipe, tmp_path / "shard-0000", 0, 2, params=params)
    lat = load_file(str(out / "latents.safetensors"))
    assert torch.equal(lat["0/k5"], lat["0/neutral"]) and torch.equal(lat["1/k5"], lat["1/neutral"])
    assert not torch.equal(lat["0/k2"], lat["0/neutral"])
