"""The workflow plans for every shipped config, lints clean, and rejects bad config in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.oneline import assert_one_line_error
from tests.workflow_utils import ROOT, dry_run, snakemake

CONFIGS = {
    "demo": ROOT / "config/demo.yaml",
    "demo-isic": ROOT / "config/demo-isic.yaml",
    "smoke": ROOT / "config/smoke.yaml",
    "paper": ROOT / "config/config.yaml",
}


def _shards(config: dict, dataset: str) -> int:
    seeds = config["datasets"][dataset]["traverse"]["seeds"]
    return -(-seeds["count"] // seeds["shard_size"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dry_run_plans_every_stage(name: str, tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIGS[name].read_text())
    jobs = dry_run(CONFIGS[name], tmp_path)
    n_traj = n_shards = 0
    for dataset, section in config["datasets"].items():
        trajectories = len(section["traverse"]["trajectories"])
        n_traj += trajectories
        n_shards += trajectories * _shards(config, dataset)
    assert jobs["traverse_shard"] == n_shards
    assert jobs["score_shard"] == n_shards
    assert jobs["aggregate_metrics"] == len(config["datasets"])
    assert jobs["finetune_unet"] == len(config["datasets"])
    synthetic = [d for d, s in config["datasets"].items() if s["source"]["kind"] == "synthetic"]
    assert jobs.get("synthesize_dataset", 0) == len(synthetic)
    assert jobs.get("train_vae", 0) == len(synthetic)  # only the tiny base trains its VAE


def test_paper_config_is_the_papers_scale(tmp_path: Path) -> None:
    jobs = dry_run(CONFIGS["paper"], tmp_path)
    # CheXpert: 2 trajectories and the composed PE + SD, ISIC: MEL and NV x 4 artifacts;
    # 2,500 seeds in shards of 250.
    assert jobs["traverse_shard"] == 11 * 10
    assert jobs["train_classifier"] == 4


def test_lint_is_clean(tmp_path: Path) -> None:
    proc = snakemake("--lint", "--configfile", str(CONFIGS["demo"]), workdir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout[-4000:]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seed=abc", "config key seed:"),
        (
            "datasets={'cxr': {'source': {'kind': 'real'}}}",
            "config key datasets: 'cxr' is not one of",
        ),
    ],
)
def test_bad_config_is_one_clear_line(override: str, key: str, tmp_path: Path) -> None:
    proc = snakemake(
        "-n", "--configfile", str(CONFIGS["smoke"]), "--config", override, workdir=tmp_path
    )
    assert_one_line_error(proc, key, untouched=[tmp_path / "results", tmp_path / ".snakemake"])


def test_wrong_type_deep_in_the_config_names_the_key(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIGS["smoke"].read_text())
    config["datasets"]["chexpert"]["traverse"]["seeds"]["count"] = "many"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake("-n", "--configfile", str(path), workdir=work)
    assert_one_line_error(
        proc,
        "config key datasets.chexpert.traverse.seeds.count: 'many' is not of type",
        untouched=[work / "results"],
    )
