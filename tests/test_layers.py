"""The package's shape: no import cycle (function-level imports included), no private names
imported across modules, and code inputs derived from imports."""

from __future__ import annotations

import ast
from pathlib import Path

from medtraverse.cli import STAGES
from medtraverse.core.imports import imported_modules, module_closure, package_root

ROOT = package_root()


def _modules() -> list[str]:
    names = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    return sorted(names)


def test_no_import_cycle_including_function_level_imports() -> None:
    graph = {m: imported_modules(m, ROOT) for m in _modules()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if not state.get(nxt) and (cycle := visit(nxt, stack)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for module in graph:
        if not state.get(module):
            assert visit(module, []) is None, "import cycle"


def test_no_module_imports_another_modules_private_name() -> None:
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medtraverse"):
                offenders += [
                    f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offenders == []


def _closure(stage: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in module_closure(STAGES[stage][0], ROOT)}


def test_code_inputs_follow_indirect_and_function_level_imports() -> None:
    score = _closure("score")
    # scoring runs classifier loading, LPIPS, metrics, the twin detectors (imported in functions)
    for module in (
        "evaluation/score.py",
        "evaluation/classify.py",
        "evaluation/backbones.py",
        "evaluation/metrics.py",
        "data/synth/detect.py",
        "core/errors.py",
        "__init__.py",
    ):
        assert module in score, module
    assert "models/finetune.py" not in score
    traverse = _closure("traverse")
    assert {"traversal/engine.py", "traversal/bezier.py", "models/pipeline.py"} <= traverse
    assert not any(m.startswith(("evaluation/", "report/")) for m in traverse)
    assert "traversal/engine.py" not in _closure("finetune")
    assert "evaluation/backbones.py" in _closure("aggregate")


def test_closure_sees_an_import_added_inside_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "medtraverse"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "stage.py").write_text("def run():\n    from medtraverse.a import helper\n")
    (pkg / "a" / "helper.py").write_text("from ..b import deep\n")
    (pkg / "b.py").write_text("")
    (pkg / "unused.py").write_text("")
    files = {str(p.relative_to(pkg)) for p in module_closure("medtraverse.a.stage", pkg)}
    assert files == {"__init__.py", "a/__init__.py", "a/stage.py", "a/helper.py", "b.py"}
