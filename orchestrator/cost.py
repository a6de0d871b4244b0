"""What a grid costs on a device: FLOPs per example x examples per round x rounds, over peak x MFU.

The FLOP count (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1; Chowdhery et
al. 2022, "PaLM", appendix B, whose model-FLOPs-utilisation accounting this follows): a matmul of an
example's s positions through N weights costs 2 N s in the forward pass, attention's scores and weighted
sum 4 L d_attn s^2 over L layers, and the backward pass twice the forward (the inputs' gradients and the
weights'). An encoder example thus costs 6 N s + 12 L d_attn s^2 to train (PaLM's 6N + 12 L H Q T per
token) and a third of that to evaluate, plus its task head (MLM: the prediction head on every position
or on the masked ones only). Embedding look-ups, norms, softmax, activations and the optimizer are no
FLOPs here: the MFU below pays for them. `s` is the width each example is computed at: max_length when
every example is padded to it (the authors' configuration), its batch's longest example otherwise
(trainables.padding; the lengths of orchestrator/rehearsal/lengths.py, whose assumptions these numbers
inherit). Attention reads E[s^2], not E[s]^2.

A round's time on a device: max(GPU time, host time) + evaluation + checkpoints, where GPU time is the
FLOPs over peak x MFU plus the optimizer step's memory traffic over the memory bandwidth, and host time
the kernels a step launches times a host cost per kernel (eager PyTorch: a small batch waits for its
launches, not for the GPU). A checkpoint costs training the copy of its state into host memory; the write
runs behind the next steps (trainables.checkpointing) and costs only what it overruns them by. Every
constant says where it comes from; `bench/gpu_check.sh` measures what a GPU does instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from lnsub.orchestrator.grid import Plan
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.padding import POLICIES, epoch_batches, width
from lnsub.trainables.providers import data_provider, model_provider
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.tasks.base import PAPER_LANGUAGES
from lnsub.trainables.tasks.mlm import MLM_PROBABILITY
from lnsub.trainables.tasks.ner import WIKIANN_LABELS
from lnsub.trainables.tasks.xnli import MAX_TARGET_LENGTH, XNLI_LABELS
from lnsub.orchestrator.rehearsal.lengths import WIKIANN_TRAIN_EXAMPLES, XNLI_TRAIN_EXAMPLES, mbert_lengths

# --- model shapes ------------------------------------------------------------------------------------------

# The hub checkpoints' published config.json (huggingface.co/<id>/blob/main/config.json), the fields the
# count reads: no network is needed to cost the paper's grid.
HUB_CONFIGS = {
    "bert-base-multilingual-cased": {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
                                     "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 119547,
                                     "max_position_embeddings": 512},
    "google/mt5-base": {"model_type": "mt5", "d_model": 768, "d_ff": 2048, "d_kv": 64, "num_heads": 12,
                        "num_layers": 12, "num_decoder_layers": 12, "vocab_size": 250112,
                        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
}


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs of a model: BERT (encoder) or T5 (encoder-decoder)."""

    kind: str  # "bert" or "t5"
    layers: int  # encoder layers
    hidden: int
    ffn: int  # intermediate (BERT) or d_ff (T5)
    attention: int  # heads x head width (BERT: hidden)
    vocab: int
    decoder_layers: int = 0
    gated: bool = False  # T5's gated feed-forward: wi_0, wi_1, wo
    tied_head: bool = True  # the LM head is the input embedding (no weights of its own)

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.gated else 2

    @property
    def encoder_layer_weights(self) -> int:
        """Weights of one encoder layer's matmuls: q, k, v, o and the feed-forward."""
        return 4 * self.hidden * self.attention + self.ffn_matrices * self.hidden * self.ffn

    @property
    def decoder_layer_weights(self) -> int:
        """One decoder layer's: self-attention, cross-attention (q, k, v, o each) and the feed-forward."""
        return 8 * self.hidden * self.attention + self.ffn_matrices * self.hidden * self.ffn

    @property
    def parameters(self) -> int:
        """Weights the optimizer updates and a checkpoint holds (biases and norms left out: < 0.2%)."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_head else 2)
        heads = self.hidden * self.hidden  # BERT's pooler or MLM transform; nothing that counts for T5
        return (embeddings + self.layers * self.encoder_layer_weights
                + self.decoder_layers * self.decoder_layer_weights + (heads if self.kind == "bert" else 0))


def shape_from_config(config: dict) -> Shape:
    """A Shape from a transformers config.json's fields (BERT or T5/mT5)."""
    kind = config.get("model_type")
    if kind == "bert":
        return Shape("bert", config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
                     config["hidden_size"], config["vocab_size"])
    if kind in ("t5", "mt5"):
        return Shape("t5", config["num_layers"], config["d_model"], config["d_ff"],
                     config["num_heads"] * config["d_kv"], config["vocab_size"],
                     decoder_layers=config.get("num_decoder_layers") or config["num_layers"],
                     gated=config.get("feed_forward_proj", "relu").startswith("gated"),
                     tied_head=config.get("tie_word_embeddings", True))
    raise LnsubError(f"cost model: model_type {kind!r} is neither BERT nor T5; no FLOP count for it")


