"""Reading finished traversal shards: their folders and ``meta.parquet`` (no torch)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medtraverse.core.errors import bad_input


def find_shards(paths: list[Path]) -> dict[tuple[str, str], list[Path]]:
    """Shard folders keyed by (dataset, trajectory) read from their meta.parquet."""
    folders: list[Path] = []
    for path in paths:
        if (path / "meta.parquet").is_file():
            folders.append(path)
        elif path.is_dir():
            folders += sorted(
                p.parent for p in path.rglob("meta.parquet") if ".tmp" not in p.as_posix()
            )
        else:
            raise bad_input(path, "not found", "a traversal shard folder or a folder of them")
    out: dict[tuple[str, str], list[Path]] = {}
    for folder in folders:
        meta = pd.read_parquet(folder / "meta.parquet", columns=None)
        traj = (
            str(meta["trajectory"].iloc[0])
            if "trajectory" in meta and len(meta)
            else folder.parent.name
        )
        ds = (
            str(meta["dataset"].iloc[0])
            if "dataset" in meta and len(meta)
            else folder.parent.parent.name
        )
        out.setdefault((ds, traj), []).append(folder)
    return out
