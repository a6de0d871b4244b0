"""lnsub's IMP round against the authors' configuration, per task, at mBERT's shape, in one run.

The authors' configuration: Hugging Face `Trainer`, fp32, every example padded to max_length (128 for NER and
XNLI), the MLM head on every position. lnsub's: `train.train_round` with a 50% mask enforced (an IMP level),
per-batch padding with length-grouped batches (spec.group_by_length) and the MLM head on the masked positions
only (tasks.mlm.predict_masked_only), also fp32 (bench/gpu_check.py runs it in bf16 through run_lnsub's
`precision`). Both train fresh copies of one randomly initialised model of bert-base-multilingual-cased's shape
(12 x 768, 12 heads, 3072, vocabulary 119,547: built locally, no hub), with its task head, on the same
examples, with the same batch, steps and optimizer settings. Sentence lengths follow the real datasets'
(orchestrator/rehearsal/lengths.py, in mBERT tokens); MLM reads full 512-token blocks, 15% masked.

Each side trains `--steps` + 1 steps and is timed from the end of its first step to the end of its last: set-up,
the first step's one-off costs (the optimizer's state is allocated there) and lnsub's first batch (length
grouping puts the epoch's longest example in it, so that memory runs out early if it must) are left out. NER and
XNLI draw 200 batches of examples, so lnsub's length grouping sorts mega-batches of 50 batches, as in a real cell,
and its timed batches are a random sample of the epoch's.

Usage: python bench/throughput.py [--tasks mlm ner xnli] [--batch 32] [--steps 6] [--mlm-batch 4] [--mlm-steps 6]
       [--language en]
The last lines are `ratio <task> <x>`: the authors' seconds over lnsub's for the same steps (higher: lnsub faster).
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import tempfile
import time
from pathlib import Path

import torch

from lnsub.trainables import pruning
from lnsub.trainables.loading import make_accelerator
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.storage import Storage
from lnsub.trainables.store import Checkpoints
from lnsub.trainables.tasks.mlm import mask_tokens, predict_masked_only
from lnsub.orchestrator.rehearsal.lengths import mbert_lengths
from lnsub.orchestrator.rehearsal.build import MBERT_ARCHITECTURE
from lnsub.trainables.train import RoundData, train_round

MBERT_VOCAB, MASK_ID, LR = 119_547, 103, 5e-5
MAX_LENGTH = {"mlm": 512, "ner": 128, "xnli": 128}
LABELS = {"ner": 7, "xnli": 3}


def build_model(task: str):
    from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification,  # heavy: bench only
                              BertForTokenClassification)

    torch.manual_seed(0)
    config = BertConfig(vocab_size=MBERT_VOCAB, num_labels=LABELS.get(task, 2), **MBERT_ARCHITECTURE)
    auto = {"mlm": BertForMaskedLM, "ner": BertForTokenClassification, "xnli": BertForSequenceClassification}
    return auto[task](config)


def build_data(task: str, language: str, n: int):
    """n examples: random token ids at the real datasets' lengths, with labels (MLM: masked once, fixed)."""
    import datasets  # heavy: bench only

    g = torch.Generator().manual_seed(1)
    rows = []
    lengths = [MAX_LENGTH["mlm"]] * n if task == "mlm" else mbert_lengths(task, language, n, seed=1)
    for length in lengths:
        ids = torch.randint(1000, MBERT_VOCAB, (length,), generator=g)
        ids[0], ids[-1] = 101, 102  # [CLS] ... [SEP]
        if task == "mlm":
            special = torch.zeros(length, dtype=torch.long)
            special[0] = special[-1] = 1
            ids, labels = mask_tokens(ids, special, MBERT_VOCAB, MASK_ID, g)
            labels = labels.tolist()
        elif task == "ner":
            labels = [-100] + torch.randint(0, LABELS["ner"], (length - 2,), generator=g).tolist() + [-100]
        else:
            labels = int(torch.randint(0, LABELS["xnli"], (1,), generator=g))
        rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": labels})
    return datasets.Dataset.from_list(rows)


