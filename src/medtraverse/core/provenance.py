"""Provenance records: every artifact says where it came from.

A record sits next to its artifact (``<dir>/provenance.json`` for a folder,
``<file>.prov.json`` for a file) and names the stage, its parameters and their hash,
the inputs with checksums, package versions, the git commit, seeds and device.
``medtraverse provenance <artifact>`` follows the inputs' records back to the raw data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.metadata as _md
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medtraverse.core.errors import InputError
from medtraverse.core.io import read_record, record_path, write_json

PACKAGES = (
    "medtraverse",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "timm",
    "lpips",
    "numpy",
    "pandas",
)
_HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """SHA-256 over a folder's relative names and file checksums (its own record excluded)."""
    root = Path(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = item.relative_to(root).as_posix()
        if rel == "provenance.json" or rel.endswith(".prov.json"):
            continue
        digest.update(rel.encode() + b"\0" + file_sha256(item).encode() + b"\n")
    return digest.hexdigest()


def params_sha256(params: Any) -> str:
    """Hash of the canonical JSON of a parameter section."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = _md.version(name)
        except _md.PackageNotFoundError:
            versions[name] = None
    return versions


def _device() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform()}
    torch = sys.modules.get("torch")  # only a stage that already uses torch pays for it
    if torch is not None:
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME"):
        if var in os.environ:
            info[var.lower()] = os.environ[var]
    return info


def describe_input(path: str | Path) -> dict[str, Any]:
    """Checksum and record pointer of one input."""
    path = Path(path)
    entry: dict[str, Any] = {"path": str(path)}
    if path.is_dir():
        rec = record_path(path)
        entry["sha256"] = file_sha256(rec) if rec.exists() else tree_sha256(path)
        entry["hashed"] = "record" if rec.exists() else "tree"
    elif path.is_file():
        entry["sha256"] = file_sha256(path)
    else:
        entry["missing"] = True
    rec = record_path(path) if path.exists() else None
    if rec is not None and rec.exists():
        entry["record"] = str(rec)
    return entry


def record(
    artifact: str | Path,
    *,
    stage: str,
    params: Any,
    inputs: Iterable[str | Path] = (),
    seeds: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the provenance record of ``artifact`` (which must already exist)."""
    artifact = Path(artifact)
    rec = {
        "artifact": str(artifact),
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "params_sha256": params_sha256(params),
        "inputs": [describe_input(p) for p in inputs],
        "seeds": seeds,
        "git_commit": _git_commit(),
        "versions": _versions(),
        "device": _device(),
    }
    if artifact.is_file():
        rec["sha256"] = file_sha256(artifact)
    if extra:
        rec["extra"] = extra
    path = record_path(artifact)
    write_json(path, rec)
    return path


def load(artifact: str | Path) -> dict[str, Any]:
    """Read the record of ``artifact``."""
    path = record_path(artifact)
    if not path.exists():
        raise InputError(
            f"{artifact}: no provenance record at {path}; expected an artifact made by medtraverse"
        )
    return read_record(path)


def owning_artifact(path: str | Path, levels: int = 4) -> Path | None:
    """The artifact whose record covers ``path``: itself, or the nearest recorded folder above it
    (a manifest inside a prepared folder, a CSV inside a synthetic twin)."""
    path = Path(path)
    for candidate in [path, *path.parents][: levels + 1]:
        if record_path(candidate).exists():
            return candidate
    return None


def chain(artifact: str | Path) -> list[dict[str, Any]]:
    """The records from ``artifact`` back to the raw data, depth first, each once."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []

    def visit(path: Path, depth: int) -> None:
        owner = owning_artifact(path)
        key = str((owner or path).resolve())
        if key in seen:
            return
        seen.add(key)
        if owner is None:
            out.append({"artifact": str(path), "depth": depth, "stage": "raw input"})
            return
        rec = read_record(record_path(owner))
        rec["depth"] = depth
        out.append(rec)
        for entry in rec.get("inputs", []):
            visit(Path(entry["path"]), depth + 1)

    visit(Path(artifact), 0)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="a file or folder made by the workflow")
    parser.add_argument("--json", action="store_true", help="print the whole chain as JSON")


def main(args: argparse.Namespace) -> None:
    if not Path(args.artifact).exists():
        raise InputError(f"{args.artifact}: no such file or folder; expected an artifact path")
    records = chain(args.artifact)
    if args.json:
        print(json.dumps(records, indent=2, default=str))
        return
    for rec in records:
        pad = "  " * rec["depth"]
        head = f"{pad}{rec['artifact']}  [{rec['stage']}]"
        if rec["stage"] == "raw input":
            print(head)
            continue
        params = rec["params_sha256"][:12]
        print(f"{head}  params {params}  commit {rec.get('git_commit')}  {rec['created']}")
        if rec.get("seeds") is not None:
            print(f"{pad}  seeds: {rec['seeds']}")
