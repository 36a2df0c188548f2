"""bench/ stands on its own: it never imports tests/, and its modules import each other
without a cycle (read from the source, function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO_ROOT

BENCH = REPO_ROOT / "bench"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def bench_imports() -> dict[str, set[str]]:
    """bench module -> every module it imports."""
    return {f"bench.{path.stem}": imported_modules(path) for path in BENCH.glob("*.py")}


def test_bench_never_imports_tests() -> None:
    graph = bench_imports()
    assert "bench.support" in graph
    offenders = {
        module: sorted(name for name in names if name == "tests" or name.startswith("tests."))
        for module, names in graph.items()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_bench_modules_import_each_other_without_a_cycle() -> None:
    imports = bench_imports()
    graph = {module: names & imports.keys() for module, names in imports.items()}
    assert graph["bench.support"] == {"bench.report"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph[module]:
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
