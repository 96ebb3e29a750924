"""The dependency direction of docs/ARCHITECTURE.md, enforced by reading the source (nothing is imported).

    cli ──► pruning, serving, cost, load tests ──► model, artifacts, settings ──► _platform, _schema, _stats

Every ``import`` and ``from ... import`` in every module under service/ counts, those inside
functions too (a lazy import is still a dependency; it only moves the cost). A module may import
its own layer or a lower one. Two checks:

- no upward import: a lower layer importing a higher one;
- no cycle between units: a unit is a subpackage (``service.cost``) or a top-level module
  (``service.demo``); units of one layer may use each other, but never round in a circle.

An edge that breaks a rule today and cannot be fixed without touching code another change owns is
listed in ALLOWED, with the reason. The list is meant to shrink; an edge that no longer exists
fails the test too, so that it is taken off.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service"

# Layer of a module: the longest prefix listed wins. Higher numbers sit higher.
LAYERS: dict[str, int] = {
    "service._platform": 0,
    "service._schema": 0,  # the strict base model, load_json, the variants' names
    "service._stats": 0,  # the one percentile
    "service": 1,  # the package's own __init__
    "service.model": 1,
    "service.settings": 1,
    "service.artifacts": 1,
    "service.pruning": 2,
    "service.serving": 2,
    "service.cost": 2,
    "service.bench": 2,
    "service.loadgen": 2,
    "service.capacity_search": 2,
    "service._capacity_schema": 2,
    "service._load_plot": 2,
    "service.demo": 2,
    "service.reliability": 2,
    "service.peers": 2,
    "service._infinity": 2,
    "service.cli": 3,
}
LAYER_NAMES = {0: "_platform/_schema/_stats", 1: "model/artifacts/settings", 2: "pruning/serving/cost/load tests", 3: "cli"}

# (importer, imported) module pairs that break a rule today. Shrinking this is the goal.
ALLOWED: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The service modules ``path`` imports, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from service import cli` / `from service.cost import _plots` import submodules
            found.update(f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}"))
    return {m for m in found if m == "service" or m.startswith("service.")}


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _layer(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return LAYERS[best]


def _unit(module: str) -> str:
    """``service.cost.report`` -> ``service.cost``; ``service.demo`` -> ``service.demo``."""
    return ".".join(module.split(".")[:2])


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # `import service.cost.report` names the module; a name imported from a module is the module
        graph[name] = {m if m in modules else m.rpartition(".")[0] for m in _imports(path)} - {name}
    return graph


def test_every_module_has_a_layer():
    for name in _graph():
        _layer(name)


def test_no_module_imports_a_higher_layer():
    upward = sorted((a, b) for a, targets in _graph().items() for b in targets
                    if _layer(b) > _layer(a) and (a, b) not in ALLOWED)
    assert not upward, "upward imports (a lower layer importing a higher one):\n" + "\n".join(
        f"  {a} ({LAYER_NAMES[_layer(a)]}) -> {b} ({LAYER_NAMES[_layer(b)]})" for a, b in upward)


def test_no_import_cycle_between_units():
    edges: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, targets in _graph().items():
        for b in targets:
            ua, ub = _unit(a), _unit(b)
            if ua != ub and (a, b) not in ALLOWED:
                edges[ua].add(ub)
                why[ua, ub].append(f"{a} -> {b}")
    cycles = _cycles(edges)
    assert not cycles, "import cycles between units:\n" + "\n".join(
        "  " + " -> ".join([*c, c[0]]) + "\n" + "\n".join(
            f"      {e}" for x, y in zip(c, [*c[1:], c[0]], strict=True) for e in why[x, y]) for c in cycles)


def test_the_allow_list_names_only_edges_that_exist():
    graph = _graph()
    stale = sorted((a, b) for a, b in ALLOWED if b not in graph.get(a, set()))
    assert not stale, f"ALLOWED lists edges that are gone; take them off: {stale}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(_a_cycle(sorted(comp), edges))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def _a_cycle(comp: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first unit, for the message."""
    start, members = comp[0], set(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ()) & members):
                if w == start:
                    return paths[v]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return comp
