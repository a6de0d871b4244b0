"""The code's shape: one direction of dependency, no import cycles, project imports at the top, short functions.

trainables <- analysis <- orchestrator: `trainables` runs one cell (no Ray, no MLflow),
`analysis` reads storage and computes, `orchestrator` holds the CLI, Ray and MLflow.
Inside `trainables` the core (spec, tasks, loading, training, storage) never imports a
provider (the synthetic testbed): providers register themselves (trainables/providers.py).
`trainables` holds one cell's work only: no sweep bookkeeping, lease, fault injection or
hub-copy writers. The import graph is read from the source with `ast`, relative imports
resolved, so an import hidden in a function body counts as much as one at the top; bench/
scripts are read too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainables", "analysis", "orchestrator")  # bottom to top
PROVIDERS = ("trainables.testbed",)  # plug-ins of the core: they may import it, never the other way
ONLY_IN_ORCHESTRATOR = ("ray", "mlflow")  # third-party packages the cell's work and the analyses never touch
NOT_A_CELLS_WORK = ("sweep", "sweeps", "sweep_state", "lease", "faults", "hubcopies", "rehearsal", "study")
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    return {_module_of(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if p.name != "_layout_probe.py"}


def project_module(name: str) -> str | None:
    """`lnsub.analysis.x` or `analysis.x` -> `analysis.x`; None for anything outside the project."""
    name = name.removeprefix("lnsub.")
    return name if name.split(".")[0] in PACKAGES else None


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _absolute(node: ast.ImportFrom, path: Path) -> str | None:
    """The absolute module of a `from ... import` (relative ones resolved against the file's package)."""
    if node.level == 0:
        return node.module
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_names(path: Path) -> list[tuple[list[str], int, bool]]:
    """(every dotted name an import statement brings in, line, at module top?) for a file's imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.append(([a.name for a in node.names], node.lineno, id(node) in top))
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            if module:
                out.append(([module] + [f"{module}.{a.name}" for a in node.names], node.lineno, id(node) in top))
    return out


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(project module imported, line, at module top?) for every import statement of a file."""
    out = []
    for names, line, at_top in imported_names(path):
        found = [m for m in (project_module(n) for n in names) if m]
        out.extend((m, line, at_top) for m in found)
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


def test_the_core_never_imports_a_provider():
    edges = graph()
    core = [m for m in edges if m.startswith("trainables") and not m.startswith(PROVIDERS)]
    leaks = [(m, t) for m in core for t in edges[m] if t.startswith(PROVIDERS)]
    assert not leaks, f"the core imports a provider (register it in trainables/providers.py instead): {leaks}"


def test_ray_and_mlflow_only_in_the_orchestrator():
    found = [f"{path.relative_to(ROOT)}:{line} imports {name}" for mod, path in modules().items()
             if not mod.startswith("orchestrator") for names, line, _ in imported_names(path) for name in names
             if name.split(".")[0] in ONLY_IN_ORCHESTRATOR]
    assert not found, "Ray or MLflow outside orchestrator/:\n" + "\n".join(found)


def test_trainables_holds_one_cells_work():
    misplaced = [m for m in modules() if m.startswith("trainables") and m.split(".")[-1] in NOT_A_CELLS_WORK]
    assert not misplaced, f"sweep bookkeeping, leases, fault injection or hub copies in trainables/: {misplaced}"


def test_benchmarks_import_what_exists():
    """bench/ is read as the packages are: every project import it makes names a module or a name that exists."""
    mods = modules()
    missing = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for names, line, _ in imported_names(path):
            for name in names:
                target = project_module(name)
                if target is None:
                    continue
                module, _, attr = target.rpartition(".") if target not in mods else (target, "", "")
                if target not in mods and not (module in mods and _defines(mods[module], attr)):
                    missing.append(f"{path.relative_to(ROOT)}:{line} {name}")
    assert not missing, "bench/ imports that do not exist:\n" + "\n".join(missing)


def _defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if any(isinstance(t, ast.Name) and t.id == name for t in flat):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


@pytest.mark.parametrize("file, source, expected", [
    ("orchestrator/m.py", "import orchestrator.sweep\n", {"orchestrator.sweep"}),
    ("orchestrator/m.py", "def f():\n    from analysis.tables import open_sweep\n", {"analysis.tables"}),
    ("orchestrator/m.py", "from lnsub.trainables import spec\n", {"trainables"}),
    ("trainables/tasks/m.py", "import numpy\nfrom . import base\n", {"trainables.tasks"}),
    ("trainables/tasks/m.py", "from ..testbed import grammar\n", {"trainables.testbed"}),
    ("trainables/m.py", "from .storage.layout import DONE\n", {"trainables.storage.layout"}),
])
def test_the_import_reader_sees_every_form(file, source, expected):
    path = ROOT / file
    tree_path = path.with_name("_layout_probe.py")
    tree_path.write_text(source)
    try:
        assert {t for t, _, _ in imports(tree_path)} >= expected
        assert all(t.split(".")[0] in PACKAGES for t, _, _ in imports(tree_path))
    finally:
        tree_path.unlink()
