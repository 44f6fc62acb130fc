"""The house rules of docs/architecture.md, read from the source with ``ast``: which room may import which,
and no import circle anywhere. Imports inside functions count: they are dependencies all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eoca"


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path = PACKAGE) -> bool:
    base = root.parent / Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """The eoca modules ``path`` imports. ``from pkg import child`` is an import of ``pkg.child``, not of
    the package's ``__init__`` (Python runs the ``__init__`` first, but a package that re-exports its
    children is allowed)."""
    name = _module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "eoca")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "eoca":
                continue
            children = [f"{source}.{a.name}" for a in node.names if _is_module(f"{source}.{a.name}", root)]
            found.update(children)
            if len(children) < len(node.names):
                found.add(source)
    found.discard(name)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {_module_name(p, root): _imports(p, root) for p in sorted(root.rglob("*.py"))}


def _within(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


# room -> the rooms it may import (besides itself); a module belongs to the longest room that holds it
ALLOWED = {
    "eoca.errors": set(),
    "eoca._arrays": set(),
    "eoca.constraints": {"eoca.errors", "eoca._arrays"},
    "eoca.feasibility": set(),
    "eoca.problem": {"eoca.errors", "eoca.constraints", "eoca.feasibility"},
    "eoca.result": {"eoca.errors", "eoca.problem"},
    "eoca.solvers": {"eoca.errors", "eoca.problem", "eoca.result", "eoca._arrays"},
    "eoca.data": {"eoca.errors"},
    "eoca.predict": {"eoca.errors", "eoca.data"},
}
# room -> rooms it must never import
FORBIDDEN = {
    "eoca.checks": {"eoca.solvers", "eoca.solve", "eoca.predict", "eoca.bench", "eoca.cli", "eoca.distributed.solve"},
    "eoca.distributed": {"eoca.bench", "eoca.cli", "eoca.demo"},
    "eoca.bench": {"eoca.cli", "eoca.demo"},
    "eoca.instances": {"eoca.solvers", "eoca.solve", "eoca.distributed", "eoca.bench", "eoca.cli"},
    "eoca.scenarios": {"eoca.bench", "eoca.cli"},
    "eoca.io": {"eoca.distributed", "eoca.bench", "eoca.cli"},
    "eoca.zarr_chunks": {"eoca.problem", "eoca.solvers", "eoca.distributed", "eoca.io"},
}


def _room(name: str, rooms) -> str | None:
    held = [r for r in rooms if _within(name, r)]
    return max(held, key=len) if held else None


def broken_rules(graph: dict[str, set[str]]) -> list[str]:
    broken = []
    for module, deps in graph.items():
        room = _room(module, ALLOWED)
        if room is not None:
            for dep in sorted(deps):
                if not _within(dep, room) and not any(_within(dep, ok) for ok in ALLOWED[room]):
                    broken.append(f"{module} imports {dep} ({room} may import only {sorted(ALLOWED[room])})")
        room = _room(module, FORBIDDEN)
        if room is not None:
            for dep in sorted(deps):
                if any(_within(dep, no) for no in FORBIDDEN[room]):
                    broken.append(f"{module} imports {dep} ({room} must not import {sorted(FORBIDDEN[room])})")
        for dep in sorted(deps):
            if _within(dep, "eoca.cli") and not _within(module, "eoca.cli"):
                broken.append(f"{module} imports {dep} (the command line is the top: nothing imports it)")
    return broken


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan). A package ``__init__`` importing its
    own children is a re-export, not a dependency, and is left out."""
    edges = {m: {d for d in deps if d in graph and not _within(d, m)} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_keeps_to_its_room():
    assert broken_rules(import_graph()) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_no_module_above_800_lines():
    long = {_module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 800}
    assert long == {}


def test_every_module_says_what_it_is_for():
    missing = [_module_name(p) for p in PACKAGE.rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"eoca.problem": {"eoca.distributed.blocks"}, "eoca.distributed.blocks": set()}, "eoca.problem imports"),
        ({"eoca.solvers.exact": {"eoca.distributed.solve"}, "eoca.distributed.solve": set()}, "eoca.solvers.exact"),
        ({"eoca.bench.specs": {"eoca.cli"}, "eoca.cli": set()}, "eoca.bench.specs imports eoca.cli"),
        ({"eoca.predict.models": {"eoca.problem"}, "eoca.problem": set()}, "eoca.predict.models imports"),
        ({"eoca.checks": {"eoca.solvers.exact"}, "eoca.solvers.exact": set()}, "eoca.checks imports"),
    ],
)
def test_the_rules_catch_what_the_house_forbids(graph, expected):
    """The check itself can fail: each forbidden import of the issue that shaped the house is caught."""
    assert any(line.startswith(expected) for line in broken_rules(graph))


def test_a_circle_through_lazy_imports_is_found(tmp_path):
    """A circle closed by an import inside a function is a circle (the problem importing the engine, the
    engine importing the problem was one)."""
    source = tmp_path / "eoca"
    source.mkdir()
    (source / "problem.py").write_text('"""p"""\ndef f():\n    from eoca.engine import g\n')
    (source / "engine.py").write_text('"""e"""\nfrom eoca.problem import f\n')
    (source / "__init__.py").write_text('"""pkg"""\nfrom eoca.problem import f\n')
    graph = import_graph(source)
    assert graph["eoca.problem"] == {"eoca.engine"}
    assert circles(graph) == [["eoca.engine", "eoca.problem"]]