def is_synthetic(language: str) -> bool:
    """Whether a provider (the testbed) holds the language's data, rather than the Hub."""
    return data_provider(language) is not None


@functools.lru_cache(maxsize=64)
def model_shape(model: str, folder: str | None = None) -> Shape:
    """The shape of a hub id the count knows, or of the config.json in a model folder."""
    if model in HUB_CONFIGS:
        return shape_from_config(HUB_CONFIGS[model])
    path = Path(folder or model) / "config.json"
    if not path.is_file():
        raise LnsubError(f"cost model: no config for model {model!r} (a local folder with config.json, "
                         f"{', '.join(HUB_CONFIGS)}, or a built testbed model: run lnsub testbed first)")
    return shape_from_config(json.loads(path.read_text()))


def spec_shape(spec: CellSpec) -> Shape:
    provider = model_provider(spec.model)
    if provider is not None:
        try:
            folder = provider.path(spec)
        except LnsubError:
            raise LnsubError(f"cost model: the {spec.model} model of cell {spec.id} is not built yet "
                             f"(its vocabulary sets its size): run lnsub testbed or a sweep of it first") from None
        return model_shape(spec.model, str(folder))
    return model_shape(spec.model)


# --- FLOPs per example -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Widths:
    """Positions one example is computed at, as expectations over an epoch's batches."""

    mean: float  # E[s]: matmuls
    mean_square: float  # E[s^2]: attention
    predicted: float = 0.0  # MLM: positions the prediction head runs on
    target: float = 0.0  # T5: decoder positions


def forward_flops(shape: Shape, task: str, w: Widths) -> float:
    """Matmul FLOPs of one example's forward pass (2 per multiply-add)."""
    h, a = shape.hidden, shape.attention
    encoder = 2 * shape.layers * shape.encoder_layer_weights * w.mean + 4 * shape.layers * a * w.mean_square
    if shape.kind == "t5":
        self_and_ffn = 4 * h * a + shape.ffn_matrices * h * shape.ffn + 2 * h * a  # self q k v o; ffn; cross q o
        decoder = shape.decoder_layers * (2 * self_and_ffn * w.target + 2 * 2 * h * a * w.mean  # cross k v
                                          + 4 * a * w.target ** 2 + 4 * a * w.target * w.mean)
        return encoder + decoder + 2 * h * shape.vocab * w.target  # the LM head on each target position
    heads = {"mlm": 2 * (h * h + h * shape.vocab) * w.predicted,  # transform, then the vocabulary
             "ner": 2 * h * len(WIKIANN_LABELS) * w.mean,
             "xnli": 2 * (h * h + h * len(XNLI_LABELS)),  # pooler and classifier on [CLS]
             "squad": 2 * h * 2 * w.mean}  # answer start and end: the MFU measurements' task (below)
    return encoder + heads[task]


def train_flops(shape: Shape, task: str, w: Widths) -> float:
    """Forward and backward: the backward computes two matmuls for each of the forward's."""
    return 3 * forward_flops(shape, task, w)


# --- positions computed per example -----------------------------------------------------------------------

