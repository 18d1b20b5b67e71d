"""One shared assertion for the project's promise on bad input: one line, exit 2, no traceback,
nothing written. Three ways in, one check: a CLI run in a subprocess (``run_cli``), the CLI
called in-process (``run_main``), and a stage function raising ``InputError``
(``one_line_input_error``)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from medtraverse.core.errors import InputError
from tests.workflow_utils import env

Needle = str | re.Pattern[str]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``medtraverse <args>`` in a subprocess, as a user runs it."""
    cmd = [sys.executable, "-m", "medtraverse", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=cwd, timeout=600)


def run_main(
    capsys: pytest.CaptureFixture[str], *args: str, main: Callable[[list[str]], int] | None = None
) -> subprocess.CompletedProcess:
    """``medtraverse <args>`` in-process (seconds cheaper than a subprocess that imports torch),
    returned as the CompletedProcess ``run_cli`` gives; argparse's SystemExit becomes the exit
    status. ``main`` is another module's entry point (default: the CLI's)."""
    if main is None:
        from medtraverse.cli import main
    capsys.readouterr()  # drop what earlier steps of the test printed
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, out.out, out.err)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` by relative path: a file's bytes, None for a folder. Taken
    before a failing call and passed as ``trees`` to prove nothing was written or changed."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def _nothing_written(
    untouched: Sequence[Path],
    before: dict[Path, bytes | None] | None,
    trees: dict[Path, dict[str, bytes | None]] | None,
) -> None:
    for path in untouched:
        assert not Path(path).exists(), f"{path} was written"
    for path, content in (before or {}).items():
        if content is None:
            assert not path.exists(), f"{path} was written"
        else:
            assert path.read_bytes() == content, f"{path} was changed"
    for folder, entries in (trees or {}).items():
        now = tree(folder)
        added, gone = sorted(set(now) - set(entries)), sorted(set(entries) - set(now))
        assert not added and not gone, f"{folder}: written {added}, removed {gone}"
        changed = [name for name in now if now[name] != entries[name]]
        assert not changed, f"{folder}: changed {changed}"


def _one_line(text: str, needles: Sequence[Needle], prefix: str | None) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text[-3000:]
    assert "Traceback" not in text
    if prefix is not None:
        assert lines[0].startswith(prefix), (prefix, lines[0])
    for needle in needles:
        if isinstance(needle, re.Pattern):
            assert needle.search(lines[0]), (needle.pattern, lines[0])
        else:
            assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_one_line_error(
    proc: subprocess.CompletedProcess,
    *needles: Needle,
    status: int = 2,
    prefix: str | None = None,
    untouched: Sequence[Path] = (),
    before: dict[Path, bytes | None] | None = None,
    trees: dict[Path, dict[str, bytes | None]] | None = None,
) -> str:
    """``proc`` failed with ``status`` and printed exactly one non-empty stderr line, with no
    traceback, starting with ``prefix`` and holding every needle (a string, or a compiled regex
    searched for); each path in ``untouched`` is absent (nothing written), each path of
    ``before`` still holds the bytes it held (None: still absent), and each folder of ``trees``
    still holds exactly the ``tree`` taken before."""
    assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout
    line = _one_line(proc.stderr, needles, prefix)
    _nothing_written(untouched, before, trees)
    return line


@contextlib.contextmanager
def one_line_input_error(
    *needles: Needle,
    untouched: Sequence[Path] = (),
    before: dict[Path, bytes | None] | None = None,
    trees: dict[Path, dict[str, bytes | None]] | None = None,
) -> Iterator[pytest.ExceptionInfo[InputError]]:
    """The block raises ``InputError`` whose message is one line holding every needle (the CLI
    prints it as is and exits 2), and nothing was written (as in ``assert_one_line_error``)."""
    with pytest.raises(InputError) as err:
        yield err
    _one_line(str(err.value), needles, None)
    assert "\n" not in str(err.value), repr(str(err.value))
    _nothing_written(untouched, before, trees)
