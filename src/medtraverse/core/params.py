"""Stage parameters arrive as one JSON object (a config section passed by the rule's params)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medtraverse.core.errors import InputError, bad_input


def load_params(text: str | None) -> dict[str, Any]:
    """Parse ``--params``: inline JSON, or ``@path`` to a JSON/YAML file."""
    if not text:
        return {}
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise InputError(f"{path}: params file not found; expected a JSON or YAML file")
        raw = path.read_text()
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            value = yaml.safe_load(raw)
        else:
            value = json.loads(raw)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(
                f"--params: not valid JSON ({err.msg}); expected a JSON object"
            ) from None
    if not isinstance(value, dict):
        raise InputError(f"--params: got {type(value).__name__}; expected a JSON object")
    return value


# --------------------------------------------------------------------------------------------
# One mechanism for every stage's settings: a dataclass whose fields carry their type, default
# and bounds; `parse_params` checks a raw mapping against it with one-line errors.


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    choices: tuple[Any, ...] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with the bounds `parse_params` enforces (``min``/``max`` inclusive,
    ``above`` exclusive: a learning rate is ``above=0``)."""
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(args[0], _type_name(args[0]))}" if args else "a list"
    if origin is dict:
        return f"a mapping of {_type_name(args[1])}" if len(args) == 2 else "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against type ``tp``; raises InputError naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except InputError as err:
                errors.append(err)
        raise bad_input(where, f"got {value!r}", _type_name(tp))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad_input(where, f"got {value!r}", "a mapping")
        return parse_params(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise bad_input(where, f"got {value!r}", _type_name(tp))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad_input(where, f"got {value!r}", _type_name(tp))
        key_t, val_t = args if len(args) == 2 else (Any, Any)
        return {
            _coerce(k, key_t, f"{where}"): _coerce(v, val_t, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise bad_input(where, f"got {value!r}", "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_input(where, f"got {value!r}", "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_input(where, f"got {value!r}", "a number")
        if not math.isfinite(value):
            raise bad_input(where, f"got {value!r}", "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad_input(where, f"got {value!r}", "a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad_input(where, f"got {value!r}", _type_name(tp))
    return value


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ("null" if c is None else repr(c) for c in choices)
        raise bad_input(where, f"got {value!r}", "one of " + ", ".join(shown))
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    numbers = value if isinstance(value, list | tuple) else [value]
    for number in numbers:
        if not isinstance(number, int | float) or isinstance(number, bool):
            continue
        if above is not None and number <= above:
            expected = f"a value > {above}" + (f" and <= {hi}" if hi is not None else "")
            raise bad_input(where, f"got {number!r}", expected)
        if lo is not None and number < lo:
            expected = f"a value >= {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise bad_input(where, f"got {number!r}", expected)
        if hi is not None and number > hi:
            expected = f"a value <= {hi}" + (f" and >= {lo}" if lo is not None else "")
            raise bad_input(where, f"got {number!r}", expected)


T = typing.TypeVar("T")


def parse_params(cls: type[T], raw: Mapping[str, Any] | None, where: str = "params") -> T:
    """An instance of dataclass ``cls`` from ``raw``: unknown keys, wrong types and values out of
    bounds are one-line InputErrors naming the key; missing keys take the field's default. A
    class may define ``validate(self, where)`` for checks across fields (called last)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise bad_input(where, f"got {raw!r}", "a mapping of settings")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in known:
            raise bad_input(f"{where}.{key}", "unknown key", f"one of {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, spec in known.items():
        key = f"{where}.{name}"
        if name not in raw:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise bad_input(key, "missing", _type_name(hints[name]))
            continue
        value = _coerce(raw[name], hints[name], key)
        _check_bounds(value, spec.metadata, key)
        values[name] = value
    out = cls(**values)
    validate = getattr(out, "validate", None)
    if callable(validate):
        validate(where)
    return out


def describe(cls: type) -> list[dict[str, Any]]:
    """One row per setting (name, type, default, bounds, help): for docs and their tests."""
    hints = typing.get_type_hints(cls)
    rows = []
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = dataclasses.MISSING
        rows.append(
            {
                "name": spec.name,
                "type": _type_name(hints[spec.name]),
                "default": default,
                "min": spec.metadata.get("min"),
                "max": spec.metadata.get("max"),
                "above": spec.metadata.get("above"),
                "choices": spec.metadata.get("choices"),
                "help": spec.metadata.get("help", ""),
            }
        )
    return rows
