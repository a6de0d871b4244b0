"""Grid files -> a validated plan of cells (STYLE.md: plan, then launch).

A grid is YAML: a model, languages, tasks (each with hyperparameter overrides
of METHOD.md's defaults), seeds, the pruning schedule, resources per cell and
the expected cost per cell. Everything is checked before anything starts; a
problem is one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path

import yaml

from trainables.errors import LnsubError
from trainables.spec import CellSpec, make_spec
from trainables.tasks import TASKS
from trainables.tasks.base import PAPER_LANGUAGES
from trainables.testbed.languages import TWINS

SHIPPED = ("smoke", "full-synthetic", "full")
TOP_LEVEL = {"name", "model", "languages", "tasks", "seeds", "levels", "prune_fraction", "resources", "cost_hours",
             "description"}
REQUIRED = ("model", "languages", "tasks", "levels", "prune_fraction")
RESOURCE_KEYS = {"workers_per_cell": int, "cpus_per_worker": (int, float), "gpus_per_worker": (int, float)}
GRID_LEVEL_FIELDS = {"model", "task", "language", "seed", "levels", "prune_fraction"}  # not overridable per task


@dataclass(frozen=True)
class Resources:
    workers_per_cell: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0


@dataclass(frozen=True)
class PlannedCell:
    spec: CellSpec
    cost_hours: float  # expected device-hours for the whole IMP job


@dataclass(frozen=True)
class Skipped:
    task: str
    language: str
    reason: str


@dataclass
class Plan:
    name: str
    source: str  # the grid file
    cells: list[PlannedCell]  # longest first
    skipped: list[Skipped]
    resources: Resources
    grid: dict = field(repr=False, default_factory=dict)

    @property
    def total_cost_hours(self) -> float:
        return sum(c.cost_hours for c in self.cells)

    def cost_by_task(self) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        for c in self.cells:
            n, h = out.get(c.spec.task, (0, 0.0))
            out[c.spec.task] = (n + 1, h + c.cost_hours)
        return out


def grid_path(grid: str) -> Path:
    """A shipped grid by name, or a path to a YAML file."""
    if grid in SHIPPED:
        return Path(str(importlib_resources.files("orchestrator") / "grids" / f"{grid}.yaml"))
    path = Path(grid)
    if not path.is_file():
        raise LnsubError(f"grid {grid!r} is neither a shipped grid ({', '.join(SHIPPED)}) nor a readable file")
    return path


def _fail(source: str, where: str, why: str) -> typing.NoReturn:
    raise LnsubError(f"{source}: {where}: {why}")


def _check_type(source: str, where: str, value, expected) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        _fail(source, where, f"must be {names}, got {type(value).__name__} {value!r}")


def _spec_field_types() -> dict[str, tuple]:
    hints = typing.get_type_hints(CellSpec)
    out = {}
    for f in dataclasses.fields(CellSpec):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        kinds = tuple(a for a in args if a is not type(None))
        if float in kinds:
            kinds = kinds + (int,)  # 1 is a fine float
        out[f.name] = (kinds, type(None) in args)
    return out


def load_grid(grid: str) -> tuple[dict, str]:
    path = grid_path(grid)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise LnsubError(f"{source}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise LnsubError(f"{source}: {where}: malformed YAML ({getattr(e, 'problem', None) or e})") from e
    if not isinstance(data, dict):
        raise LnsubError(f"{source}: the grid must be a YAML mapping, got {type(data).__name__}")
    return data, source


def validate_grid(data: dict, source: str) -> None:
    unknown = set(data) - TOP_LEVEL
    if unknown:
        _fail(source, sorted(unknown)[0], f"unknown field (known: {', '.join(sorted(TOP_LEVEL))})")
    for key in REQUIRED:
        if key not in data:
            _fail(source, key, "missing required field")
    _check_type(source, "model", data["model"], str)
    _check_type(source, "languages", data["languages"], list)
    if not data["languages"]:
        _fail(source, "languages", "must list at least one language")
    known = set(PAPER_LANGUAGES) | set(TWINS)
    for i, lang in enumerate(data["languages"]):
        _check_type(source, f"languages[{i}]", lang, str)
        if lang not in known:
            _fail(source, f"languages[{i}]", f"unknown language {lang!r} (known: {', '.join(PAPER_LANGUAGES)} "
                                             f"and their syn- twins)")
    if len(set(data["languages"])) != len(data["languages"]):
        dup = next(x for x in data["languages"] if data["languages"].count(x) > 1)
        _fail(source, "languages", f"duplicate cells: {dup!r} is listed twice")
    _check_type(source, "tasks", data["tasks"], dict)
    if not data["tasks"]:
        _fail(source, "tasks", "must list at least one task")
    types = _spec_field_types()
    for task, overrides in data["tasks"].items():
        if task not in TASKS:
            _fail(source, f"tasks.{task}", f"unknown task (known: {', '.join(TASKS)})")
        overrides = {} if overrides is None else overrides
        _check_type(source, f"tasks.{task}", overrides, dict)
        for key, value in overrides.items():
            where = f"tasks.{task}.{key}"
            if key not in types or key in GRID_LEVEL_FIELDS:
                _fail(source, where, "unknown or grid-level field")
            kinds, nullable = types[key]
            if value is None and nullable:
                continue
            _check_type(source, where, value, kinds)
    seeds = data.get("seeds", [0])
    _check_type(source, "seeds", seeds, list)
    for i, s in enumerate(seeds):
        _check_type(source, f"seeds[{i}]", s, int)
    if len(set(seeds)) != len(seeds):
        _fail(source, "seeds", "duplicate cells: a seed is listed twice")
    _check_type(source, "levels", data["levels"], int)
    if data["levels"] < 0:
        _fail(source, "levels", f"must be >= 0, got {data['levels']}")
    _check_type(source, "prune_fraction", data["prune_fraction"], (float, int))
    if not 0 < data["prune_fraction"] < 1:
        _fail(source, "prune_fraction", f"must lie in (0, 1), got {data['prune_fraction']}")
    if data["levels"] * data["prune_fraction"] >= 1 - 1e-9:
        _fail(source, "levels", f"levels x prune_fraction = {data['levels'] * data['prune_fraction']:g}: "
                                f"the final sparsity must stay below 1")
    res = data.get("resources", {})
    _check_type(source, "resources", res, dict)
    for key, value in res.items():
        if key not in RESOURCE_KEYS:
            _fail(source, f"resources.{key}", f"unknown field (known: {', '.join(RESOURCE_KEYS)})")
        _check_type(source, f"resources.{key}", value, RESOURCE_KEYS[key])
        if value < 0 or (key == "workers_per_cell" and value < 1):
            _fail(source, f"resources.{key}", f"must be {'>= 1' if key == 'workers_per_cell' else '>= 0'}, got {value}")
    cost = data.get("cost_hours", {})
    _check_type(source, "cost_hours", cost, dict)
    for task, hours in cost.items():
        if task not in TASKS:
            _fail(source, f"cost_hours.{task}", "unknown task")
        _check_type(source, f"cost_hours.{task}", hours, (int, float))
        if hours < 0:
            _fail(source, f"cost_hours.{task}", f"must be >= 0, got {hours}")
    if "name" in data:
        _check_type(source, "name", data["name"], str)


def plan(grid: str, **resource_overrides) -> Plan:
    """Validate a grid and expand it into cells; unavailable (task, language) pairs are listed, not errors."""
    data, source = load_grid(grid)
    validate_grid(data, source)
    res = {**data.get("resources", {}), **{k: v for k, v in resource_overrides.items() if v is not None}}
    resources = Resources(**res)
    cells, skipped = [], []
    for task, overrides in data["tasks"].items():
        overrides = overrides or {}
        for language in data["languages"]:
            reason = TASKS[task].missing_reason(language)
            if reason:
                skipped.append(Skipped(task, language, reason))
                continue
            for seed in data.get("seeds", [0]):
                try:
                    spec = make_spec(task, language, model=data["model"], seed=seed, levels=data["levels"],
                                     prune_fraction=float(data["prune_fraction"]), **overrides)
                except LnsubError as e:
                    raise LnsubError(f"{source}: tasks.{task}: {e}") from None
                cost = float(data.get("cost_hours", {}).get(task, 1.0))
                cells.append(PlannedCell(spec, cost))
    # long cells first, so the sweep's makespan is not set by a long cell started last
    cells.sort(key=lambda c: (-c.cost_hours, c.spec.task, c.spec.language, c.spec.seed))
    if len({c.spec.id for c in cells}) != len(cells):
        raise LnsubError(f"{source}: duplicate cells")
    name = data.get("name") or Path(source).stem
    return Plan(name=name, source=source, cells=cells, skipped=skipped, resources=resources, grid=data)
