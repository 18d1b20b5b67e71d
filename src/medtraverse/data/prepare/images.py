"""Resize every image once to the model resolution (square, LANCZOS, RGB PNG).

The authors resized straight to ``(512, 512)`` without keeping the aspect ratio; so do we.
Grey images are resized in one channel and then copied to three (the same pixels as resizing
the RGB copy, three times cheaper). Pillow releases the GIL while decoding, resampling and
encoding, so a thread pool is enough to use every core.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

# PNG settings fixed so the same input gives the same bytes.
PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True)
class ResizeTask:
    """One image to write: the original file and where its resized copy goes."""

    source: Path
    target: Path
    resolution: int


def resize_one(task: ResizeTask) -> str | None:
    """Write the resized RGB PNG; return None, or a short reason the source could not be read."""
    try:
        with Image.open(task.source) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            size = (task.resolution, task.resolution)
            out = img.resize(size, Image.Resampling.LANCZOS) if img.size != size else img.copy()
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    if out.mode != "RGB":
        out = out.convert("RGB")
    task.target.parent.mkdir(parents=True, exist_ok=True)
    out.save(task.target, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return None


def default_workers() -> int:
    """Threads to use when none are asked for: every core, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


def resize_all(
    tasks: Sequence[ResizeTask], workers: int = 0, stop_on_error: bool = True, desc: str = "resize"
) -> list[str | None]:
    """Resize ``tasks`` in order over a thread pool; one result per task (None when written).

    With ``stop_on_error`` the list ends at the first failure (pending work is cancelled).
    """
    workers = workers if workers > 0 else default_workers()
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=None, mininterval=2.0)
    results: list[str | None] = []
    try:
        if workers == 1:
            for task in tasks:
                results.append(resize_one(task))
                bar.update()
                if stop_on_error and results[-1] is not None:
                    break
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                for result in pool.map(resize_one, tasks):
                    results.append(result)
                    bar.update()
                    if stop_on_error and result is not None:
                        break
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results