LENGTH_SAMPLE = 131_072  # examples drawn from the length model: 82 of grouping's mega-batches of 50 x 32
XNLI_VALID_EXAMPLES = 2_490  # facebook/xnli, each language's validation split (docs/method.md)
REAL_TRAIN_EXAMPLES = {"xnli": XNLI_TRAIN_EXAMPLES, "ner": WIKIANN_TRAIN_EXAMPLES}
REAL_VALID_EXAMPLES = {"xnli": XNLI_VALID_EXAMPLES, "ner": 10_000, "mlm": 30_000}
T5_EXTRA_TOKENS = 4  # assumed: the prompt's "xnli premise:" and "hypothesis:" (6 pieces), one EOS for BERT's 3 specials
T5_TARGET_TOKENS = 4  # assumed: the longest label name of a batch in pieces, and its EOS


def _lengths(task: str, language: str, n: int, max_length: int, seed: int) -> list[int] | None:
    """Example lengths from the length model, or None where it has no figures for the language."""
    try:
        return mbert_lengths(task, language, n, seed=seed, max_length=max_length)
    except KeyError:
        return None


def _moments(widths: list[int], counts: list[int]) -> tuple[float, float]:
    n = sum(counts)
    return (sum(w * c for w, c in zip(widths, counts)) / n, sum(w * w * c for w, c in zip(widths, counts)) / n)


@functools.lru_cache(maxsize=256)
def _sequence_widths(task: str, language: str, policy: str, batch: int, max_length: int, extra: int,
                     train: bool, n: int = LENGTH_SAMPLE) -> tuple[float, float, str]:
    """(E[s], E[s^2], how the lengths were found) of a NER or XNLI example under `policy`, from n lengths."""
    if policy == "max_length":
        return float(max_length), float(max_length) ** 2, "padded to max_length"
    lengths = None if is_synthetic(language) else _lengths(task, language, n, max_length, int(train))
    if lengths is None and is_synthetic(language):
        return float(max_length), float(max_length) ** 2, "no length model: max_length, an upper bound"
    if lengths is None:  # a real language the length model lacks figures for (zh; WikiANN's ru)
        known = [lang for lang in PAPER_LANGUAGES if _lengths(task, lang, 1, max_length, 0) is not None]
        parts = [_sequence_widths(task, lang, policy, batch, max_length, extra, train, n)[:2] for lang in known]
        return (statistics.mean(p[0] for p in parts), statistics.mean(p[1] for p in parts),
                f"no length model for {language}: the mean of {', '.join(known)}")
    lengths = [min(n + extra, max_length) for n in lengths]
    spec = CellSpec.from_values(model="cost", task=task, language=language, epochs=1.0, batch_size=batch,
                                max_length=max_length)
    if train:
        batches = epoch_batches(lengths, spec, policy, batch)
    else:  # evaluation reads the split in order, batches of twice the training batch, padded per batch
        batches = [lengths[i:i + 2 * batch] for i in range(0, len(lengths), 2 * batch)]
    widths = [width(b, spec, policy) for b in batches]
    return (*_moments(widths, [len(b) for b in batches]), "length model")


def example_widths(spec: CellSpec, shape: Shape, padding: str, mlm_head: str, train: bool = True) -> Widths:
    """How many positions one example of the cell is computed at, under a padding and an MLM head policy."""
    if padding not in POLICIES:
        raise LnsubError(f"cost model: padding must be one of {', '.join(POLICIES)}, got {padding!r}")
    if spec.task == "mlm":  # every block is max_length tokens long: padding changes nothing
        s = float(spec.max_length)
        masked = MLM_PROBABILITY * (spec.max_length - 2)  # each non-special token, with probability 0.15
        return Widths(s, s * s, predicted=s if mlm_head == "full" else masked)
    extra = T5_EXTRA_TOKENS if shape.kind == "t5" else 0
    n = LENGTH_SAMPLE if train else min(LENGTH_SAMPLE, valid_examples(spec))  # validation: the split's size
    mean, square, _ = _sequence_widths(spec.task, spec.language, padding, spec.batch_size, spec.max_length,
                                       extra, train, n)
    target = float(MAX_TARGET_LENGTH if padding == "max_length" else T5_TARGET_TOKENS) if shape.kind == "t5" else 0.0
    return Widths(mean, square, target=target)


