"""What a cell's spec loads: the model folder, the data, the task and the Accelerator.

Shared by IMP (trainables.imp), transfer jobs (trainables.transfer) and the
similarity analysis, so that every one of them starts from the same draw.
"""

from __future__ import annotations

import torch

from lnsub.trainables.spec import TESTBED_MODEL, CellSpec
from lnsub.trainables.tasks import get_task
from lnsub.trainables.testbed.generate import ensure_testbed
from lnsub.trainables.testbed.languages import is_synthetic
from lnsub.trainables.testbed.tinybert import ensure_tiny_model
from lnsub.trainables.train import RoundData


def model_path(spec: CellSpec) -> str:
    """The folder or hub id that `from_pretrained` gets for this cell."""
    if spec.model == TESTBED_MODEL:
        return str(ensure_tiny_model(spec.testbed_config()))
    return spec.model


def data_root(spec: CellSpec) -> str | None:
    """The folder the task reads its data from; None for the Hub."""
    if spec.data_dir is not None:
        return spec.data_dir
    if is_synthetic(spec.language):
        return str(ensure_testbed(spec.testbed_config().testbed) / "data")
    return None


def load_round_data(spec: CellSpec, tokenizer, accelerator) -> RoundData:
    """The cell's tokenised train and validation splits (selected to the spec's sizes before tokenising)."""
    task = get_task(spec.task)
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

    task = get_task(spec.task)
    path = model_path(spec)
    data = load_round_data(spec, task.load_tokenizer(path), accelerator)
    set_seed(spec.seed)
    return task, data, task.load_model(path)


def make_accelerator(spec: CellSpec):
    """Accelerate for this process; under Ray Train it joins the workers' process group.

    On a machine without a GPU, Accelerate treats a multi-process launch (WORLD_SIZE > 1)
    as distributed only when told to use the CPU.
    """
    from accelerate import Accelerator  # heavy: imported when a job starts, not with the package

    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=spec.mixed_precision,
                       gradient_accumulation_steps=spec.grad_accum)
