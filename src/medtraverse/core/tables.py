"""Table writers shared by every stage that reports numbers: CSV, Markdown and LaTeX."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd


def cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, NaN as n/a."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def to_markdown(df: pd.DataFrame, note: str | None = None) -> str:
    """A GitHub-style Markdown table, with an optional footnote line."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |")
    text = "\n".join(lines) + "\n"
    if note:
        text += f"\n{note}\n"
    return text


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def _tex(text: str) -> str:
    """Escape LaTeX's special characters."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(df: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs ``table`` environment."""
    cols = [str(c) for c in df.columns]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + "l" * len(cols) + "}",
        r"\toprule",
        " & ".join(_tex(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_tex(cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + _tex(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_tables(
    folder: Path,
    stem: str,
    long: pd.DataFrame,
    wide: pd.DataFrame | None = None,
    note: str | None = None,
    caption: str | None = None,
) -> None:
    """``<stem>.csv`` (long form, every column) and ``<stem>.md`` / ``<stem>.tex`` (``wide``)."""
    long.to_csv(folder / f"{stem}.csv", index=False)
    shown = long if wide is None else wide
    (folder / f"{stem}.md").write_text(to_markdown(shown, note=note))
    cap = caption or stem
    (folder / f"{stem}.tex").write_text(to_latex(shown, caption=f"{cap}. {note}" if note else cap))
