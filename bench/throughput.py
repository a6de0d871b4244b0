"""Examples per second of one IMP round (lnsub's train_round, masks enforced) against Hugging Face `Trainer`.

Both train the same model (fresh copies of one initialisation, a sequence-classification head), on the
same random token data, with the same batch, steps, optimizer settings and precision, in one process;
runs alternate (lnsub, Trainer, Trainer, lnsub, ...) after a warm-up of each, and the medians are compared.
The mask is a random 50% one over the prunable weights: what an IMP level trains with.

Usage: python bench/throughput.py [--model tiny|bert-base] [--steps 40] [--repeats 3] [--batch-size 32]
       [--length 64] [--precision no|bf16]
"--model bert-base" is bert-base-multilingual-cased's architecture (12 x 768, 12 heads, 3072) with a
30k vocabulary, initialised at random from its BertConfig: no download.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lnsub.trainables import pruning
from lnsub.trainables.loading import make_accelerator
from lnsub.trainables.spec import CellSpec
from lnsub.trainables.store import Checkpoints
from lnsub.trainables.testbed.tinybert import ensure_tiny_model
from lnsub.trainables.train import RoundData, train_round

LR, NUM_LABELS = 5e-5, 3


def build_model(kind: str):
    from transformers import BertConfig, BertForSequenceClassification  # heavy: only when the bench runs

    torch.manual_seed(0)
    if kind == "tiny":
        return BertForSequenceClassification.from_pretrained(ensure_tiny_model(), num_labels=NUM_LABELS)
    config = BertConfig(vocab_size=30_000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, num_labels=NUM_LABELS)
    return BertForSequenceClassification(config)


def build_data(vocab: int, n: int, length: int):
    """Random sentences of `length` tokens, each with a label: the same rows for both sides."""
    import datasets  # heavy: only when the bench runs

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (n, length), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n,
                                       "labels": torch.randint(0, NUM_LABELS, (n,), generator=g).tolist()})


def run_lnsub(model, masks, data, args, precision: str) -> float:
    """Seconds of one train_round of args.steps steps (wall time of the call, set-up included)."""
    from transformers import default_data_collator  # heavy: only when the bench runs

    spec = CellSpec.from_values(model="bench", task="xnli", language="en", steps=args.steps, lr=LR,
                                batch_size=args.batch_size, max_length=args.length, mixed_precision=precision)
    accelerator = make_accelerator(spec)
    pruning.apply_masks(model, masks)
    round_data = RoundData(data, data, default_data_collator, default_data_collator)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Checkpoints(Path(tmp) / "ckpt", Path(tmp) / "quarantine")
        start = time.perf_counter()
        train_round(model, masks, round_data, spec, 1, accelerator, checkpoints, checkpoint_every=0)
        _sync()
        return time.perf_counter() - start


def run_trainer(model, data, args, precision: str) -> float:
    """Seconds of Trainer.train() for args.steps steps, with the same optimizer settings and no masks."""
    from transformers import Trainer, TrainingArguments, default_data_collator  # heavy: only when the bench runs

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=LR,
            adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=0,
            bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(), logging_strategy="no",
            save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_drop_last=True,
            seed=0)
        trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=default_data_collator)
        start = time.perf_counter()
        trainer.train()
        _sync()
        return time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "bert-base"), default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--precision", choices=("no", "bf16"), default=None,
                        help="default: bf16 on a GPU with it, fp32 elsewhere")
    return parser.parse_args()


def main() -> None:
    import transformers  # heavy: only when the bench runs

    args = parse_args()
    transformers.logging.set_verbosity_error()
    logging.getLogger("lnsub").setLevel(logging.WARNING)
    precision = args.precision or ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no")
    pristine = build_model(args.model)
    masks = pruning.random_masks(pruning.prunable_parameters(pristine), 0.5, seed=0)
    data = build_data(pristine.config.vocab_size, args.batch_size * args.steps, args.length)
    sides = {"lnsub": lambda: run_lnsub(copy.deepcopy(pristine), masks, data, args, precision),
             "Trainer": lambda: run_trainer(copy.deepcopy(pristine), data, args, precision)}
    for run in sides.values():  # warm-up: allocator, kernels, lazy imports
        run()
    seconds = {name: [] for name in sides}
    for r in range(args.repeats):  # alternating, so drift hits both alike
        for name in (("lnsub", "Trainer") if r % 2 == 0 else ("Trainer", "lnsub")):
            seconds[name].append(sides[name]())
    report(args, precision, pristine, seconds)


def report(args, precision: str, model, seconds: dict) -> None:
    examples = args.steps * args.batch_size
    rate = {name: examples / statistics.median(s) for name, s in seconds.items()}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.model} BERT ({sum(p.numel() for p in model.parameters()):,} parameters) on {device}, "
          f"precision {precision}, batch {args.batch_size} x {args.length} tokens, {args.steps} steps x "
          f"{args.repeats} repeats")
    for name, s in seconds.items():
        print(f"  {name:8s} {rate[name]:9.1f} examples/s  (median of {', '.join(f'{x:.2f}' for x in s)} s)")
    print(f"  ratio lnsub / Trainer: {rate['lnsub'] / rate['Trainer']:.3f}")


if __name__ == "__main__":
    main()
