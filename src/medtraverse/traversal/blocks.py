"""Resumable block scratch folders, shared by ``traverse``, ``invert`` and ``traverse-real``.

Why
    A shard is computed in blocks of ``batch_size`` rows (block id ``row // batch_size``, so a
    row always meets the same batch-mates). Each finished block is written atomically into the
    scratch folder ``<out>.partial/`` beside the shard (not in it: Snakemake deletes the declared
    outputs of a failed job), together with ``settings.json``, the identity of everything the
    bits depend on. A rerun with the same identity skips the finished blocks; a changed one
    discards the scratch. At the end the blocks are merged into ``<out>`` atomically and the
    scratch removed. Each stage keeps its own block folder names (:class:`BlockNames`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtraverse.core.errors import bad_input
from medtraverse.core.io import write_json

if TYPE_CHECKING:
    import pandas as pd

SETTINGS = "settings.json"


@dataclass(frozen=True)
class BlockNames:
    """How a stage names its block folders: ``<prefix>-<first>-<last>``, zero-padded."""

    prefix: str
    width: int

    def dir(self, scratch: Path, block: Sequence[int]) -> Path:
        w = self.width
        return scratch / f"{self.prefix}-{block[0]:0{w}d}-{block[-1]:0{w}d}"

    def todo(self, scratch: Path, blocks: Iterable[list[int]]) -> list[list[int]]:
        """The blocks not yet finished in ``scratch``."""
        return [blk for blk in blocks if not self.dir(scratch, blk).is_dir()]


def cut_blocks(rows: Iterable[int], batch_size: int) -> list[list[int]]:
    """``rows`` cut at multiples of ``batch_size`` (block id ``row // batch_size``)."""
    blocks: dict[int, list[int]] = {}
    for row in rows:
        blocks.setdefault(int(row) // batch_size, []).append(int(row))
    return list(blocks.values())


def scratch_of(out: Path) -> Path:
    """The resume folder of the shard ``out``: ``<out>.partial`` beside it."""
    return out.with_name(out.name + ".partial")


def check_scratch(scratch: Path, stage: str) -> None:
    """Refuse a ``<out>.partial`` that is not ``stage``'s resume folder (it would be removed):
    ours holds settings.json, or nothing but a killed write's temps."""
    if not os.path.lexists(scratch):
        return
    if scratch.is_dir() and not scratch.is_symlink():
        foreign = [p for p in scratch.iterdir() if not p.name.endswith(".tmp")]
        if (scratch / SETTINGS).is_file() or not foreign:
            return
        what = f"a folder of {len(foreign)} entries without settings.json"
    else:
        what = "not a folder"
    raise bad_input(
        scratch, f"exists and is {what}", f"the resume folder of 'medtraverse {stage}' or no path"
    )


def fingerprint(*paths: Path) -> str:
    """Cheap identity of files or folders: names, sizes and modification times."""
    digest = hashlib.sha256()
    for root in paths:
        items = sorted(root.rglob("*")) if root.is_dir() else [root]
        for item in items:
            if item.is_file():
                st = item.stat()
                digest.update(f"{item}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def clear_stale_temps(folder: Path, prefix: str) -> None:
    """Remove temp folders that a killed atomic write left behind."""
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        if item.name.startswith(prefix) and item.name.endswith(".tmp") and item.is_dir():
            shutil.rmtree(item, ignore_errors=True)


def open_scratch(out: Path, identity: Mapping[str, Any], stage: str) -> Path:
    """The scratch folder of ``out``, its finished blocks kept only if ``identity`` is the one
    they were written with; a killed write's temps (in it and beside ``out``) removed."""
    scratch = scratch_of(out)
    ident_file = scratch / SETTINGS
    if scratch.exists():
        check_scratch(scratch, stage)
        if not (ident_file.is_file() and json.loads(ident_file.read_text()) == identity):
            shutil.rmtree(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(scratch, ".")
    clear_stale_temps(out.parent, f".{out.name}.")
    if not ident_file.is_file():
        write_json(ident_file, identity)
    return scratch


def run_blocks(
    todo: list[list[int]],
    *,
    total: int,
    desc: str,
    unit: str,
    on_block_done: Callable[[list[int]], None] | None,
) -> Iterator[list[int]]:
    """Yield the unfinished blocks; after each, advance a progress bar over all ``total`` rows
    (the finished ones counted up front) and call ``on_block_done``."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit)
    bar.update(total - sum(len(blk) for blk in todo))
    for block in todo:
        yield block
        bar.update(len(block))
        if on_block_done is not None:
            on_block_done(block)
    bar.close()


def link_or_copy(src: str, dst: str) -> None:
    """Hard link (the scratch is beside the shard, on the same file system), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def gather_blocks(
    scratch: Path,
    blocks: Iterable[list[int]],
    names: BlockNames,
    dest: Path,
    *,
    tensors: Sequence[str] = ("latents.safetensors",),
    folders: Sequence[str] = (),
) -> pd.DataFrame:
    """Merge the finished blocks into the new folder ``dest``: each ``tensors`` file holds all
    blocks' tensors, each of ``folders`` all blocks' files (hard links where possible); the
    blocks' ``rows.parquet`` tables are returned concatenated, in block order."""
    import pandas as pd
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    merged: dict[str, dict[str, Any]] = {name: {} for name in tensors}
    tables = []
    for block in blocks:
        src = names.dir(scratch, block)
        if not src.is_dir():
            raise RuntimeError(f"{src}: block missing at assembly")
        for name, into in merged.items():
            into.update(load_file(str(src / name)))
        tables.append(pd.read_parquet(src / "rows.parquet"))
        for sub in folders:
            if (src / sub).is_dir():
                shutil.copytree(
                    src / sub, dest / sub, copy_function=link_or_copy, dirs_exist_ok=True
                )
    for name, into in merged.items():
        save_file(into, str(dest / name))
    return pd.concat(tables, ignore_index=True)


def record_shard(
    tmp: Path,
    out: Path,
    *,
    stage: str,
    params: Any,
    inputs: Iterable[str | Path],
    seeds: Any,
    extra: dict[str, Any],
) -> None:
    """The provenance record of the shard assembled at ``tmp``, naming its final path ``out``."""
    from medtraverse.core.provenance import record

    rec_file = record(tmp, stage=stage, params=params, inputs=inputs, seeds=seeds, extra=extra)
    rec = json.loads(rec_file.read_text())
    rec["artifact"] = str(out)
    write_json(rec_file, rec)
