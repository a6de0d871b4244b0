"""A cell of the grid: one IMP job for (model, task, language, seed, schedule), and its stable id.

The id hashes the canonical spec with every default resolved and a schema
version, so the same cell always lands in the same folder, MLflow run and Ray
trial, and changing a default changes the id (open_lth reuses stale results
there; we do not). Every way into a spec (make_spec, from_dict, a grid) goes
through `CellSpec.from_values`: values take their field's canonical type
(trainables.ids.coerce) and pass `validate`, so a cell has one id however its
numbers are spelt, and a grid refuses exactly what make_spec refuses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.ids import FieldError, canonical, coerce, field_types, stable_id
from lnsub.trainables.providers import data_provider, model_provider
from lnsub.trainables.tasks import TASKS, get_task
from lnsub.trainables.tasks.base import PAPER_LANGUAGES

# 2: values are canonical by field type (epochs 3 -> 3.0), so ids differ from schema 1's
# 3: valid_documents (MLM's validation carved from Wikipedia's only split); MLM blocks run across documents
#    and validation masks are drawn per block from the seed, so MLM results differ from schema 2's
# 4: testbed_pretrain_steps (a grid may pretrain its tiny model for fewer or more steps than the default)
# 5: group_by_length, lr_schedule, compile (how a round is batched, scheduled and compiled; defaults as before)
# 6: settle_stop (stop a round once the mask pruning would take has settled; None, the default, never stops);
#    method, sparsity_pattern, calibration_samples (one-shot discovery beside IMP; IMP cells: imp, unstructured, null)
# 7: data_revision (a provider's data names its generator's configuration hash, as model_revision names the model's:
#    the testbed's NER data changed while its models did not)
SCHEMA = 7
METHODS = ("imp", "magnitude", "wanda", "sparsegpt")  # IMP with rewinding, or one-shot from a calibration set
CALIBRATED = ("wanda", "sparsegpt")  # the one-shot methods that read a calibration set
DEFAULT_CALIBRATION_SAMPLES = 128  # sequences per language: Wanda's and SparseGPT's papers
CARVED = ("mlm", "clm")  # tasks on Wikipedia text, whose validation documents are carved from its one split
LR_SCHEDULES = ("per_round", "whole_run")
DEFAULT_MODEL = "testbed"  # the synthetic testbed's tiny multilingual BERT (a provider's model: trainables.providers)
MAX_SEED = 2**32  # numpy's and Accelerate's seeds are 32-bit

# docs/method.md, discovery phase: AdamW eps 1e-8, no weight decay, max grad norm 1.0, linear decay, no warm-up.
PAPER_DEFAULTS: dict[str, dict] = {
    "ner": {"lr": 2e-5, "batch_size": 32, "max_length": 128, "epochs": 3.0, "train_size": 20_000,
            "valid_size": 10_000},
    "xnli": {"lr": 5e-5, "batch_size": 32, "max_length": 128, "epochs": 3.0},
    "mlm": {"lr": 5e-5, "batch_size": 16, "max_length": 512, "steps": 10_000, "train_size": 1_600_000,
            "valid_size": 30_000, "valid_documents": 0.02},
    # one-shot on a decoder: 2048-token windows (both papers' calibration length), 2% of documents held out as MLM's
    "clm": {"max_length": 2048, "batch_size": 8, "train_size": 5_000, "valid_size": 1_000, "valid_documents": 0.02},
    "xnli-zeroshot": {"max_length": 256, "batch_size": 16, "train_size": 5_000},
}
# wikimedia/wikipedia has a single train split: MLM validation blocks come from the 2% of its documents
# that sha256(id) holds out (tasks/mlm.py), disjoint from training. 30k of 1.6M blocks is about 2%, so
# both splits fill after reading about the same documents. The testbed ships a validation split.


@dataclass(frozen=True)
class CellSpec:
    model: str  # hub id, local folder, or a provider's model name ("testbed", "testbed-decoupled", "testbed-mt5")
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
    valid_documents: float | None = None  # MLM: share of train documents held out as validation; None = own split
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    group_by_length: bool = False  # batches from length-sorted mega-batches (HF group_by_length), per seed/level/epoch
    lr_schedule: str = "per_round"  # linear decay to 0 within each round (the paper); "whole_run": the authors' code
    compile: bool = False  # torch.compile the model in place (nn.Module.compile: parameter names unchanged)
    settle_stop: float | None = None  # end a round once its snapshot mask has this Jaccard with the one before
    testbed_seed: int = 0  # the synthetic testbed and tiny model, when model or language is synthetic
    testbed_noise: float = 0.0
    testbed_anchor_fraction: float = 0.0
    testbed_pretrain_steps: int | None = None  # the tiny model's pretraining steps; None: its config's default
    method: str = "imp"  # discovery: IMP (trained, rewound), or one-shot magnitude / wanda / sparsegpt (no training)
    sparsity_pattern: str = "unstructured"  # one-shot: or N:M such as "2:4" (then one level at sparsity 1 - N/M)
    calibration_samples: int | None = None  # wanda/sparsegpt: sequences of max_length tokens of the cell's language
    model_revision: str = ""  # resolved: a provider model's configuration hash (its revision)
    data_revision: str = ""  # resolved: a provider's data's configuration hash ("" for the Hub's or --data-dir's)

    @property
    def id(self) -> str:
        return stable_id(self, SCHEMA, prefix=f"{self.task}-{self.language}-")

    @property
    def sparsities(self) -> list[float]:
        return [round(k * self.prune_fraction, 6) for k in range(self.levels + 1)]

    def to_dict(self) -> dict:
        return canonical(self)

    @classmethod
    def coerce(cls, values: dict, where: str = "") -> dict:
        """`values` in canonical form: float fields hold floats, int fields ints (3.0 -> 3, 3.5 refused)."""
        return coerce(cls, values, where)

    @classmethod
    def from_values(cls, **values) -> "CellSpec":
        """A validated spec from field values however their numbers are spelt: the one way specs are built."""
        where = f"cell {values.get('task')}/{values.get('language')}: "
        spec = cls(**cls.coerce(values, where))
        validate(spec)
        return spec

    @classmethod
    def from_dict(cls, d: dict) -> "CellSpec":
        return cls.from_values(**d)


def resolve_values(task: str, overrides: dict) -> dict:
    """docs/method.md's defaults for the task with `overrides` applied; a given steps (or epochs) replaces the other."""
    values = {**PAPER_DEFAULTS.get(task, {}), **overrides}
    if values.get("steps") is not None and "epochs" not in overrides:
        values.pop("epochs", None)
    if values.get("epochs") is not None and "steps" not in overrides:
        values.pop("steps", None)
    return values


