"""Real kills: run a stage's CLI as a subprocess, SIGKILL it once it has saved work, compare.

A Python exception lets ``finally`` blocks and context managers clean up; SIGKILL (a node lost,
``scancel -s KILL``, the OOM killer) does not. These helpers give the stage no such chance.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.workflow_utils import env

# Fields of a provenance record that legitimately differ between two runs of the same work.
VOLATILE = frozenset({"created", "device", "git_commit"})


@dataclass
class Killed:
    """What a kill left: the seconds from start to the kill and the random delay used."""

    after_s: float
    delay_s: float
    returncode: int


def cli(*args: str) -> list[str]:
    """The command line of ``medtraverse <args>`` in this interpreter."""
    return [sys.executable, "-m", "medtraverse", *map(str, args)]


def run(argv: list[str], cwd: Path | None = None, timeout: float = 900) -> None:
    """Run a stage to completion; fail the test with its output if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(), cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, (argv[3:5], proc.stdout[-2000:], proc.stderr[-3000:])


def kill_when(
    argv: list[str],
    ready: Callable[[], bool],
    *,
    seed: int,
    max_delay_s: float = 0.3,
    limit_s: float = 900.0,
    cwd: Path | None = None,
) -> Killed:
    """Start ``argv``, wait until ``ready()`` (its first checkpoint or seed block is on disk),
    wait a random ``[0, max_delay_s)`` more, and SIGKILL its whole process group.

    Polls every 20 ms with a generous overall limit (a loaded CI machine is slow, not broken).
    Fails the test if the process ends before it could be killed: the kill would prove nothing.
    """
    delay = random.Random(seed).uniform(0.0, max_delay_s)
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=cwd,
        start_new_session=True,  # its own process group: children die with it
    )
    try:
        while not ready():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(
                    f"{argv[3]} ended (status {proc.returncode}) before its first saved work "
                    f"appeared; nothing to kill:\n{err[-3000:]}"
                )
            if time.monotonic() - start > limit_s:
                pytest.fail(f"{argv[3]} saved nothing in {limit_s} s")
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is not None:
            pytest.fail(
                f"{argv[3]} finished {delay:.2f} s after its first saved work, before the kill: "
                "give it more work so the kill lands mid-run"
            )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return Killed(after_s=time.monotonic() - start, delay_s=delay, returncode=proc.returncode)


def tree(root: Path, skip: Iterable[str] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (or ``root`` itself, a file) as {relative path: bytes}."""
    root = Path(root)
    if root.is_file():
        return {root.name: root.read_bytes()}
    skipped = set(skip)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in skipped
    }


def _is_record(rel: str) -> bool:
    return rel.endswith("provenance.json") or rel.endswith(".prov.json")


def normalized_record(text: bytes, roots: Iterable[Path], drop: Iterable[str] = ()) -> Any:
    """A provenance record with its volatile fields (and ``drop``: dotted paths such as
    ``extra.resumed_from_step``) removed and run folders replaced by ``<root>``."""
    blob = text.decode()
    for root in roots:
        blob = blob.replace(str(root), "<root>")
    rec = json.loads(blob)
    for name in VOLATILE:
        rec.pop(name, None)
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = rec
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return rec


def assert_same_outputs(
    clean: Path,
    resumed: Path,
    *,
    clean_root: Path,
    resumed_root: Path | Sequence[Path],
    record_drop: Iterable[str] = (),
) -> int:
    """The resumed run's files equal the uninterrupted run's byte for byte; provenance records
    equal after removing their named volatile fields (run folders: ``clean_root`` for the clean
    run, ``resumed_root`` (one or several) for the other). Returns the number of files compared."""
    roots = [resumed_root] if isinstance(resumed_root, Path) else list(resumed_root)
    a, b = tree(clean), tree(resumed)
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:20]
    for rel in a:
        if _is_record(rel):
            ra = normalized_record(a[rel], [clean_root], record_drop)
            rb = normalized_record(b[rel], roots, record_drop)
            diff = {k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k)}
            assert ra == rb, (rel, {k: (ra.get(k), rb.get(k)) for k in diff})
        else:
            assert a[rel] == b[rel], f"{rel} differs after a kill and a rerun"
    return len(a)


def leftovers(folder: Path) -> list[str]:
    """Temp and scratch names a finished stage must not leave (or read): hidden ``.tmp`` folders
    of an atomic write, ``.partial`` resume folders."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in Path(folder).rglob("*")
        if p.name.endswith(".tmp") or p.name.endswith(".partial")
    )


def saved_blocks(scratch: Path, folders: Sequence[str]) -> dict[str, int]:
    """The files a killed stage's finished blocks in ``scratch`` (``<out>.partial``) hold in
    ``folders`` (those merged into the shard), as {path in the shard: modification time, ns}.
    A block's own temps (hidden ``.tmp`` folders) are not finished blocks."""
    saved: dict[str, int] = {}
    for block in sorted(Path(scratch).iterdir()):
        if not block.is_dir() or block.name.startswith("."):
            continue
        for sub in folders:
            for path in sorted((block / sub).rglob("*")):
                if path.is_file():
                    saved[path.relative_to(block).as_posix()] = path.stat().st_mtime_ns
    return saved


def assert_blocks_reused(saved: dict[str, int], shard: Path) -> None:
    """Every file of a block saved before the kill is in the resumed ``shard`` as that very
    file (hard-linked or copied with its times: the same modification time to the nanosecond),
    not computed again: the rerun resumed instead of starting over."""
    assert saved, "the kill left no finished block with files to reuse"
    redone = [rel for rel, ns in saved.items() if (shard / rel).stat().st_mtime_ns != ns]
    assert not redone, (
        f"{len(redone)} of {len(saved)} files of the blocks saved before the kill were "
        f"computed again by the rerun (e.g. {redone[0]}): it did not resume"
    )
