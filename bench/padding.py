"""Tokens computed per real token for NER and XNLI under three ways of batching, per language, over one epoch.

- max_length: every example padded to max_length 128 (the authors' configuration);
- batch: each batch padded to its longest example, batches drawn at random (lnsub's collators, the default);
- grouped: the same, with length-grouped batches (spec.group_by_length: Hugging Face's grouping, mega-batches
  of 50 batches sorted by length).

The orders are those training uses (train.epoch_order), batch 32 and the paper's train sizes (WikiANN 20,000,
XNLI 392,702). Lengths are mBERT tokens under orchestrator/rehearsal/lengths.py's model: word counts anchored on the
datasets' cards, and assumed spreads and sub-words per word (see there).

Usage: python bench/padding.py [--batch 32] [--languages en fr ar ...]
"""

from __future__ import annotations

import argparse
import statistics

from lnsub.trainables.padding import POLICIES, padding_ratio
from lnsub.trainables.spec import make_spec
from lnsub.orchestrator.rehearsal.lengths import XNLI_TRAIN_EXAMPLES, mbert_lengths

SIZES = {"ner": 20_000, "xnli": XNLI_TRAIN_EXAMPLES}
LANGUAGES = {"ner": ("en", "fr", "de", "es", "ar", "fa"),
             "xnli": ("en", "fr", "de", "es", "ar", "ru", "ur", "hi", "sw")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--languages", nargs="*", default=None)
    args = parser.parse_args()
    print(f"tokens computed per real token, batch {args.batch}, one epoch; columns: {', '.join(POLICIES)}")
    for task, size in SIZES.items():
        spec = make_spec(task, "en", model="bert-base-multilingual-cased", batch_size=args.batch)
        rows = []
        for language in args.languages or LANGUAGES[task]:
            if language not in LANGUAGES[task]:
                continue
            lengths = mbert_lengths(task, language, size)
            ratios = [padding_ratio(lengths, spec, policy) for policy in POLICIES]
            rows.append(ratios)
            print(f"{task:4s} {language}: mean {statistics.mean(lengths):5.1f} tokens, truncated "
                  f"{sum(n == 128 for n in lengths) / len(lengths):.2%}; " + ", ".join(f"{r:.2f}" for r in ratios))
        means = [statistics.mean(col) for col in zip(*rows)]
        print(f"{task:4s} mean over languages: " + ", ".join(f"{p} {r:.2f}" for p, r in zip(POLICIES, means)))


if __name__ == "__main__":
    main()