def length_source(spec: CellSpec, padding: str) -> str:
    """Where a cell's example lengths come from (the length model, a fallback, or max_length)."""
    if spec.task == "mlm":
        return "blocks of max_length"
    return _sequence_widths(spec.task, spec.language, padding, spec.batch_size, spec.max_length, 0, True)[2]


# --- devices and the utilisation they reach ----------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    name: str
    fp32: float  # dense FLOP/s without tensor cores
    tensor16: float  # dense bf16/fp16 tensor-core FLOP/s (no structured sparsity)
    bf16: bool  # native bf16: without it lnsub trains a bf16 cell in fp32 (loading.resolve_precision)
    bandwidth: float  # memory, bytes/s
    mfu_family: str  # whose published measurement gives its MFU (below)
    host_link: float  # the host link's peak, one direction, bytes/s (a checkpoint's copy into host memory)


DEVICES = {
    # NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), SXM4 80GB: FP32 19.5
    # TFLOPS, BF16/FP16 Tensor Core 312 TFLOPS dense (624 with sparsity), HBM2e 2,039 GB/s, "PCIe Gen4:
    # 64 GB/s" (both directions together).
    "a100": Device("A100 SXM4 80GB", 19.5e12, 312e12, True, 2.039e12, "ampere", 32e9),
    # NVIDIA H100 datasheet, SXM5: FP32 67 TFLOPS, BF16/FP16 Tensor Core 1,979 TFLOPS "with sparsity",
    # "specifications 1/2 lower without sparsity": 989.4 dense; HBM3 3.35 TB/s; "PCIe Gen5: 128 GB/s".
    "h100": Device("H100 SXM5", 67e12, 989.4e12, True, 3.35e12, "ampere", 64e9),
    # NVIDIA Quadro RTX 8000 datasheet: single precision 16.3 TFLOPS, Tensor 130.5 TFLOPS ("FP16 matrix
    # multiply with FP16 or FP32 accumulate"), GDDR6 672 GB/s, PCI Express 3.0 x16 (15.75 GB/s a direction);
    # Turing has no bf16.
    "rtx8000": Device("Quadro RTX 8000", 16.3e12, 130.5e12, False, 672e9, "volta", 15.75e9),
}

BERT_LARGE = Shape("bert", 24, 1024, 4096, 1024, 30522)


@dataclass(frozen=True)
class Measurement:
    """A published training throughput: the MFU of a precision on a family of GPUs follows from it."""

    source: str
    sequences_per_second: float
    peak: float  # the measuring GPU's dense peak at that precision

    @property
    def mfu(self) -> float:
        """Achieved over peak FLOP/s, with this module's count: BERT-large on SQuAD v1.1, 384 positions."""
        return self.sequences_per_second * train_flops(BERT_LARGE, "squad", Widths(384.0, 384.0 ** 2)) / self.peak


DLE = ("NVIDIA DeepLearningExamples, PyTorch/LanguageModeling/BERT/README.md, pytorch:21.11-py3, "
       "BERT-large SQuAD v1.1 fine-tuning (384 positions), 1 GPU")
# MFU by (family, precision): Volta's for Turing (same SM design, no Turing measurement published there).
# The V100 SXM2 datasheet's peaks: FP32 15.7 TFLOPS, Tensor 125 TFLOPS.
MEASUREMENTS = {
    ("volta", "fp32"): Measurement(f"{DLE}, V100 32GB, FP32, batch 8: 12 sequences/s", 12.0, 15.7e12),
    ("volta", "tensor16"): Measurement(f"{DLE}, V100 32GB, mixed precision, batch 16: 52 sequences/s", 52.0,
                                       125e12),
    ("ampere", "tensor16"): Measurement(f"{DLE}, A100 80GB, mixed precision, batch 32: 110.5 sequences/s",
                                        110.5, 312e12),
    # no A100 strict-FP32 figure is published there (its "TF32" column is tensor-core TF32): Volta's FP32
    ("ampere", "fp32"): Measurement(f"{DLE}, V100 32GB, FP32, batch 8: 12 sequences/s (no A100 FP32 figure)",
                                    12.0, 15.7e12),
}
# The H100 is given the A100's MFU: no measurement of BERT fine-tuning on it was found (an assumption; its
# memory bandwidth grew less than its FLOP/s, so it more likely reaches less).