def pad_collator(width: int | None):
    """Pads each batch to `width` (the authors' max_length), or to its longest example when None."""
    def collate(examples):
        longest = width or max(len(e["input_ids"]) for e in examples)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for e in examples:
            pad = longest - len(e["input_ids"])
            out["input_ids"].append(e["input_ids"] + [0] * pad)
            out["attention_mask"].append(e["attention_mask"] + [0] * pad)
            out["labels"].append(e["labels"] + [-100] * pad if isinstance(e["labels"], list) else e["labels"])
        return {k: torch.tensor(v) for k, v in out.items()}

    return collate


class StepClock:
    """Wall time from the end of the first optimizer step to the end of the last."""

    def __init__(self):
        self.first = self.last = None

    def tick(self) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now

    @property
    def seconds(self) -> float:
        return self.last - self.first


def lnsub_spec(task: str, batch: int, steps: int, language: str, precision: str = "no") -> CellSpec:
    """The spec lnsub's side trains with (its order, grouping and precision)."""
    return CellSpec.from_values(model="bench", task=task, language=language, steps=steps + 1, lr=LR,
                                batch_size=batch, max_length=MAX_LENGTH[task], group_by_length=True,
                                mixed_precision=precision)


def run_lnsub(pristine, task: str, data, batch: int, steps: int, language: str, precision: str = "no") -> float:
    """Seconds of `steps` steps of train_round: masked (50%), grouped by length, MLM head on masked positions."""
    model = copy.deepcopy(pristine)
    predict_masked_only(model)  # a no-op for NER and XNLI models
    spec = lnsub_spec(task, batch, steps, language, precision)
    masks = pruning.random_masks(pruning.prunable_parameters(model), 0.5, seed=0)
    pruning.apply_masks(model, masks)
    round_data = RoundData(data, data, pad_collator(None), pad_collator(None))
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Checkpoints(Storage.open(tmp), Path(tmp) / "ckpt", Path(tmp) / "quarantine")
        train_round(model, masks, round_data, spec, 1, make_accelerator(spec), checkpoints, checkpoint_every=0,
                    after_step=lambda step: clock.tick())
    return clock.seconds


def run_trainer(pristine, task: str, data, batch: int, steps: int) -> float:
    """Seconds of `steps` steps of Trainer.train(): fp32, padded to max_length, HF's MLM head and loss."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments  # heavy: bench only

    class Clocked(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    model, clock = copy.deepcopy(pristine), StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps + 1, learning_rate=LR,
            adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=0,
            use_cpu=not torch.cuda.is_available(), logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to=[],
            disable_tqdm=True, dataloader_drop_last=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=pad_collator(MAX_LENGTH[task]),
                          callbacks=[Clocked()])
        trainer.remove_callback(PrinterCallback)  # its closing metrics line; the bench prints its own
        trainer.train()
    return clock.seconds


def bench_task(task: str, batch: int, steps: int, language: str) -> dict[str, float]:
    pristine = build_model(task)
    data = build_data(task, language, (200 if task != "mlm" else steps + 1) * batch)
    seconds = {"lnsub": run_lnsub(pristine, task, data, batch, steps, language)}
    gc.collect()
    seconds["authors"] = run_trainer(pristine, task, data, batch, steps)
    gc.collect()
    mean = sum(len(x) for x in data["input_ids"]) / len(data)
    print(f"{task}: batch {batch}, {steps} timed steps (after 1), mean length {mean:.1f} tokens (max_length "
          f"{MAX_LENGTH[task]}): authors {seconds['authors']:.1f} s, lnsub {seconds['lnsub']:.1f} s", flush=True)
    return seconds


def main() -> None:
    import transformers  # heavy: bench only

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mlm", "ner", "xnli"], choices=["mlm", "ner", "xnli"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--mlm-batch", type=int, default=4)
    parser.add_argument("--mlm-steps", type=int, default=6)
    parser.add_argument("--language", default="en")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    logging.getLogger("lnsub").setLevel(logging.WARNING)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"mBERT-shaped BERT (vocabulary {MBERT_VOCAB:,}), fp32 on {device}, language {args.language}", flush=True)
    ratios = {}
    for task in args.tasks:
        batch, steps = (args.mlm_batch, args.mlm_steps) if task == "mlm" else (args.batch, args.steps)
        seconds = bench_task(task, batch, steps, args.language)
        ratios[task] = seconds["authors"] / seconds["lnsub"]
    for task, ratio in ratios.items():
        print(f"ratio {task} {ratio:.2f}")


if __name__ == "__main__":
    main()
