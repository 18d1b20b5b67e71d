"""One-line errors for bad input: what, where, and what was expected."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input a user can fix; the CLI prints it as one line and exits with status 2."""


def bad_input(where: str | Path, what: str, expected: str) -> InputError:
    """Build the project's standard one-line message: ``<where>: <what>; expected <expected>``."""
    return InputError(f"{where}: {what}; expected {expected}")
