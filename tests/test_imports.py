"""Imports point one way: no cycle between the project's modules, no job reaching into another's private names.

Read from the source with ``ast`` (function-local imports included: a cycle hidden inside a function is
still a cycle), so nothing is imported and the test takes milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kdtrack", "jobs", "tune", "data_pipelines", "bench")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: project modules it imports}``; ``from a.b import c`` counts ``a.b.c`` when that is a module."""
    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.update(resolve(f"{node.module}.{alias.name}") for alias in node.names)
        graph[name] = deps - {"", name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_hand_built_cycle():
    # a -> b -> c -> a is one cycle; d -> a hangs off it
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_project():
    assert _cycles(_import_graph(_modules())) == []


def test_no_job_imports_another_modules_private_names():
    """Shared pieces are public (``jobs._inference_pool.InferenceWorker``); a ``_name`` is its module's own."""
    offenders = [f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{alias.name}"
                 for package in ("jobs", "bench", "tune") for path in (REPO / package).rglob("*.py")
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES
                 for alias in node.names if alias.name.startswith("_")]
    assert offenders == []