def make_spec(task: str, language: str, model: str = DEFAULT_MODEL, **overrides) -> CellSpec:
    """A validated spec with docs/method.md's defaults for the task, overrides applied, everything resolved
    (a provider's model gets its configuration hash as `model_revision`)."""
    t = get_task(task)
    reason = t.missing_reason(language)
    if reason:
        raise LnsubError(f"cell {task}/{language} does not exist: {reason}")
    values = resolve_values(task, overrides)
    if values.get("method") in CALIBRATED and values.get("calibration_samples") is None:
        values["calibration_samples"] = DEFAULT_CALIBRATION_SAMPLES
    if data_provider(language) is not None and "valid_documents" not in overrides:
        values.pop("valid_documents", None)  # a provider's data ships a validation split: use it as is
    spec = CellSpec.from_values(model=model, task=task, language=language, **values)
    provider = model_provider(spec.model)
    if provider is not None:
        if provider.tasks is not None and task not in provider.tasks:
            raise LnsubError(f"cell {task}/{language}: {model} is for {', '.join(provider.tasks)} only")
        spec = dataclasses.replace(spec, model_revision=provider.revision(spec))
    data = data_provider(language)
    if data is not None and data.revision is not None:
        spec = dataclasses.replace(spec, data_revision=data.revision(spec))
    return spec


POSITIVE = ("steps", "epochs", "lr", "batch_size", "max_length", "grad_accum", "max_grad_norm", "adam_eps",
            "train_size", "valid_size", "testbed_pretrain_steps", "calibration_samples")
NON_NEGATIVE = ("seed", "levels", "weight_decay", "warmup_steps", "testbed_seed")
BELOW_ONE = ("testbed_noise", "testbed_anchor_fraction")  # in [0, 1)