# A step's fixed costs. lnsub's train step of a 12-layer BERT dispatches 2,370 aten ops, 912 of them
# kernels (the rest views; counted on CPU: python bench/cost.py --count-ops). Eager PyTorch spends about
# 5-25 us of host time on an op before its kernel runs; 10 us a kernel is assumed.
KERNELS_PER_STEP = 912
HOST_SECONDS_PER_KERNEL = 10e-6
# The optimizer step streams every parameter: fused AdamW reads weight, gradient and both moments and writes
# three (28 bytes in fp32), clipping reads the gradients twice and writes them once (12), the masks' multiplies
# about 8 more per parameter on average: 48 bytes, at the memory's datasheet bandwidth (assumed).
OPTIMIZER_BYTES_PER_PARAMETER = 48
# A checkpoint (every --checkpoint-every steps) holds weights and AdamW's two moments in fp32, serialised,
# written and hashed (SHA-256) at about 1 GB/s altogether (assumed). Training waits for its copy into host
# memory (half the host link's peak, assumed: the copy goes to pinned memory, which usually reaches more;
# bench/gpu_check.sh's cell measures it), not for the write, which runs behind the next steps; only a write
# longer than those steps holds the next checkpoint (and so training) back.
CHECKPOINT_BYTES_PER_PARAMETER = 12
CHECKPOINT_BYTES_PER_SECOND = 1e9
HOST_COPY_SHARE_OF_LINK = 0.5


def precision_kind(device: Device, mixed_precision: str) -> str:
    """Which peak a cell's matmuls run at: tensor cores under bf16 (where native) or fp16, else fp32."""
    if mixed_precision == "fp16" or (mixed_precision == "bf16" and device.bf16):
        return "tensor16"
    return "fp32"


def achieved_flops(device: Device, kind: str) -> float:
    """The device's peak at that precision times the MFU its family's measurement gives."""
    peak = device.tensor16 if kind == "tensor16" else device.fp32
    return peak * MEASUREMENTS[(device.mfu_family, kind)].mfu


def get_device(name: str) -> Device:
    if name not in DEVICES:
        raise LnsubError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    return DEVICES[name]


# --- a cell's cost -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """How a round computes: padding, the MLM head, the precision asked for, and checkpointing."""

    name: str
    padding: str  # trainables.padding.POLICIES
    mlm_head: str  # "full" (every position) or "masked" (tasks.mlm.predict_masked_only)
    precision: str | None  # None: the cell's own mixed_precision
    checkpoint_every: int  # steps between checkpoints; 0: none
    behind: bool = True  # checkpoints written behind training (trainables.checkpointing); False: in its way


def lnsub_policy(spec: CellSpec, checkpoint_every: int) -> Policy:
    """What lnsub runs for this cell: per-batch padding (length-grouped where the spec asks), masked-only head."""
    return Policy("lnsub", "grouped" if spec.group_by_length else "batch", "masked", None, checkpoint_every)


AUTHORS = Policy("authors", "max_length", "full", "no", 0)  # fp32, padded, full head, masks saved per round only


@dataclass(frozen=True)
class CellCost:
    """One cell on one device: its work and its predicted hours, by part."""

    spec: CellSpec
    examples: int  # trained per round
    steps: int  # optimizer steps per round
    tokens: float  # positions computed per training example (E[s])
    flops: float  # the whole cell: every round's training and evaluation
    compute: float  # hours: training matmuls at the achieved FLOP/s
    optimizer: float  # hours: the optimizer step's memory traffic
    host: float  # hours the host's kernel launches add beyond the GPU's time
    evaluation: float  # hours
    checkpoints: float  # hours

    @property
    def hours(self) -> float:
        return self.compute + self.optimizer + self.host + self.evaluation + self.checkpoints


