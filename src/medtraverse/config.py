"""Workflow config checks that end in one line naming the key, before Snakemake's own validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medtraverse.core.errors import InputError


def _key(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise one InputError line for the most relevant schema violation of ``config``."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    expected = error.schema.get("description") if error.validator == "required" else None
    message = f"config key {_key(error.absolute_path)}: {error.message}"
    if error.validator == "propertyNames":
        message = f"config key {_key(error.absolute_path)}: unknown name {error.instance!r}"
        allowed = error.schema.get("propertyNames", {}).get("enum")
        if allowed:
            message += f"; expected one of {', '.join(allowed)}"
    elif expected:
        message += f" ({expected})"
    raise InputError(message)
