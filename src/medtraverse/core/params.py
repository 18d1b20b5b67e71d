"""Stage parameters arrive as one JSON object (a config section passed by the rule's params)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtraverse.core.errors import InputError


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


def require(
    params: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "params"
) -> Any:
    """Fetch ``params[key]`` and check its type, with a one-line error naming the key."""
    if key not in params:
        raise InputError(f"{where}.{key}: missing; expected a value of type {_name(kind)}")
    value = params[key]
    if kind in (float, (int, float)) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (
        isinstance(value, bool)
        and kind is not bool
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        raise InputError(f"{where}.{key}: got {value!r}; expected {_name(kind)}")
    if not isinstance(value, kind):
        raise InputError(
            f"{where}.{key}: got {value!r} ({type(value).__name__}); expected {_name(kind)}"
        )
    return value


def _name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__
