"""How long the real WikiANN and XNLI examples are: the length model of the hub-faithful copies and the benchmarks.

The Hub is unreachable here, and no published length histogram of these datasets was found, so the
lengths follow a model anchored on what the datasets' own cards publish: each language's train split
in bytes (`dataset_info`: num_bytes / num_examples, the Hugging Face cards of `facebook/xnli` and
`unimelb-nlp/wikiann`, as the `datasets` library computed them). A split's bytes are its Arrow
columns: for XNLI the premise and hypothesis text, an int64 label and two 4-byte offsets; for WikiANN
per word its text, a 4-byte offset, an int64 tag and a two-letter `langs` entry with its offset, plus
the `spans` strings. With the UTF-8 bytes of a word in the language's script (BYTES_PER_WORD, an
assumption: a word's letters at 1, 2 or 3 bytes each, and a space), that fixes the mean number of
words per example. Around that mean, word counts are log-normal with the spread LOG_SPREAD (an
assumption), and mBERT's WordPiece turns a word into SUBWORDS_PER_WORD tokens on average (an
assumption too: no mBERT vocabulary is at hand to measure it). What follows from these assumptions is
marked as such wherever the numbers are reported (README, Benchmarks).
"""

from __future__ import annotations

import math
import random

XNLI_TRAIN_EXAMPLES = 392_702
XNLI_TRAIN_BYTES = {  # facebook/xnli card, dataset_info, train num_bytes
    "en": 74_444_346, "fr": 85_809_099, "es": 81_383_604, "de": 84_684_460, "ru": 129_859_935,
    "ar": 107_399_934, "ur": 96_441_806, "hi": 170_594_284, "sw": 69_286_045,
}
WIKIANN_TRAIN_EXAMPLES = 20_000
WIKIANN_TRAIN_BYTES = {  # unimelb-nlp/wikiann card, dataset_info, train num_bytes
    "en": 4_649_601, "fr": 4_123_995, "es": 3_972_292, "de": 5_510_641, "fa": 4_618_098,
}
SAME_SCRIPT = {"ar": "fa", "ur": "fa"}  # WikiANN's ar and ur card figures were not read: fa's, same script
BYTES_PER_WORD = {"latin": 5.9, "arabic": 10.2, "cyrillic": 12.0, "devanagari": 12.7}  # assumed, a space included
SCRIPT = {"en": "latin", "fr": "latin", "es": "latin", "de": "latin", "sw": "latin",
          "ar": "arabic", "fa": "arabic", "ur": "arabic", "ru": "cyrillic", "hi": "devanagari"}
SUBWORDS_PER_WORD = {"latin": 1.3, "arabic": 1.5, "cyrillic": 1.5, "devanagari": 1.5}  # assumed (mBERT)
LOG_SPREAD = {"ner": 0.6, "premise": 0.5, "hypothesis": 0.4}  # assumed sigma of log(words)
PREMISE_SHARE = 2 / 3  # of a pair's words: MNLI's hypotheses are single sentences, about half a premise
WIKIANN_SPANS, WIKIANN_SPAN_WORDS = 1.4, 2.7  # assumed: entity spans per sentence, their words in all


def _script(language: str) -> str:
    return SCRIPT[language]


def xnli_pair_words(language: str) -> float:
    """Mean words of a premise and its hypothesis together, from the card's bytes per example."""
    table = XNLI_TRAIN_BYTES
    source = language if language in table else SAME_SCRIPT[language]
    text_bytes = table[source] / XNLI_TRAIN_EXAMPLES - 8 - 2 * 4  # less the int64 label and two offsets
    return text_bytes / BYTES_PER_WORD[_script(source)]


def wikiann_words(language: str) -> float:
    """Mean words of a WikiANN sentence, from the card's bytes per example."""
    table = WIKIANN_TRAIN_BYTES
    source = language if language in table else SAME_SCRIPT[language]
    word = BYTES_PER_WORD[_script(source)]
    fixed = 4 * 4 + WIKIANN_SPANS * (4 + len("PER: ")) + WIKIANN_SPAN_WORDS * word  # list offsets, spans
    per_word = (word - 1) + 4 + 8 + (2 + 4)  # text less its space, offset, int64 tag, langs entry and offset
    return (table[source] / WIKIANN_TRAIN_EXAMPLES - fixed) / per_word


def mean_words(kind: str, language: str) -> float:
    """Mean words of one `kind` of text: "ner" (a WikiANN sentence), "premise" or "hypothesis"."""
    if kind == "ner":
        return wikiann_words(language)
    pair = xnli_pair_words(language)
    return pair * (PREMISE_SHARE if kind == "premise" else 1 - PREMISE_SHARE)


def draw_words(rng: random.Random, kind: str, language: str) -> int:
    """A word count from the log-normal of `kind` in `language` (at least 1)."""
    sigma = LOG_SPREAD[kind]
    mu = math.log(mean_words(kind, language)) - sigma ** 2 / 2  # so that the mean is mean_words
    return max(1, round(rng.lognormvariate(mu, sigma)))


def mbert_length(rng: random.Random, task: str, language: str, max_length: int = 128) -> int:
    """An example's length in mBERT tokens under the model: sub-words of its words, [CLS] and [SEP]s, truncated."""
    fertility = SUBWORDS_PER_WORD[_script(language)]
    if task == "ner":
        tokens = 2 + round(draw_words(rng, "ner", language) * fertility)
    else:
        tokens = 3 + sum(round(draw_words(rng, kind, language) * fertility) for kind in ("premise", "hypothesis"))
    return min(tokens, max_length)


def mbert_lengths(task: str, language: str, n: int, seed: int = 0, max_length: int = 128) -> list[int]:
    rng = random.Random(f"lengths-{task}-{language}-{seed}")
    return [mbert_length(rng, task, language, max_length) for _ in range(n)]
