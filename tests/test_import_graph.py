"""The package's layering, read from its own imports (module level and inside functions): no import circle, and the
KD health checks and guards stay below the engine (the engine imports them; they never import the engine or the
commands above it). And benchmarks/ holds scripts, not modules: the tests import none, none edits sys.path."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "densekd"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(name: str, modules: set[str]) -> str | None:
    """The package's own file behind an imported dotted name (a submodule, else its package), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name of ``base``
            for n in names:
                t = _target(n, modules)
                if t is not None and t != mod:
                    graph[mod].add(t)
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in graph[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_the_reader_sees_the_known_arrows():
    g = import_graph()
    assert "densekd.health" in g["densekd.engine.trainer"]  # the engine runs the guards
    assert "densekd.engine.trainer" in g["densekd.tools.doctor"]  # the doctor drives the engine
    assert "densekd.run_folder" in g["densekd.distiller"]


def test_no_import_circle():
    assert _circle(import_graph()) is None


def test_health_stays_below_the_engine():
    g = import_graph()
    below = set().union(*(_reaches(g, m) | {m} for m in g if m.startswith("densekd.health")))
    above = {m for m in below if m.startswith(("densekd.engine", "densekd.tools", "densekd.demo", "densekd.cli"))}
    assert not above, above


def test_benchmarks_are_scripts_run_against_the_installed_package():
    root = PACKAGE.parent
    assert not (root / "benchmarks" / "__init__.py").exists()
    for path in sorted((root / "benchmarks").glob("*.py")):
        assert "sys.path" not in path.read_text(encoding="utf-8"), path.name
    for path in sorted((root / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] == "benchmarks" for n in names), path.name
