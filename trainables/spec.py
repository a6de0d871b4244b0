"""A cell of the grid: one IMP job for (model, task, language, seed, schedule), and its stable id.

The id hashes the canonical spec with every default resolved and a schema
version, so the same cell always lands in the same folder, MLflow run and Ray
trial, and changing a default changes the id (open_lth reuses stale results
there; we do not).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trainables.errors import LnsubError
from trainables.ids import canonical, stable_id

SCHEMA = 1
TESTBED_MODEL = "testbed"  # the tiny multilingual BERT of the synthetic testbed

# METHOD.md, discovery phase: AdamW eps 1e-8, no weight decay, max grad norm 1.0, linear decay, no warm-up.
PAPER_DEFAULTS: dict[str, dict] = {
    "ner": {"lr": 2e-5, "batch_size": 32, "max_length": 128, "epochs": 3.0, "train_size": 20_000,
            "valid_size": 10_000},
    "xnli": {"lr": 5e-5, "batch_size": 32, "max_length": 128, "epochs": 3.0},
    "mlm": {"lr": 5e-5, "batch_size": 16, "max_length": 512, "steps": 10_000, "train_size": 1_600_000,
            "valid_size": 30_000},
}


@dataclass(frozen=True)
class CellSpec:
    model: str  # hub id, local folder, or "testbed"
    task: str
    language: str
    seed: int = 0
    levels: int = 9  # pruning rounds; levels 0..levels are trained, level k has sparsity k * prune_fraction
    prune_fraction: float = 0.1  # of the ORIGINAL prunable weights, removed each round
    steps: int | None = None  # per round; exactly one of steps / epochs
    epochs: float | None = None
    lr: float = 5e-5
    batch_size: int = 32  # global batch, across workers and accumulation
    max_length: int = 128
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    train_size: int | None = None  # examples after preprocessing (MLM: blocks); None = all
    valid_size: int | None = None
    data_dir: str | None = None  # local copies in the hub schema; None = the Hub (or the testbed for syn-*)
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    testbed_seed: int = 0  # the synthetic testbed and tiny model, when model or language is synthetic
    testbed_noise: float = 0.0
    testbed_anchor_fraction: float = 0.0
    model_revision: str = ""  # resolved: the tiny model's config hash for "testbed"

    @property
    def id(self) -> str:
        return stable_id(self, SCHEMA, prefix=f"{self.task}-{self.language}-")

    @property
    def sparsities(self) -> list[float]:
        return [round(k * self.prune_fraction, 6) for k in range(self.levels + 1)]

    def to_dict(self) -> dict:
        return canonical(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CellSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise LnsubError(f"unknown cell field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def testbed_config(self):
        from trainables.testbed.generate import TestbedConfig
        from trainables.testbed.tinybert import TinyBertConfig

        return TinyBertConfig(testbed=TestbedConfig(seed=self.testbed_seed, noise=self.testbed_noise,
                                                    anchor_fraction=self.testbed_anchor_fraction))


def make_spec(task: str, language: str, model: str = TESTBED_MODEL, **overrides) -> CellSpec:
    """A validated spec with METHOD.md's defaults for the task, overrides applied, everything resolved."""
    from trainables.tasks import get_task

    t = get_task(task)
    reason = t.missing_reason(language)
    if reason:
        raise LnsubError(f"cell {task}/{language} does not exist: {reason}")
    values = {**PAPER_DEFAULTS.get(task, {}), **overrides}
    if values.get("steps") is not None and "epochs" not in overrides:
        values.pop("epochs", None)
    if values.get("epochs") is not None and "steps" not in overrides:
        values.pop("steps", None)
    spec = CellSpec(model=model, task=task, language=language, **values)
    validate(spec)
    if spec.model == TESTBED_MODEL:
        spec = dataclasses.replace(spec, model_revision=spec.testbed_config().id)
    return spec


def validate(spec: CellSpec) -> None:
    def bad(field: str, why: str):
        raise LnsubError(f"cell {spec.task}/{spec.language}: {field} {why}")

    if (spec.steps is None) == (spec.epochs is None):
        bad("steps/epochs", "must give exactly one of the two")
    if spec.steps is not None and spec.steps <= 0:
        bad("steps", f"must be positive, got {spec.steps}")
    if spec.epochs is not None and spec.epochs <= 0:
        bad("epochs", f"must be positive, got {spec.epochs}")
    if not 0 < spec.prune_fraction < 1:
        bad("prune_fraction", f"must lie in (0, 1), got {spec.prune_fraction}")
    if spec.levels < 0 or spec.levels * spec.prune_fraction >= 1 + 1e-9:
        bad("levels", f"x prune_fraction must stay below 1 (got {spec.levels} x {spec.prune_fraction})")
    for name in ("lr", "batch_size", "max_length", "grad_accum"):
        if getattr(spec, name) <= 0:
            bad(name, f"must be positive, got {getattr(spec, name)}")
    if spec.mixed_precision not in ("no", "bf16", "fp16"):
        bad("mixed_precision", f"must be no, bf16 or fp16, got {spec.mixed_precision!r}")
