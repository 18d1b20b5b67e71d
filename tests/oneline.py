"""One shared assertion for the project's promise on bad input: one line, exit 2, no traceback,
nothing written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.workflow_utils import env


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``medtraverse <args>`` in a subprocess, as a user runs it."""
    cmd = [sys.executable, "-m", "medtraverse", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=cwd, timeout=600)


def assert_one_line_error(
    proc: subprocess.CompletedProcess,
    *needles: str,
    status: int = 2,
    untouched: Sequence[Path] = (),
    before: dict[Path, bytes | None] | None = None,
) -> str:
    """``proc`` failed with ``status`` and printed exactly one non-empty stderr line, with no
    traceback, containing every needle; each path in ``untouched`` is absent (nothing written),
    and each path of ``before`` still holds the bytes it held (None: still absent)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for path in untouched:
        assert not Path(path).exists(), f"{path} was written"
    for path, content in (before or {}).items():
        if content is None:
            assert not path.exists(), f"{path} was written"
        else:
            assert path.read_bytes() == content, f"{path} was changed"
    return lines[0]
