"""What a cell's spec loads: the model folder, the data, the task and the Accelerator.

Shared by IMP (trainables.imp), transfer jobs (trainables.transfer) and the
similarity analysis, so that every one of them starts from the same draw.
"""

from __future__ import annotations

import logging

import torch

from lnsub.trainables.providers import data_provider, model_provider
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.tasks import Task, get_task
from lnsub.trainables.train import RoundData

log = logging.getLogger(__name__)


def model_path(spec: CellSpec) -> str:
    """The folder or hub id that `from_pretrained` gets for this cell (a provider's model: its built folder)."""
    provider = model_provider(spec.model)
    return provider.path(spec) if provider is not None else spec.model


def load_model(spec: CellSpec, task: Task, path: str):
    """The pretrained model with the task's fresh head, as its provider (if any) wants it."""
    model = task.load_model(path)
    provider = model_provider(spec.model)
    if provider is not None and provider.install is not None:
        provider.install(model, path)  # e.g. the testbed's decoupled control: its twins' own specials and positions
    return model


def task_for(spec: CellSpec, path: str | None = None) -> Task:
    """The cell's task in the form its model takes (XNLI is text-to-text for mT5), read from the model's config."""
    from transformers import AutoConfig  # heavy: imported when a model is loaded, not with the package

    task = get_task(spec.task)
    try:
        config = AutoConfig.from_pretrained(path or model_path(spec))
    except OSError:  # no config to read here: the task's encoder form, and from_pretrained says what is missing
        return task
    return task.for_model(config)


def data_root(spec: CellSpec) -> str | None:
    """The folder the task reads its data from; None for the Hub."""
    if spec.data_dir is not None:
        return spec.data_dir
    provider = data_provider(spec.language)
    return provider.data_root(spec) if provider is not None else None


def load_round_data(spec: CellSpec, tokenizer, accelerator, task: Task | None = None) -> RoundData:
    """The cell's tokenised train and validation splits (selected to the spec's sizes before tokenising)."""
    task = task or get_task(spec.task)
    with accelerator.main_process_first():  # the main process tokenises; the others read its cache
        enc = task.prepare(spec.language, data_root(spec), tokenizer, spec.max_length, seed=spec.seed,
                           sizes=(spec.train_size, spec.valid_size), valid_documents=spec.valid_documents)
    train, valid = enc["train"], enc["validation"]
    return RoundData(train, valid, task.collator(tokenizer, train=True), task.collator(tokenizer, train=False))


def load_task(spec: CellSpec, accelerator):
    """(task, round data, the pretrained model with a fresh head) for a cell's spec.

    The head (and a missing pooler) are drawn after set_seed(spec.seed), so every
    run of the same spec, an IMP cell or a transfer job, starts from the same draw.
    """
    from transformers import set_seed  # heavy: imported when a model is loaded, not with the package

    path = model_path(spec)
    task = task_for(spec, path)
    data = load_round_data(spec, task.load_tokenizer(path), accelerator, task)
    set_seed(spec.seed)
    return task, data, load_model(spec, task, path)


def make_accelerator(spec: CellSpec):
    """Accelerate for this process; under Ray Train it joins the workers' process group.

    On a machine without a GPU, Accelerate treats a multi-process launch (WORLD_SIZE > 1)
    as distributed only when told to use the CPU. On a GPU, batches travel from pinned
    memory without blocking the host (train_loader pins them), and the precision is
    `resolve_precision`'s: bf16 autocast over fp32 master weights where asked and supported,
    with TF32 matmuls on Ampere or newer; spec.mixed_precision "no" is strict fp32.
    """
    from accelerate import Accelerator  # heavy: imported when a job starts, not with the package
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    precision = resolve_precision(spec.mixed_precision, cuda)
    if cuda:
        set_matmul_precision(precision)
    return Accelerator(cpu=not cuda, mixed_precision=precision, gradient_accumulation_steps=spec.grad_accum,
                       dataloader_config=DataLoaderConfiguration(non_blocking=cuda))


def resolve_precision(requested: str, cuda: bool) -> str:
    """The mixed precision this machine runs: bf16 falls back to fp32 ("no"), with a warning, on a GPU
    without native bf16 (before Ampere). The cell's id keeps the precision asked for.

    The CPU keeps bf16: PyTorch autocasts to bf16 on any CPU (slowly where it lacks bf16 instructions).
    """
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        log.warning("mixed_precision bf16 asked for, but %s has no native bf16: training in fp32 instead",
                    torch.cuda.get_device_name())
        return "no"
    return requested


def set_matmul_precision(precision: str) -> None:
    """TF32 matmuls (fp32 in, TF32 inside) under mixed precision on Ampere or newer; strict fp32 otherwise.

    Set either way: the flag is process-wide, and a later cell in the same process must not inherit it.
    """
    ampere = torch.cuda.get_device_capability() >= (8, 0)
    tf32 = precision != "no" and ampere
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
