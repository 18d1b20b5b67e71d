"""The SLURM profiles name every rule a cluster runs: a rule missing from the shipped profile
gets the defaults (no GPU, 8 GB, an hour), and one missing from the CI profile asks the
GPU-less CI cluster for the GPU its `resources:` declare."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULE = re.compile(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", re.S | re.M)


def _rules() -> dict[str, str]:
    """Rule name -> its text, over every rule file."""
    out = {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        out.update(dict(RULE.findall(smk.read_text())))
    return out


def _local_rules() -> set[str]:
    names = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:    \w+,\n)+)", smk.read_text(), re.M):
            names |= set(re.findall(r"(\w+),", block))
    return names


def _set_resources(profile: str) -> dict[str, dict]:
    return yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())[
        "set-resources"
    ]


def test_rules_are_parsed() -> None:
    rules = _rules()
    assert {"traverse_shard", "finetune_unet", "invert_shard", "aggregate_metrics"} <= set(rules)
    assert {"all", "shortcut_study"} <= _local_rules()


@pytest.mark.parametrize("profile", ["slurm", "slurm-ci"])
def test_every_cluster_rule_has_resources_in_the_profile(profile: str) -> None:
    listed = _set_resources(profile)
    cluster_rules = set(_rules()) - _local_rules()
    missing = sorted(cluster_rules - set(listed)) if profile == "slurm" else []
    assert not missing, f"profiles/{profile}: no set-resources for {missing}"
    unknown = sorted(set(listed) - set(_rules()))
    assert not unknown, f"profiles/{profile}: set-resources for rules that do not exist: {unknown}"


def test_gpu_rules_ask_for_gpus_in_production_and_none_in_ci() -> None:
    shipped, ci = _set_resources("slurm"), _set_resources("slurm-ci")
    gpu_rules = {name for name, text in _rules().items() if re.search(r"^\s+gpu=", text, re.M)}
    assert {"traverse_shard", "invert_shard", "score_real_shard"} <= gpu_rules
    for name in sorted(gpu_rules):
        assert shipped[name].get("gpu", 0) >= 1, f"profiles/slurm: {name} asks for no GPU"
        assert ci.get(name, {}).get("gpu") == 0, f"profiles/slurm-ci: {name} would ask for a GPU"
