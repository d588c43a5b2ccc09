"""htmengine's packages import each other in one direction only (README, Architecture).

Walks every module's imports (function-level ones too) with `ast`, so nothing is imported here.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import htmengine

ROOT = Path(htmengine.__file__).parent

# Upper layers first. A package may import packages of lower layers only; packages not listed
# here are checked for cycles only.
LAYERS = [
    {"cli"},
    {"adapters"},
    {"runtime"},
    {"engine"},
    {"model_swapper"},
    {"repository", "bus"},
    {"protocol"},
    {"config", "exceptions"},
]


def _unit(module: str) -> str | None:
    """The top-level part of htmengine a dotted module name belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "htmengine" or len(parts) < 2:
        return None
    return parts[1].removesuffix(".py")


def _units() -> set[str]:
    return {
        path.stem if path.is_file() else path.name
        for path in ROOT.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }


def import_graph() -> dict[str, dict[str, set[str]]]:
    """{unit: {imported unit: {file that imports it, ...}}} over every module of htmengine."""
    units = _units()
    graph: dict[str, dict[str, set[str]]] = {unit: {} for unit in units}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        unit = relative.parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "htmengine":
                    targets = [f"htmengine.{alias.name}" for alias in node.names]
                else:
                    targets = [node.module]
            for target in targets:
                imported = _unit(target)
                if imported is not None and imported != unit and imported in units:
                    graph[unit].setdefault(imported, set()).add(str(relative))
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_the_known_imports():
    graph = import_graph()
    assert "engine" in graph["adapters"]
    assert "model_swapper" in graph["engine"]
    assert "repository" in graph["model_swapper"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert find_cycle({"a": {"b": set()}, "b": {}}) is None


def test_no_import_cycle_between_packages():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [
            f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for a, b in itertools.pairwise(cycle)
        ]
        raise AssertionError("import cycle: " + "; ".join(edges))


def test_packages_import_only_lower_layers():
    graph = import_graph()
    rank = {unit: level for level, layer in enumerate(LAYERS) for unit in layer}
    upward = [
        f"{unit} -> {imported} ({', '.join(sorted(files))})"
        for unit, imports in graph.items()
        for imported, files in imports.items()
        if unit in rank and imported in rank and rank[imported] <= rank[unit]
    ]
    assert upward == []
