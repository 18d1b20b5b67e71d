"""``medtraverse synth``: synthetic twins of CheXpert and ISIC 2019 in the real on-disk formats.

The demo and the tests run the same code paths as the paper on data that look like the real
downloads: the same CSV tables, folders and file types, with findings and artifacts drawn
independently and rendered visibly, and the true factors of every image written to
``factors.parquet`` so later stages can be scored against the truth.

    medtraverse synth --dataset chexpert|isic --out DIR --n N --size PX --seed S [--params JSON]

Flags win over ``--params`` keys (n, size, seed and the dataset's options, see
``ChexpertOptions`` and ``IsicOptions``), which win over the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from medtraverse.core.errors import InputError, bad_input
from medtraverse.core.params import parse_params, setting

DATASETS = ("chexpert", "isic")
MIN_SIZE, MAX_SIZE = 32, 4096


@dataclasses.dataclass(frozen=True)
class TwinSize:
    """How big a twin is and its seed (``source.n``, ``size``, ``seed``)."""

    n: int = setting(1000, min=1, max=10_000_000, help="number of images")
    size: int = setting(64, min=MIN_SIZE, max=MAX_SIZE, help="image side in px")
    seed: int = setting(0, min=0, max=2**63 - 1, help="the twin's seed")


DEFAULTS = dataclasses.asdict(TwinSize())


def _options_class(dataset: str) -> type:
    if dataset == "chexpert":
        from medtraverse.data.synth.chexpert import ChexpertOptions

        return ChexpertOptions
    from medtraverse.data.synth.isic import IsicOptions

    return IsicOptions


def make_options(dataset: str, options: dict[str, Any], where: str = "params") -> Any:
    """The dataset's typed options from a dict, with one-line errors naming the key."""
    cls = _options_class(dataset)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            raise bad_input(
                f"{where}.{key}",
                f"unknown key for the {dataset} twin",
                f"one of n, size, seed, {', '.join(fields)}",
            )
        default = getattr(defaults, key)
        if isinstance(default, float):
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and 0.0 <= value <= 1.0
            )
            if not ok:
                raise bad_input(f"{where}.{key}", f"got {value!r}", "a number in [0, 1]")
            value = float(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
                raise bad_input(f"{where}.{key}", f"got {value!r}", "an integer in [1, 100]")
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise bad_input(f"{where}.{key}", f"got {value!r}", "an object of probabilities")
            merged = dict(default)
            for name, p in value.items():
                if name not in default:
                    raise bad_input(
                        f"{where}.{key}.{name}", "unknown name", f"one of {', '.join(default)}"
                    )
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                    raise bad_input(f"{where}.{key}.{name}", f"got {p!r}", "a number in [0, 1]")
                merged[name] = float(p)
            value = merged
        values[key] = value
    opts = cls(**values)
    check = getattr(opts, "check", None)
    if check is not None:
        check(where)
    return opts


def check_source(source: dict[str, Any], where: str, dataset: str) -> None:
    """The workflow's ``source`` section of a twin (``n``, ``size``, ``seed``, ``options``),
    checked as `synthesize` would, before any job runs."""
    if source.get("kind") != "synthetic":
        return
    parse_params(TwinSize, {k: source[k] for k in DEFAULTS if k in source}, where)
    make_options(dataset, source.get("options") or {}, f"{where}.options")


def synthesize(dataset: str, out: str | Path, n: int, size: int, seed: int, **options: Any) -> Path:
    """Write the ``dataset`` twin (``n`` images of ``size`` px, seeded by ``seed``) to ``out``.

    Written into a temporary folder and renamed onto ``out`` at the end, so a killed run leaves
    nothing half-written; then the provenance record ``out/provenance.json``. Same seed, same
    bytes (CSV tables, images, factors.parquet).
    """
    if dataset not in DATASETS:
        raise bad_input("--dataset", f"unknown dataset {dataset!r}", " or ".join(DATASETS))
    try:
        twin = parse_params(TwinSize, {"n": n, "size": size, "seed": seed}, "")
    except InputError as err:  # ".size: got 16; ..." -> "--size: got 16; ..."
        raise InputError("--" + str(err).lstrip(".")) from None
    n, size, seed = twin.n, twin.size, twin.seed
    opts = make_options(dataset, options)
    from medtraverse.core.io import atomic_path
    from medtraverse.core.provenance import record

    if dataset == "chexpert":
        from medtraverse.data.synth.chexpert import write
    else:
        from medtraverse.data.synth.isic import write
    out = Path(out)
    with atomic_path(out, stage="synth") as tmp:
        tmp.mkdir()
        summary = write(tmp, n, size, seed, opts)
    params = {"dataset": dataset, "n": n, "size": size, "seed": seed, **dataclasses.asdict(opts)}
    record(
        out,
        stage="synth",
        params=params,
        seeds={"seed": seed, "stage": f"synth/{dataset}"},
        extra=summary,
    )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="chexpert or isic")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (replaced)")
    parser.add_argument(
        "--n", type=int, default=None, help=f"number of images (default {DEFAULTS['n']})"
    )
    parser.add_argument(
        "--size", type=int, default=None, help=f"image side in px (default {DEFAULTS['size']})"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help=f"global seed (default {DEFAULTS['seed']})"
    )
    parser.add_argument(
        "--params",
        default=None,
        help="JSON object (or @file): n, size, seed and the dataset's options",
    )


def main(args: argparse.Namespace) -> None:
    from medtraverse.core.io import check_output

    check_output(args.out, "synth", "folder")  # before any work; never replaces user data
    from medtraverse.core.params import load_params

    if args.dataset not in DATASETS:
        raise bad_input("--dataset", f"unknown dataset {args.dataset!r}", " or ".join(DATASETS))
    params = load_params(args.params)
    values = {}
    for key, default in DEFAULTS.items():
        flag = getattr(args, key)
        values[key] = flag if flag is not None else params.pop(key, default)
        params.pop(key, None)
    out = synthesize(args.dataset, args.out, values["n"], values["size"], values["seed"], **params)
    print(
        f"medtraverse synth: wrote the {args.dataset} twin ({values['n']} images, "
        f"{values['size']} px, seed {values['seed']}) to {out}"
    )


__all__ = [
    "DATASETS",
    "InputError",
    "add_arguments",
    "check_source",
    "main",
    "make_options",
    "synthesize",
]
