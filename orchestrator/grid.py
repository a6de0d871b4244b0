"""Grid files -> a validated plan of cells: plan first, then launch.

A grid is YAML: a model, languages, tasks (each with hyperparameter overrides
of docs/method.md's defaults), seeds, the pruning schedule, resources per cell and
the expected cost per cell. Everything is checked before anything starts; a
problem is one line naming the file and the field.
"""

from __future__ import annotations

import itertools
import math
import typing
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path

import yaml

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.ids import FieldError, coerce, field_types
from lnsub.trainables.spec import (CALIBRATED, DEFAULT_CALIBRATION_SAMPLES, MAX_SEED, METHODS, CellSpec, make_spec,
                                   resolve_values)
from lnsub.trainables.tasks import TASKS
from lnsub.trainables.tasks.base import PAPER_LANGUAGES
from lnsub.analysis.sweeps import PlannedCell, Resources, check_name
from lnsub.trainables.providers import data_provider, provider_languages

SHIPPED = ("smoke", "science", "science-control", "science-mt5", "full-synthetic", "full", "rehearsal", "smoke-mt5", "full-mt5",
           "oneshot-decoder", "oneshot-decoder-control", "oneshot-qwen", "xlmr", "rehearsal-decoder")
TOP_LEVEL = {"name", "model", "languages", "tasks", "seeds", "levels", "prune_fraction", "resources", "cost_hours",
             "description", "study", "methods", "sparsity_patterns"}
STUDY_FIELDS = {"transfer_levels", "transfer_tasks", "control", "steps"}
STUDY_STEPS = ("tickets", "analyze", "transfer", "similarity", "oneshot")  # what `lnsub study` runs, in order
REQUIRED = ("model", "languages", "tasks", "levels", "prune_fraction")
GRID_LEVEL_FIELDS = {"model", "task", "language", "seed", "levels", "prune_fraction", "method", "sparsity_pattern"}  # not overridable per task
MAX_GRID_BYTES = 1 << 20
# What a grid may expand to and ask of a cluster; each refused in one line before anything is written.
MAX_GRID_NODES = 20_000  # YAML nodes after aliases are expanded (a 1 kB alias bomb expands to millions)
MAX_SEEDS, MAX_CELLS = 100, 10_000
MAX_RESOURCES = {"workers_per_cell": 1024, "cpus_per_worker": 256, "gpus_per_worker": 16}


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
        return Path(str(importlib_resources.files("lnsub.orchestrator") / "grids" / f"{grid}.yaml"))
    path = Path(grid)
    if path.is_dir():
        raise LnsubError(f"grid {grid!r} is a directory; give a YAML file or a shipped grid ({', '.join(SHIPPED)})")
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
        got = "null" if value is None else type(value).__name__
        _fail(source, where, f"must be {names}, got {got} {value!r}")


def _check_number(source: str, where: str, value, minimum: float) -> None:
    _check_type(source, where, value, (int, float))
    if not math.isfinite(value):
        _fail(source, where, f"must be a finite number, got {value}")
    if value < minimum:
        _fail(source, where, f"must be >= {minimum}, got {value}")


