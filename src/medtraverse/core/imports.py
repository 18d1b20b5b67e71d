"""The in-package modules a stage runs, read from import statements (no import executed).

The workflow makes a stage's transitive closure the code inputs of its jobs, so editing any
module a stage runs (directly, or through a helper imported inside a function) reruns exactly
that stage's jobs, and nothing is listed by hand.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "medtraverse"


def package_root() -> Path:
    """The folder of the installed (or checked-out) ``medtraverse`` package."""
    return Path(__file__).resolve().parents[1]


def _module_file(name: str, root: Path) -> Path | None:
    """The file of module ``name`` (``medtraverse.a.b``) under ``root``, or None."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts) if parts else root
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _resolve(name: str, root: Path) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (``a.b.func`` -> ``a.b``)."""
    while name.startswith(PACKAGE):
        if _module_file(name, root) is not None:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(name: str, root: Path) -> set[str]:
    """Package modules imported anywhere in module ``name``: top level and inside functions."""
    path = _module_file(name, root)
    if path is None:
        return set()
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            resolved = _resolve(target, root)
            if resolved and resolved != name:
                found.add(resolved)
    return found


def _with_parents(name: str) -> list[str]:
    """A module and the packages above it, whose ``__init__`` runs when it is imported."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def module_closure(name: str, root: Path | None = None) -> tuple[Path, ...]:
    """Sorted files of every package module that importing and running ``name`` can execute."""
    root = root or package_root()
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        for module in _with_parents(current):
            if module not in seen and _module_file(module, root) is not None:
                seen.add(module)
                todo.extend(imported_modules(module, root) - seen)
    return tuple(sorted(path for m in seen if (path := _module_file(m, root)) is not None))
