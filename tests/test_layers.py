"""The packages of ``homepot`` import one another in one direction only.

STYLE.md: a domain may use ``kit/``, ``db.py``, ``config.py`` and the domains below it, never one
above it. A cycle between two packages (device ↔ site, fleet ↔ job) means a concept sits in the
wrong place; this test names the modules that close the loop.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import homepot

ROOT = Path(homepot.__file__).parent


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the modules that make that edge."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        source = _package_of(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("homepot.") and (target := _package_of(name)) != source:
                    edges[(source, target)].append(module)
    return edges


def test_no_two_packages_import_each_other() -> None:
    edges = _imports()
    loops = sorted(
        f"{a} ↔ {b}: {sorted(set(edges[(a, b)]))} / {sorted(set(edges[(b, a)]))}"
        for (a, b) in edges
        if a < b and (b, a) in edges
    )
    assert loops == []


def test_the_package_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in _imports():
        graph[a].add(b)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if state.get(start) is None and visit(start, [start]):
            break
    assert cycle == [], " → ".join(cycle)
