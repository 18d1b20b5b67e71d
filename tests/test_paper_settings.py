"""The method at the paper's settings, where the unit tests' small settings could hide a break:

- the wavefront (what ``batching: auto`` runs at batch > 1, as the paper config does) against
  stock diffusers' per-k calls at 50 steps and 9 swaps;
- a shard whose edges cut a batch (the paper config: shards of 250 seeds, batches of 16) against
  the same seeds generated in one shard;
- CFRT's K = {5, 10, 15} and Bezier frames 30..49 on tables where any other k or frame would
  change the answer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medtraverse.evaluation.metrics import cfrt_per_seed
from medtraverse.traversal.engine import (
    TraverseParams,
    UNetCounter,
    generate_latents,
    seed_blocks,
)
from tests.test_traverse import ATTRIBUTE, NEUTRAL, key, run, stock

PAPER = {"steps": 50, "swap_steps": [5, 10, 15, 20, 25, 30, 35, 40, 45]}


@pytest.fixture(scope="module")
def pipe(tiny_model: Path) -> Any:
    from medtraverse.models.pipeline import load_pipeline

    p = load_pipeline(tiny_model)
    p.set_progress_bar_config(disable=True)
    return p


# --- the wavefront at 50 steps and 9 swaps ----------------------------------------------------


def test_wavefront_at_paper_settings_matches_stock_per_k_calls(pipe: Any) -> None:
    """Batch 2 resolves to the wavefront (one U-Net call per step for all branches); every
    (seed, k) latent is within the stated tolerance of the authors' one-seed call for that k:
    no further from it than stock diffusers itself moves between batch 1 and batch 2."""
    seeds = [10, 11]  # one block: blocks align to seed // batch_size
    params = {**PAPER, "batch_size": 2}
    assert TraverseParams.from_dict(params).resolved_batching == "wavefront"
    counter = UNetCounter().attach(pipe.unet)
    try:
        wave = generate_latents(pipe, seeds, NEUTRAL, ATTRIBUTE, params)
    finally:
        counter.detach()
    assert counter.calls == 50  # the wavefront really ran: one U-Net call per step
    assert counter.rows == 2 * len(seeds) * 266  # 50 + 45 + 40 + ... + 5 rows per seed, guided

    stock_drift = engine_diff = 0.0
    for k in [None, *PAPER["swap_steps"]]:
        ref1 = torch.cat([stock(pipe, [s], k, 50) for s in seeds])
        ref2 = stock(pipe, seeds, k, 50, embeds=True)
        stock_drift = max(stock_drift, (ref1 - ref2).abs().max().item())
        for j, s in enumerate(seeds):
            engine_diff = max(engine_diff, (wave[s][key(k)] - ref1[j]).abs().max().item())
            # and each branch is its own trajectory, not the neutral one
            if k is not None:
                off = (wave[s]["neutral"] - ref1[j]).abs().max()
                assert (wave[s][k] - ref1[j]).abs().max() < off, (s, k)
    tolerance = max(4 * stock_drift, 1e-6)
    assert engine_diff <= tolerance, (engine_diff, stock_drift)
    assert engine_diff < 1e-3, engine_diff


# --- a shard whose edges cut a batch ---------------------------------------------------------

# test_traverse's shard settings with batches of 4 (decode batches at the default 16)
BATCH4 = {"params": {"batch_size": 4, "decode_batch_size": 16}}


def test_shard_cutting_a_batch_equals_one_shard(pipe: Any, tmp_path: Path) -> None:
    """Seeds 3..7 at batch 4 are blocks [3] and [4..7] (batches align to the seed, not to the
    shard); in one shard of seeds 0..7 they are [0..3] and [4..7]. Where a batch holds the same
    seeds, latents, PNGs and meta rows are equal bit for bit; seed 3 ran in another batch, so
    only within float noise."""
    assert seed_blocks(3, 5, 4) == [[3], [4, 5, 6, 7]]
    cut = run(pipe, tmp_path / "cut", 3, 5, **BATCH4)
    whole = run(pipe, tmp_path / "whole", 0, 8, **BATCH4)
    a = load_file(str(cut / "latents.safetensors"))
    b = load_file(str(whole / "latents.safetensors"))
    assert sorted(a) == sorted(f"{s}/{k}" for s in range(3, 8) for k in ("neutral", "k2", "k4"))
    for name in a:
        seed = int(name.split("/")[0])
        if seed >= 4:
            assert torch.equal(a[name], b[name]), name
        else:
            assert (a[name] - b[name]).abs().max().item() < 1e-3, name
    ma, mb = pd.read_parquet(cut / "meta.parquet"), pd.read_parquet(whole / "meta.parquet")
    assert sorted(set(ma.seed)) == [3, 4, 5, 6, 7] and len(ma) == 5 * (3 + 5)
    same_a = ma[ma.seed >= 4].reset_index(drop=True)
    same_b = mb[mb.seed.between(4, 7)].reset_index(drop=True)
    pd.testing.assert_frame_equal(same_a, same_b, check_exact=True)
    for rel in same_a["path"]:
        assert (cut / rel).read_bytes() == (whole / rel).read_bytes(), rel


# --- CFRT's K and the Bezier frames -----------------------------------------------------------
# Scores of 4 seeds, target "a" against one other attribute "b", every k in 5..45 and every
# frame 0..49. At k in {5, 10, 15} and frames 30..49 seeds 0-2 are hits, seed 3 a miss; at every
# other k or frame "b" jumps to 1 and "a" drops to 0 (and b's call flips), so including any of
# them turns hits into misses: CFRT 3/4 only if exactly K and 30..49 are used.

ALL_KS = list(range(5, 50, 5))


def _p(seed: int, inside: bool) -> tuple[float, float]:
    if not inside:
        return 0.0, 1.0
    return (0.8, 0.2) if seed < 3 else (0.1, 0.6)


def cfrt_scores() -> pd.DataFrame:
    rows = []
    for seed in range(4):
        rows.append(dict(seed=seed, kind="neutral", k=-1, frame=-1, p_a=0.25, p_b=0.25))
        for k in ALL_KS:
            pa, pb = _p(seed, k in (5, 10, 15))
            rows.append(dict(seed=seed, kind="swap", k=k, frame=-1, p_a=pa, p_b=pb))
        rows.append(dict(seed=seed, kind="bezier", k=-1, frame=0, p_a=0.25, p_b=0.25))
        for f in range(1, 50):
            pa, pb = _p(seed, 30 <= f <= 49)
            rows.append(dict(seed=seed, kind="bezier", k=-1, frame=f, p_a=pa, p_b=pb))
    out = pd.DataFrame(rows)
    out["t"] = math.nan
    out["path"] = ""
    out["dataset"], out["trajectory"] = "chexpert", "a"
    return out


@pytest.mark.parametrize("version", ["swap", "bezier"])
def test_cfrt_defaults_use_only_k_5_10_15_and_frames_30_to_49(version: str) -> None:
    scores = cfrt_scores()
    got = cfrt_per_seed(scores, "a", ["a", "b"], version=version)
    assert got["authors"].tolist() == [True, True, True, False]
    assert got["strict"].tolist() == [True, True, True, False]
    # the table is built so that any other choice changes the answer
    wider = ALL_KS if version == "swap" else list(range(1, 50))
    assert not cfrt_per_seed(scores, "a", ["a", "b"], version=version, steps=wider)["authors"].any()
    extra = [5, 10, 15, 20] if version == "swap" else list(range(29, 50))
    assert cfrt_per_seed(scores, "a", ["a", "b"], version=version, steps=extra)["strict"].sum() == 0


def test_aggregate_table_uses_k_5_10_15_and_frames_30_to_49_by_default(tmp_path: Path) -> None:
    """The metrics table, with the stage's defaults (no swap_steps, no bezier_frames given)."""
    from medtraverse.report.aggregate import aggregate

    folder = tmp_path / "scores" / "chexpert" / "a"
    folder.mkdir(parents=True)
    cfrt_scores().assign(shard="shard-0000").to_parquet(folder / "shard-0000.parquet", index=False)
    tables = aggregate(
        [folder / "shard-0000.parquet"], tmp_path / "metrics", {"n_boot": 20, "figures": False}
    )
    cfrt = tables["cfrt"].set_index(["version", "variant"])
    for version in ("swap", "bezier"):
        for variant in ("authors", "strict"):
            assert cfrt.loc[(version, variant), "value"] == pytest.approx(0.75), (version, variant)
    assert cfrt.loc[("swap", "authors"), "steps"] == "5,10,15"
    assert cfrt.loc[("bezier", "authors"), "steps"] == ",".join(map(str, range(30, 50)))
    on_disk = pd.read_csv(tmp_path / "metrics" / "cfrt.csv")
    assert on_disk["value"].tolist() == pytest.approx([0.75] * 4)
