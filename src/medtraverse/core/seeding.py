"""Every random draw derives from (global seed, stage, item id)."""

from __future__ import annotations

import hashlib


def derive_seed(global_seed: int, stage: str, item: str | int = "") -> int:
    """A stable 63-bit seed from the global seed, a stage name and an item id.

    Hash-based, so adding an item or a stage never shifts another's draws.
    """
    key = f"{int(global_seed)}/{stage}/{item}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
