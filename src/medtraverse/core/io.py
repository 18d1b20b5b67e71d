"""Atomic writes that never destroy: a killed job leaves the finished file or nothing, and an
output path is replaced only when it holds this stage's own earlier output.

A stage's own output is recognised by its provenance record naming the stage
(``<folder>/provenance.json`` inside a folder, ``<file>.prov.json`` beside a file; written by
``core.provenance``). Anything else at an output path (the user's folder, another stage's output,
a file where a folder belongs) is refused with one line and left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtraverse.core.errors import bad_input

FOLDER, FILE = "folder", "file"


def record_path(artifact: str | Path) -> Path:
    """Where the provenance record of ``artifact`` lives."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return artifact / "provenance.json"
    return artifact.with_name(artifact.name + ".prov.json")


def read_record(path: str | Path) -> dict[str, Any]:
    """A provenance record file as a dict; a truncated or foreign file is one line naming it."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        what = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise bad_input(
            path, f"cannot be read ({what}; truncated?)", "a provenance record (JSON)"
        ) from None
    if not isinstance(rec, dict) or not isinstance(rec.get("stage"), str):
        raise bad_input(path, "names no stage", "a provenance record with a 'stage' entry")
    return rec


def _what_is_at(path: Path, stage: str, kind: str | None) -> str | None:
    """None when ``path`` may be (re)written by ``stage``; else what is there, in words."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        return "a symbolic link"
    if path.is_dir():
        entries = sum(1 for _ in path.iterdir())
        if entries == 0 and kind != FILE:
            return None  # an empty folder holds nothing to lose
        if kind == FILE:
            return f"a folder of {entries} entries, not a file"
        rec_file = path / "provenance.json"
    elif path.is_file():
        if kind == FOLDER:
            return f"a file ({path.stat().st_size} bytes), not a folder"
        rec_file = path.with_name(path.name + ".prov.json")
    else:
        return "a special file (not a plain file or folder)"
    if not rec_file.is_file():
        held = f"a folder of {entries} entries" if path.is_dir() else "a file"
        return f"{held} with no provenance record {rec_file.name}"
    try:
        owner = read_record(rec_file)["stage"]
    except Exception:  # noqa: BLE001 - an unreadable record proves nothing: keep the path
        return f"a provenance record {rec_file.name} that cannot be read"
    if owner != stage:
        return f"the output of stage {owner!r}"
    return None


def check_output(path: str | Path, stage: str, kind: str | None = None) -> None:
    """Refuse an output path that exists and is not ``stage``'s own earlier output.

    ``kind`` ("folder" or "file", None for either) is what the stage writes there. Call it at
    the start of a stage, before any work; :func:`atomic_path` checks again before replacing.
    An empty folder counts as free (tools create destination folders).
    """
    path = Path(path)
    what = _what_is_at(path, stage, kind)
    if what is not None:
        noun = f"a {kind}" if kind else "an output"
        raise bad_input(
            path,
            f"exists and is {what}",
            f"a new path or {noun} written earlier by 'medtraverse {stage}'; nothing was "
            "changed: move it away or choose another --out",
        )


@contextlib.contextmanager
def atomic_path(path: str | Path, stage: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    Works for files and folders: whatever the block creates at the yielded path is moved. With
    ``stage``, an existing ``path`` is replaced only if it is that stage's own earlier output
    (:func:`check_output`); without, an existing file is overwritten (records, logs) but an
    existing non-empty folder is never removed.
    """
    path = Path(path)
    if stage is not None:
        check_output(path, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"{target}: nothing was written")
        if stage is not None:
            check_output(path, stage, FOLDER if target.is_dir() else FILE)
        elif path.is_dir() and not path.is_symlink() and any(path.iterdir()):
            raise bad_input(path, "exists and is a non-empty folder", "no folder at this path")
        if path.is_dir() and not path.is_symlink():
            os.replace(path, tmp / ".replaced")  # the stage's own earlier output, removed below
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_safetensors(path: str | Path, what: str, framework: str = "pt") -> dict[str, Any]:
    """All tensors of a safetensors file (``framework`` "pt" or "numpy"); a missing, truncated
    or corrupt file is one line naming it and ``what`` it should be."""
    path = Path(path)
    if not path.is_file():
        raise bad_input(path, "not found", what)
    try:
        if framework == "numpy":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any failure to parse is a bad file
        raise bad_input(path, _safetensors_problem(err), what) from None


def check_safetensors(path: str | Path, what: str) -> None:
    """Check a safetensors file's header against its size without reading the tensors (cheap:
    catches truncation and a corrupt header before a library fails with a vaguer message)."""
    path = Path(path)
    if not path.is_file():
        raise bad_input(path, "not found", what)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy"):
            pass
    except Exception as err:  # noqa: BLE001
        raise bad_input(path, _safetensors_problem(err), what) from None


def _safetensors_problem(err: Exception) -> str:
    first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
    detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return f"cannot be read as safetensors ({detail}; truncated or corrupt?)"


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, keys sorted so equal objects give equal bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_parquet(path: str | Path, expected: str) -> Any:
    """A parquet file as a pandas DataFrame; a file that cannot be read (truncated, not parquet)
    is one line naming it and ``expected``, not a pyarrow traceback."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any parquet failure is bad input
        raise bad_input(path, f"cannot be read ({type(err).__name__})", expected) from None


def write_parquet(df: Any, path: str | Path, stage: str | None = None) -> None:
    """Write a pandas DataFrame to parquet atomically (no index); ``stage`` as in
    :func:`atomic_path`."""
    with atomic_path(path, stage) as tmp:
        df.to_parquet(tmp, index=False)
