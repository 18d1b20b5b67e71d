"""Reading finished traversal shards: their folders and ``meta.parquet`` (no torch)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from medtraverse.core.errors import bad_input
from medtraverse.core.inputs import expand_path_args, no_duplicates


def shard_folders(paths: Iterable[str | Path], option: str = "--traversals") -> list[Path]:
    """Exactly the shard folders given (``@FILE`` lists expanded); never searches a folder, so
    a shard the config no longer asks for is not read just because it is still on disk."""
    folders = expand_path_args(paths, option)
    for path in folders:
        if not path.exists():
            raise bad_input(f"{option} {path}", "not found", "a traversal shard folder")
        if not (path / "meta.parquet").is_file():
            raise bad_input(
                f"{option} {path}",
                "not a traversal shard folder (no meta.parquet; folders are not searched)",
                "shard folders written by 'medtraverse traverse', each named",
            )
    no_duplicates(folders, option)
    return folders


def group_shards(
    paths: Iterable[str | Path], option: str = "--traversals"
) -> dict[tuple[str, str], list[Path]]:
    """The given shard folders keyed by (dataset, trajectory) read from their meta.parquet."""
    out: dict[tuple[str, str], list[Path]] = {}
    for folder in shard_folders(paths, option):
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