def _read_text(path: Path, source: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LnsubError(f"{source}: cannot read: {e.strerror}") from e
    if len(raw) > MAX_GRID_BYTES:
        raise LnsubError(f"{source}: {len(raw):,} bytes is not a grid (a grid is a small YAML file)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LnsubError(f"{source}: not UTF-8 text (byte {e.start}); save the grid as UTF-8 YAML") from None
    if "\x00" in text:
        raise LnsubError(f"{source}: a binary file, not YAML text")
    return text


def load_grid(grid: str) -> tuple[dict, str]:
    path = grid_path(grid)
    source = str(path)
    text = _read_text(path, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        why = " ".join(str(getattr(e, "problem", None) or e).split())
        raise LnsubError(f"{source}: {where}: malformed YAML ({why})") from None
    except RecursionError:
        raise LnsubError(f"{source}: YAML nested too deeply") from None
    if data is None:
        raise LnsubError(f"{source}: the grid is empty (see orchestrator/grids/smoke.yaml for the shape)")
    _check_size(data, source)
    if not isinstance(data, dict):
        raise LnsubError(f"{source}: the grid must be a YAML mapping, got {type(data).__name__}")
    return data, source


def _check_size(data, source: str) -> None:
    """Refuse a grid whose YAML expands (through aliases) to more than MAX_GRID_NODES values, before any copy."""
    budget, stack = MAX_GRID_NODES, [data]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise LnsubError(f"{source}: the grid expands to more than {MAX_GRID_NODES:,} YAML values (aliases "
                             f"repeat what they name); a grid is a small file")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and len(node) > 10_000:
            raise LnsubError(f"{source}: a value of {len(node):,} characters; a grid is a small file")


def _check_languages(data: dict, source: str) -> None:
    _check_type(source, "languages", data["languages"], list)
    if not data["languages"]:
        _fail(source, "languages", "must list at least one language")
    known = set(PAPER_LANGUAGES) | set(provider_languages())
    for i, lang in enumerate(data["languages"]):
        _check_type(source, f"languages[{i}]", lang, str)
        if lang not in known:
            _fail(source, f"languages[{i}]", f"unknown language {lang!r} (known: {', '.join(PAPER_LANGUAGES)} "
                                             f"and their syn- twins)")
    if len(set(data["languages"])) != len(data["languages"]):
        dup = next(x for x in data["languages"] if data["languages"].count(x) > 1)
        _fail(source, "languages", f"duplicate cells: {dup!r} is listed twice")


def _check_seeds(data: dict, source: str) -> None:
    seeds = data.get("seeds", [0])
    _check_type(source, "seeds", seeds, list)
    canonical = []
    for i, seed in enumerate(seeds):
        try:
            canonical.append(CellSpec.coerce({"seed": seed})["seed"])
        except FieldError as e:
            _fail(source, f"seeds[{i}]", e.why)
    if len(set(canonical)) != len(canonical):
        _fail(source, "seeds", "duplicate cells: a seed is listed twice")
    if len(canonical) > MAX_SEEDS:
        _fail(source, "seeds", f"{len(canonical)} seeds; at most {MAX_SEEDS}")
    for i, seed in enumerate(canonical):
        if not 0 <= seed < MAX_SEED:
            _fail(source, f"seeds[{i}]", f"must lie in [0, 2**32), got {seed}")


def _check_tasks(data: dict, source: str) -> None:
    """Each task's overrides pass the very checks make_spec applies (CellSpec.from_values), named by grid path."""
    _check_type(source, "tasks", data["tasks"], dict)
    if not data["tasks"]:
        _fail(source, "tasks", "must list at least one task")
    for task, overrides in data["tasks"].items():
        if task not in TASKS:
            _fail(source, f"tasks.{task}", f"unknown task (known: {', '.join(TASKS)})")
        overrides = {} if overrides is None else overrides
        _check_type(source, f"tasks.{task}", overrides, dict)
        for key in overrides:
            if key in GRID_LEVEL_FIELDS or key not in field_types(CellSpec):
                _fail(source, f"tasks.{task}.{key}", "unknown or grid-level field")
        for method, pattern in discoveries(data):
            grid_level = {"model": data["model"], "levels": data["levels"], "prune_fraction": data["prune_fraction"],
                          "method": method, "sparsity_pattern": pattern}
            values = resolve_values(task, for_method(overrides, method))
            if method in CALIBRATED:
                values.setdefault("calibration_samples", DEFAULT_CALIBRATION_SAMPLES)
            try:
                CellSpec.from_values(task=task, language=data["languages"][0], **grid_level, **values)
            except FieldError as e:
                field = e.field.split("/")[0]
                _fail(source, field if field in GRID_LEVEL_FIELDS else f"tasks.{task}.{e.field}", e.why)


def for_method(overrides: dict, method: str) -> dict:
    """A task's overrides for one method: calibration_samples only where the method reads a calibration set."""
    return overrides if method in CALIBRATED else {k: v for k, v in overrides.items() if k != "calibration_samples"}


def discoveries(data: dict) -> list[tuple[str, str]]:
    """The grid's (method, sparsity pattern) pairs: `methods` x `sparsity_patterns` (default: IMP, unstructured)."""
    return [(m, p) for m in data.get("methods", ["imp"]) for p in data.get("sparsity_patterns", ["unstructured"])]


def _check_discovery(data: dict, source: str) -> None:
    """`methods` and `sparsity_patterns`: non-empty lists of known names, each once."""
    for key, known, default in (("methods", METHODS, "imp"), ("sparsity_patterns", None, "unstructured")):
        values = data.get(key, [default])
        _check_type(source, key, values, list)
        if not values:
            _fail(source, key, "must list at least one")
        for i, value in enumerate(values):
            _check_type(source, f"{key}[{i}]", value, str)
            if known is not None and value not in known:
                _fail(source, f"{key}[{i}]", f"unknown method {value!r} (known: {', '.join(known)})")
        if len(set(values)) != len(values):
            _fail(source, key, "duplicate cells: a value is listed twice")


def _check_resources_and_cost(data: dict, source: str) -> None:
    res = data.get("resources", {})
    _check_type(source, "resources", res, dict)
    for key, value in res.items():
        if key not in field_types(Resources):
            _fail(source, f"resources.{key}", f"unknown field (known: {', '.join(field_types(Resources))})")
        try:
            value = coerce(Resources, {key: value})[key]
        except FieldError as e:
            _fail(source, f"resources.{key}", e.why)
        _check_number(source, f"resources.{key}", value, 1 if key == "workers_per_cell" else 0)
        if value > MAX_RESOURCES[key]:
            _fail(source, f"resources.{key}", f"at most {MAX_RESOURCES[key]}, got {value}")
    cost = data.get("cost_hours", {})
    _check_type(source, "cost_hours", cost, dict)
    for task, hours in cost.items():
        if task not in TASKS:
            _fail(source, f"cost_hours.{task}", "unknown task")
        _check_number(source, f"cost_hours.{task}", hours, 0)


def _check_study(data: dict, source: str) -> None:
    study = data.get("study", {})
    _check_type(source, "study", study, dict)
    for key in study:
        if key not in STUDY_FIELDS:
            _fail(source, f"study.{key}", f"unknown field (known: {', '.join(sorted(STUDY_FIELDS))})")
    steps = study.get("steps", [])
    _check_type(source, "study.steps", steps, list)
    for i, step in enumerate(steps):
        if step not in STUDY_STEPS:
            _fail(source, f"study.steps[{i}]", f"unknown step {step!r} (known: {', '.join(STUDY_STEPS)})")
    levels = study.get("transfer_levels", [])
    _check_type(source, "study.transfer_levels", levels, list)
    for i, level in enumerate(levels):
        _check_type(source, f"study.transfer_levels[{i}]", level, int)
        if not 1 <= level <= data["levels"]:
            _fail(source, f"study.transfer_levels[{i}]", f"must lie in 1..{data['levels']} (the grid's levels), "
                                                        f"got {level}")
    tasks = study.get("transfer_tasks", [])
    _check_type(source, "study.transfer_tasks", tasks, list)
    for i, task in enumerate(tasks):
        if task not in data["tasks"]:
            _fail(source, f"study.transfer_tasks[{i}]", f"{task!r} is not one of the grid's tasks")
    if "control" in study:
        _check_type(source, "study.control", study["control"], str)


def validate_grid(data: dict, source: str) -> None:
    unknown = set(data) - TOP_LEVEL
    if unknown:
        _fail(source, sorted(unknown, key=str)[0], f"unknown field (known: {', '.join(sorted(TOP_LEVEL))})")
    for key in REQUIRED:
        if key not in data:
            _fail(source, key, "missing required field")
    if "name" in data:
        check_name(data["name"], f"{source}: name")
    _check_type(source, "model", data["model"], str)
    _check_languages(data, source)
    _check_seeds(data, source)
    _check_discovery(data, source)
    _check_tasks(data, source)
    _check_resources_and_cost(data, source)
    _check_study(data, source)
    cells = len(data["languages"]) * len(data["tasks"]) * len(data.get("seeds", [0])) * len(discoveries(data))
    if cells > MAX_CELLS:
        _fail(source, "languages x tasks x seeds x methods x patterns", f"{cells:,} cells; at most {MAX_CELLS:,} in one grid")


def _resources(grid_resources: dict, overrides: dict) -> Resources:
    """The grid's resources with the command line's overrides (checked like the grid's), in canonical types."""
    for key, value in overrides.items():
        low = 1 if key == "workers_per_cell" else 0
        if value is not None and (not math.isfinite(value) or not low <= value <= MAX_RESOURCES[key]):
            raise LnsubError(f"--{key.replace('_', '-')} must lie in [{low}, {MAX_RESOURCES[key]}], got {value}")
    res = {**grid_resources, **{k: v for k, v in overrides.items() if v is not None}}
    return Resources(**coerce(Resources, res, "resources."))


def check_data_dir(data_dir: str | None) -> str | None:
    """--data-dir as an absolute path (cells run in other folders and on other nodes), or None."""
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise LnsubError(f"--data-dir {data_dir!r} is not a folder (expected DIR/<task>/<language>/<split>.jsonl)")
    return str(path.resolve())


def is_relative_path(value: str) -> bool:
    """A grid's model or data_dir written as a path relative to this machine (./x, ../x, ~/x).

    Absolute paths are left as written, unchecked: on a cluster they may name a folder only the
    worker nodes mount."""
    return value.startswith(("./", "../", "~"))


def resolve_paths(data: dict, source: str) -> dict:
    """The grid with its relative model folder and task data_dirs made absolute (cells run in other
    folders and on other nodes), each checked to exist here; relative means to the current folder."""
    data = {**data, "tasks": {t: dict(o or {}) for t, o in data["tasks"].items()}}
    if is_relative_path(data["model"]):
        path = Path(data["model"]).expanduser().resolve()
        if not (path / "config.json").is_file():
            hint = " (build it here with: lnsub rehearsal)" if "rehearsal" in str(path) else ""
            _fail(source, "model", f"{data['model']!r} is not a model folder: no {path / 'config.json'}{hint}")
        data["model"] = str(path)
    for task, overrides in data["tasks"].items():
        if isinstance(overrides.get("data_dir"), str) and is_relative_path(overrides["data_dir"]):
            try:
                overrides["data_dir"] = check_data_dir(overrides["data_dir"])
            except LnsubError as e:
                _fail(source, f"tasks.{task}.data_dir", str(e).removeprefix("--data-dir "))
    return data


def plan(grid: str, data_dir: str | None = None, **resource_overrides) -> Plan:
    """Validate a grid and expand it into cells; unavailable (task, language) pairs are listed, not errors.

    `data_dir` (the command line's --data-dir) becomes every real-language cell's data_dir, over any
    the grid gives, so it is part of those cells' specs and ids; synthetic twins read the testbed.
    """
    data_dir = check_data_dir(data_dir)
    data, source = load_grid(grid)
    validate_grid(data, source)
    data = resolve_paths(data, source)
    name = data.get("name") or check_name(Path(source).stem, f"{source}: name (from the file name; add name:)")
    resources = _resources(data.get("resources", {}), resource_overrides)
    cells, skipped = [], []
    for task, overrides in data["tasks"].items():
        overrides = overrides or {}
        for language in data["languages"]:
            reason = TASKS[task].missing_reason(language)
            if reason:
                skipped.append(Skipped(task, language, reason))
                continue
            local = {"data_dir": data_dir} if data_dir is not None and data_provider(language) is None else {}
            for seed, (method, pattern) in itertools.product(data.get("seeds", [0]), discoveries(data)):
                try:
                    spec = make_spec(task, language, model=data["model"], seed=seed, levels=data["levels"],
                                     prune_fraction=data["prune_fraction"], method=method, sparsity_pattern=pattern,
                                     **{**for_method(overrides, method), **local})
                except LnsubError as e:
                    raise LnsubError(f"{source}: tasks.{task}: {e}") from None
                cost = float(data.get("cost_hours", {}).get(task, 1.0))
                cells.append(PlannedCell(spec, cost))
    # long cells first, so the sweep's makespan is not set by a long cell started last
    cells.sort(key=lambda c: (-c.cost_hours, c.spec.task, c.spec.language, c.spec.seed, c.spec.method,
                              c.spec.sparsity_pattern))
    if len({c.spec.id for c in cells}) != len(cells):
        raise LnsubError(f"{source}: duplicate cells")
    return Plan(name=name, source=source, cells=cells, skipped=skipped, resources=resources, grid=data)