def round_size(spec: CellSpec) -> tuple[int, int]:
    """(examples, optimizer steps) of one round: steps x batch, or epochs over the train split's whole batches."""
    if spec.steps is not None:
        return spec.steps * spec.batch_size, spec.steps
    n = spec.train_size or (None if is_synthetic(spec.language) else REAL_TRAIN_EXAMPLES.get(spec.task))
    if n is None:
        raise LnsubError(f"cost model: cell {spec.task}/{spec.language} trains {spec.epochs:g} epochs of a split "
                         f"whose size it does not know; give the grid's train_size")
    steps = max(1, math.ceil(spec.epochs * (n // spec.batch_size)))  # as train.total_steps
    return steps * spec.batch_size, steps


def valid_examples(spec: CellSpec) -> int:
    return spec.valid_size or REAL_VALID_EXAMPLES[spec.task]


def cell_cost(spec: CellSpec, device: Device, policy: Policy) -> CellCost:
    """The predicted device-hours of one cell under `policy`, by part (module docstring: the model)."""
    shape = spec_shape(spec)
    examples, steps = round_size(spec)
    rounds = spec.levels + 1
    achieved = achieved_flops(device, precision_kind(device, policy.precision or spec.mixed_precision))
    widths = example_widths(spec, shape, policy.padding, policy.mlm_head)
    train = train_flops(shape, spec.task, widths) * examples
    valid = forward_flops(shape, spec.task, example_widths(spec, shape, policy.padding, policy.mlm_head, False))
    valid *= valid_examples(spec)
    optimizer = steps * shape.parameters * OPTIMIZER_BYTES_PER_PARAMETER / device.bandwidth
    gpu = train / achieved + optimizer
    host = steps * KERNELS_PER_STEP * HOST_SECONDS_PER_KERNEL
    checkpoint = checkpoint_seconds(steps, max(gpu, host) / steps, shape, device, policy)
    hours = rounds / 3600
    return CellCost(spec, examples, steps, widths.mean, rounds * (train + valid), hours * train / achieved,
                    hours * optimizer, hours * max(0.0, host - gpu), hours * valid / achieved, hours * checkpoint)


def checkpoint_seconds(steps: int, step_seconds: float, shape: Shape, device: Device, policy: Policy) -> float:
    """What a round's checkpoints cost its training: each one's copy into host memory, and what its write runs
    past the steps until the next is due (all of the write, where checkpoints are written in training's way)."""
    if not policy.checkpoint_every:
        return 0.0
    saves = (steps - 1) // policy.checkpoint_every
    size = shape.parameters * CHECKPOINT_BYTES_PER_PARAMETER
    write = size / CHECKPOINT_BYTES_PER_SECOND
    if not policy.behind:
        return saves * write
    copy = size / (device.host_link * HOST_COPY_SHARE_OF_LINK)
    return saves * (copy + max(0.0, write - policy.checkpoint_every * step_seconds))


def predict(plan: Plan, device: Device, policy_for) -> list[CellCost]:
    """Every cell of the plan, in its order; `policy_for(spec)` gives each cell's Policy."""
    return [cell_cost(c.spec, device, policy_for(c.spec)) for c in plan.cells]


@dataclass(frozen=True)
class TaskRow:
    """A task's cells together: the table `lnsub plan --device` prints."""

    task: str
    cells: int
    examples: float  # per round, mean over cells
    tokens: float  # computed per training example, mean over cells
    tflops: float  # per cell, mean
    hours_per_cell: float  # mean
    hours: float  # all of the task's cells


def task_rows(costs: list[CellCost]) -> list[TaskRow]:
    rows = []
    for task in sorted({c.spec.task for c in costs}):
        mine = [c for c in costs if c.spec.task == task]
        rows.append(TaskRow(task, len(mine), statistics.mean(c.examples for c in mine),
                            statistics.mean(c.tokens for c in mine), statistics.mean(c.flops for c in mine) / 1e12,
                            statistics.mean(c.hours for c in mine), sum(c.hours for c in mine)))
    return rows


def parts(costs: list[CellCost]) -> dict[str, float]:
    """Hours of every cell together, by part."""
    names = ("compute", "optimizer", "host", "evaluation", "checkpoints")
    return {n: sum(getattr(c, n) for c in costs) for n in names}


def with_hours(plan: Plan, costs: list[CellCost]) -> Plan:
    """The plan with each cell's cost_hours replaced by its prediction, in the same (submission) order."""
    cells = [dataclasses.replace(c, cost_hours=k.hours) for c, k in zip(plan.cells, costs, strict=True)]
    return dataclasses.replace(plan, cells=cells)
