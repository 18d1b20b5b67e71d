"""The one parameter mechanism: dataclass fields carry type, default and bounds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from medtraverse.core.errors import InputError
from medtraverse.core.params import describe, parse_params, setting
from tests.oneline import one_line_input_error


@dataclass
class _Inner:
    a: int = setting(1, min=0)


@dataclass
class _Settings:
    steps: int = setting(50, min=1, help="DDIM steps")
    swap_steps: tuple[int, ...] = setting((5, 10), min=0)
    lambdas: list[float] | None = None
    mode: str = setting("auto", choices=("auto", "x"))
    flag: bool = False
    rate: float = setting(1e-3, above=0)
    inner: _Inner = setting(default_factory=_Inner)

    def validate(self, where: str) -> None:
        for k in self.swap_steps:
            if k >= self.steps:
                raise InputError(f"{where}.swap_steps: got step {k}; expected < steps")


def test_valid_settings_are_typed_and_defaults_fill_in() -> None:
    got = parse_params(_Settings, {"steps": 10, "swap_steps": [1, 2], "inner": {"a": 3}})
    assert got == _Settings(steps=10, swap_steps=(1, 2), inner=_Inner(a=3))
    assert parse_params(_Settings, {}) == _Settings()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"steps": 0}, "params.steps: got 0; expected a value >= 1"),
        ({"stepz": 1}, "params.stepz: unknown key"),
        ({"flag": "false"}, "params.flag: got 'false'; expected true or false"),
        ({"steps": True}, "params.steps: got True; expected an integer"),
        ({"swap_steps": [1, "a"]}, "params.swap_steps[1]: got 'a'; expected an integer"),
        ({"mode": "y"}, "params.mode: got 'y'; expected one of 'auto', 'x'"),
        ({"steps": 10, "swap_steps": [10]}, "params.swap_steps: got step 10"),
        ({"inner": {"a": -1}}, "params.inner.a: got -1"),
        ({"lambdas": 3}, "params.lambdas: got 3"),
        ({"rate": 0}, "params.rate: got 0.0; expected a value > 0"),
        ({"rate": -1}, "params.rate: got -1.0; expected a value > 0"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(raw: dict, message: str) -> None:
    with one_line_input_error(message):
        parse_params(_Settings, raw)


def test_describe_lists_every_setting_with_its_default() -> None:
    rows = {row["name"]: row for row in describe(_Settings)}
    assert set(rows) == {"steps", "swap_steps", "lambdas", "mode", "flag", "rate", "inner"}
    assert rows["steps"]["default"] == 50 and rows["steps"]["min"] == 1
    assert rows["mode"]["choices"] == ("auto", "x")
