"""Explicit input lists: a stage reads exactly the paths it is given, never a folder to search.

Lists of inputs (score files, shard folders) come as repeated paths on the command line or as
``@FILE``, a text file naming one path a line (blank lines and ``#`` comments skipped), for
lists too long for one command line. A folder where files are expected is an error, so a stale
file left beside the real ones (shard 0001 after shrinking the seeds) can never be read.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medtraverse.core.errors import bad_input


def expand_path_args(values: Iterable[str | Path], option: str) -> list[Path]:
    """The paths of ``option`` with every ``@FILE`` replaced by the paths it lists, in order."""
    out: list[Path] = []
    for value in values:
        text = str(value)
        if not text.startswith("@"):
            out.append(Path(text))
            continue
        listing = Path(text[1:])
        if not listing.is_file():
            raise bad_input(
                f"{option} {text}", "list file not found", "@FILE naming one path a line"
            )
        try:
            lines = listing.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise bad_input(
                listing, f"cannot be read ({type(err).__name__})", "a text file, one path a line"
            ) from None
        out += [Path(s) for line in lines if (s := line.strip()) and not s.startswith("#")]
    return out


def no_duplicates(paths: list[Path], option: str) -> None:
    """A path given twice would count its seeds twice."""
    seen: set[Path] = set()
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise bad_input(f"{option} {path}", "given twice", "each input once")
        seen.add(key)


def exact_files(paths: Iterable[str | Path], option: str, suffix: str, what: str) -> list[Path]:
    """Each path (``@FILE`` expanded) checked to be an existing ``*suffix`` file, none twice."""
    files = expand_path_args(paths, option)
    for path in files:
        if path.is_dir():
            raise bad_input(
                f"{option} {path}",
                "is a folder (folders are not searched)",
                f"{what} files, each named (e.g. by a shell glob or an @FILE list)",
            )
        if not path.is_file():
            raise bad_input(f"{option} {path}", "not found", f"a {what} file")
        if not path.name.endswith(suffix):
            raise bad_input(f"{option} {path}", f"not a {suffix} file", f"a {what} file")
    no_duplicates(files, option)
    return files
