"""Tiny BERT pretraining step time: the prediction head on every position (HF's own loss) against the head on the
masked positions only (pretraining.masked_positions_loss), same model, same batches, one thread, one run.

Usage: python bench/pretraining.py [--steps 40]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
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
