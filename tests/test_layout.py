"""The code's shape: one direction of dependency, no import cycles, project imports at the top, short functions.

trainables <- analysis <- orchestrator: `trainables` runs one cell (no Ray, no MLflow),
`analysis` reads storage and computes, `orchestrator` holds the CLI, Ray and MLflow.
The import graph is read from the source with `ast`, so an import hidden in a function
body counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainables", "analysis", "orchestrator")  # bottom to top
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def project_module(name: str) -> str | None:
    """`lnsub.analysis.x` or `analysis.x` -> `analysis.x`; None for anything outside the project."""
    name = name.removeprefix("lnsub.")
    return name if name.split(".")[0] in PACKAGES else None


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(project module imported, line, at module top?) for every import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found = [m for m in (project_module(n) for n in names) if m]
        if found:
            out.append((found[0], node.lineno, id(node) in top))
            out.extend((m, node.lineno, id(node) in top) for m in found[1:])
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, _, _ in imports(path):
            while target and target not in mods:  # `from pkg.mod import name`: the module, not the name
                target = target.rpartition(".")[0]
            if target and target != mod:
                edges[mod].add(target)
    return edges


def test_dependencies_point_one_way():
    rank = {pkg: i for i, pkg in enumerate(PACKAGES)}
    upward = [(mod, target) for mod, targets in graph().items() for target in targets
              if rank[target.split(".")[0]] > rank[mod.split(".")[0]]]
    assert not upward, f"imports against trainables <- analysis <- orchestrator: {upward}"


def test_no_import_cycles():
    edges = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_project_imports_go_through_the_lnsub_namespace():
    """`from lnsub.trainables ...`, never `from trainables ...`: the packages are installed as lnsub.*."""
    bare = []
    for path in [*modules().values(), *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bare, "imports outside the lnsub namespace:\n" + "\n".join(bare)


def test_project_imports_sit_at_module_top():
    hidden = [f"{path.relative_to(ROOT)}:{line} imports {target}"
              for path in modules().values() for target, line, at_top in imports(path) if not at_top]
    assert not hidden, "project imports inside function bodies:\n" + "\n".join(hidden)


def test_functions_are_short():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


@pytest.mark.parametrize("source, expected", [
    ("import orchestrator.sweep\n", {"orchestrator.sweep"}),
    ("def f():\n    from analysis.tables import open_sweep\n", {"analysis.tables"}),
    ("from lnsub.trainables import spec\n", {"trainables"}),
    ("import numpy\nfrom . import x\n", set()),
])
def test_the_import_reader_sees_every_form(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert {t for t, _, _ in imports(path)} >= expected
    assert all(t.split(".")[0] in PACKAGES for t, _, _ in imports(path))