def validate(spec: CellSpec) -> None:
    """Refuse a spec that cannot run (FieldError naming the field); grids are checked by this same function."""
    def bad(field: str, why: str):
        raise FieldError(field, why, where=f"cell {spec.task}/{spec.language}: ")

    # task and language name folders and ids (cells/<task>-<language>-<hash>): only known names, never a path
    if spec.task not in TASKS:
        bad("task", f"unknown task {spec.task!r} (known: {', '.join(TASKS)})")
    if spec.language not in PAPER_LANGUAGES and data_provider(spec.language) is None:
        bad("language", f"unknown language {spec.language!r} (known: {', '.join(PAPER_LANGUAGES)} and their syn- twins)")
    if not 0 <= spec.seed < MAX_SEED:
        bad("seed", f"must lie in [0, 2**32), got {spec.seed}")

    for name, (kinds, _) in field_types(CellSpec).items():
        value = getattr(spec, name)
        if float in kinds and value is not None and not math.isfinite(value):
            bad(name, f"must be a finite number, got {value}")
    validate_discovery(spec, bad)
    for name in POSITIVE:
        if getattr(spec, name) is not None and getattr(spec, name) <= 0:
            bad(name, f"{name} must be positive, got {getattr(spec, name)}")
    for name in NON_NEGATIVE:
        if getattr(spec, name) < 0:
            bad(name, f"{name} must be >= 0, got {getattr(spec, name)}")
    for name in BELOW_ONE:
        if not 0 <= getattr(spec, name) < 1:
            bad(name, f"must lie in [0, 1), got {getattr(spec, name)}")
    if not 0 < spec.prune_fraction < 1:
        bad("prune_fraction", f"must lie in (0, 1), got {spec.prune_fraction}")
    if spec.levels >= 1 / spec.prune_fraction + 1 or round(spec.levels * spec.prune_fraction, 9) >= 1:
        bad("levels", f"levels x prune_fraction (the final sparsity) must stay below 1, "
                      f"got {spec.levels} x {spec.prune_fraction:g}")
    if not spec.model:
        bad("model", "must name a model (a hub id, a local folder or testbed)")
    if spec.valid_documents is not None and (spec.task not in CARVED or not 0 < spec.valid_documents < 1):
        bad("valid_documents", f"only mlm and clm carve a validation split, from a share in (0, 1) of its documents; "
                               f"got {spec.valid_documents} for {spec.task}")
    if spec.mixed_precision not in ("no", "bf16", "fp16"):
        bad("mixed_precision", f"must be no, bf16 or fp16, got {spec.mixed_precision!r}")
    if spec.settle_stop is not None and not 0 < spec.settle_stop <= 1:
        bad("settle_stop", f"must lie in (0, 1] (a Jaccard between successive snapshot masks), got {spec.settle_stop}")
    if spec.lr_schedule not in LR_SCHEDULES:
        bad("lr_schedule", f"must be {' or '.join(LR_SCHEDULES)}, got {spec.lr_schedule!r}")


def validate_discovery(spec: CellSpec, bad) -> None:
    """IMP trains (exactly one of steps / epochs); one-shot methods train nothing and score a task that needs no
    training; N:M patterns fix the sparsity (one level at 1 - N/M); only calibrated methods read a calibration set."""
    if spec.method not in METHODS:
        bad("method", f"must be {', '.join(METHODS)}, got {spec.method!r}")
    task = TASKS.get(spec.task)
    if spec.method == "imp":
        if task is not None and not task.trainable:
            bad("method", f"task {spec.task} is scored without training: discover its masks one-shot "
                          f"(magnitude, wanda or sparsegpt)")
        if (spec.steps is None) == (spec.epochs is None):
            bad("steps/epochs", "must give exactly one of the two")
        if spec.sparsity_pattern != "unstructured":
            bad("sparsity_pattern", f"IMP prunes unstructured, got {spec.sparsity_pattern!r}")
    else:
        if task is not None and task.trainable:
            bad("method", f"one-shot {spec.method} needs a task scored without training (clm, xnli-zeroshot), "
                          f"not {spec.task}")
        if spec.steps is not None or spec.epochs is not None:
            bad("steps/epochs", f"one-shot {spec.method} trains nothing: give neither")
        if spec.levels < 1:
            bad("levels", f"one-shot {spec.method} prunes at levels 1..levels; give at least 1")
    if spec.sparsity_pattern != "unstructured":
        n_m = spec.sparsity_pattern.split(":")
        if len(n_m) != 2 or not all(x.isdigit() for x in n_m) or not 0 < int(n_m[0]) < int(n_m[1]):
            bad("sparsity_pattern", f"must be unstructured or N:M with 0 < N < M (e.g. 2:4), got {spec.sparsity_pattern!r}")
        sparsity = 1 - int(n_m[0]) / int(n_m[1])
        if spec.levels != 1 or abs(spec.prune_fraction - sparsity) > 1e-9:
            bad("sparsity_pattern", f"{spec.sparsity_pattern} is {sparsity:g} sparsity: give levels 1 and "
                                    f"prune_fraction {sparsity:g}, got {spec.levels} and {spec.prune_fraction:g}")
    if (spec.method in CALIBRATED) != (spec.calibration_samples is not None):
        bad("calibration_samples", f"wanda and sparsegpt read a calibration set, other methods none; "
                                   f"got {spec.calibration_samples} for {spec.method}")
