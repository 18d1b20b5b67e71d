"""The conda env for clusters and pyproject.toml list the same requirements."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_section(env: dict) -> list[str]:
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return dep["pip"]
    raise AssertionError("envs/medtraverse.yaml has no pip section")


def test_conda_env_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs/medtraverse.yaml").read_text())
    pip = _pip_section(env)
    requirements = [r for r in pip if not r.startswith("-e")]
    assert sorted(requirements) == sorted(project["dependencies"])
    assert "-e .." in pip, "the env must install this project itself"
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    minimum = project["requires-python"].removeprefix(">=")
    assert python and python[0].split("=")[1] >= minimum


def test_every_rule_uses_the_project_env() -> None:
    """Every rule that runs a command (not a target-only rule such as `all`) has the env."""
    for path in sorted((ROOT / "workflow/rules").glob("*.smk")):
        blocks = re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M)[1:]
        for block in blocks:
            if "    shell:" in block or "    run:" in block or "    script:" in block:
                name = block.split(":", 1)[0]
                assert 'conda:\n        "../../envs/medtraverse.yaml"' in block, f"{path}: {name}"
