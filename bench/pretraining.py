"""Tiny BERT pretraining step time: the prediction head on every position (HF's own loss) against the head on the
masked positions only (pretraining.masked_positions_loss), same model, same batches, one thread, one run.

Usage: python bench/pretraining.py [--steps 40]
       python bench/pretraining.py --mbert [--steps 3]: the same comparison at mBERT's shape (random weights, vocabulary
       119,547, blocks of 4 x 512 tokens, 15% masked), through the fine-tuning path: tasks.mlm.predict_masked_only.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from lnsub.trainables.testbed.pretraining import masked_positions_loss
from lnsub.trainables.testbed.tinybert import (TinyBertConfig, _batch, _encode, build_model, lexicon_vocab,
                                               make_layout, mask_batch, pretraining_sentences, train_tokenizer,
                                               LanguageTokenizer)


def mbert_head(steps: int) -> None:
    """Forward and backward of an mBERT-shaped BertForMaskedLM, head on every position against masked positions only."""
    import copy

    from transformers import BertConfig, BertForMaskedLM

    from lnsub.trainables.tasks.mlm import mask_tokens, predict_masked_only
    from lnsub.orchestrator.rehearsal.build import MBERT_ARCHITECTURE

    torch.manual_seed(0)
    full = BertForMaskedLM(BertConfig(vocab_size=119_547, **MBERT_ARCHITECTURE))
    masked = copy.deepcopy(full)
    predict_masked_only(masked)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 119_547, (4, 512), generator=g)
    special = torch.zeros_like(ids)
    special[:, 0] = special[:, -1] = 1
    batches = [dict(zip(("input_ids", "labels"), mask_tokens(ids, special, 119_547, 103, g))) for _ in range(steps)]
    timings = {"every position": [], "masked positions": []}
    for _ in range(2):  # interleaved; the first pass warms up, the second is kept
        for name, model in (("every position", full), ("masked positions", masked)):
            start = time.perf_counter()
            for batch in batches:
                model(**batch).loss.backward()
                model.zero_grad()
            timings[name].append((time.perf_counter() - start) / steps)
    every, only = (timings[k][-1] for k in ("every position", "masked positions"))
    print(f"mBERT shape, batch 4 x 512, {steps} steps (forward + backward), {torch.get_num_threads()} threads")
    print(f"head on every position:   {every:.2f} s/step")
    print(f"head on masked positions: {only:.2f} s/step")
    print(f"speed-up: {every / only:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--mbert", action="store_true")
    args = parser.parse_args()
    if args.mbert:
        return mbert_head(args.steps or 3)
    args.steps = args.steps or 40
    torch.set_num_threads(1)
    config = TinyBertConfig(sentences_per_language=300)
    languages = list(config.testbed.languages)
    train = {lang: pretraining_sentences(config, lang) for lang in languages}
    tokenizer, ranges = train_tokenizer(train, config.vocab_per_language, (),
                                        {lang: lexicon_vocab(config, lang) for lang in languages})
    layout = make_layout(config, tokenizer, ranges)
    rows = _encode({lang: LanguageTokenizer(tokenizer, layout, lang) for lang in languages}, train)
    order = random.Random(0)
    batches = [mask_batch(_batch([rows[order.randrange(len(rows))] for _ in range(config.batch_size)], layout,
                                 languages, tokenizer.pad_token_id), layout, languages, joint=True)
               for _ in range(args.steps)]
    model = build_model(config, len(tokenizer))
    timings = {"every position": [], "masked positions": []}
    for _ in range(2):  # interleaved, so that a busy neighbour slows both alike
        for name, loss_of in (("every position", lambda m, b: m(**b).loss),
                              ("masked positions", masked_positions_loss)):
            start = time.perf_counter()
            for batch in batches:
                loss_of(model, batch).backward()
                model.zero_grad()
            timings[name].append((time.perf_counter() - start) / len(batches))
    full, sparse = (min(timings[k]) for k in ("every position", "masked positions"))
    print(f"vocabulary {len(tokenizer)}, batch {config.batch_size}, {args.steps} steps (forward + backward), 1 thread")
    print(f"head on every position:   {full * 1000:.1f} ms/step")
    print(f"head on masked positions: {sparse * 1000:.1f} ms/step")
    print(f"speed-up: {full / sparse:.2f}x")


if __name__ == "__main__":
    main()
