"""Scoring text with a causal language model: per-language perplexity and zero-shot XNLI.

Pure functions of a model, a tokenizer and examples; nothing is trained. Each sequence is the text's
tokens (no special tokens from the tokenizer) framed by `bos` and `eos` (default: the tokenizer's, where
it has them; a decoupled tiny decoder passes each twin's own), and a token's log-probability is read
from the logits at the position before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from lnsub.trainables.errors import LnsubError


def _frame(tokenizer, texts: Sequence[str], bos: int | None, eos: int | None, end: bool = True) -> list[list[int]]:
    """Each text's tokens after `bos` and, with `end`, before `eos` (None: the tokenizer's, if it has one)."""
    bos = tokenizer.bos_token_id if bos is None else bos
    eos = (tokenizer.eos_token_id if eos is None else eos) if end else None
    return [([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
            for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def token_logprobs(model, rows: Sequence[Sequence[int]], batch_size: int = 16) -> list[torch.Tensor]:
    """Per row, log P(row[t] | row[:t]) for t = 1 .. len(row) - 1 (float64, on the CPU).

    Rows are right-padded into batches with an attention mask, so padding changes no score.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for i, r in enumerate(chunk):
                ids[i, :len(r)] = torch.tensor(r)
                attention[i, :len(r)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            logp = torch.log_softmax(logits.double(), dim=-1)[:, :-1].gather(2, ids[:, 1:, None].to(device))
            out += [logp[i, :len(r) - 1, 0].cpu() for i, r in enumerate(chunk)]
    finally:
        model.train(was_training)
    return out


def windows(row: list[int], length: int) -> list[list[int]]:
    """A long sequence cut into consecutive non-overlapping windows of at most `length` tokens (each of at
    least two, so it predicts something): the first token of each window is context only."""
    return [row[i:i + length] for i in range(0, len(row), length) if len(row[i:i + length]) > 1]


def perplexity(model, tokenizer, texts: Sequence[str], bos: int | None = None, eos: int | None = None,
               max_length: int = 1024, batch_size: int = 16) -> dict:
    """Held-out perplexity: exp of the mean negative log-likelihood (nats) over every predicted token.

    Each text is one sequence `bos text eos`; every token after the first is predicted, eos included.
    A sequence longer than `max_length` is cut into non-overlapping windows (the first token of each is
    not predicted). Returns {"perplexity", "nll" (mean, nats per token), "tokens" (predicted)}.
    """
    rows = [w for row in _frame(tokenizer, texts, bos, eos) for w in windows(row, max_length)]
    if not rows:
        raise LnsubError("no text to score: perplexity needs at least one sequence of two tokens")
    logps = token_logprobs(model, rows, batch_size)
    total = -sum(float(lp.sum()) for lp in logps)
    tokens = sum(lp.numel() for lp in logps)
    return {"perplexity": math.exp(total / tokens), "nll": total / tokens, "tokens": tokens}


@dataclass(frozen=True)
class NLIPrompt:
    """A zero-shot XNLI prompt: `template` with {premise}, {hypothesis} and {label}; `labels` in the hub's
    order (entailment, neutral, contradiction). A candidate's score is the log-likelihood of its tokens from
    the first one that differs from the text before {label}: with {label} last, that of the label words."""

    template: str = "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:{label}"
    labels: tuple[str, str, str] = (" True", " Neither", " False")


# The prompt of XGLM (Lin et al. 2022) and lm-evaluation-harness's xnli task, in English: the label sits
# between premise and hypothesis, so a candidate's score covers the label and the hypothesis after it, which
# ranks the candidates as their whole sentences' log-likelihoods do (the premise is common to all three).
XGLM_PROMPT = NLIPrompt("{premise}, right? {label}, {hypothesis}", ("Yes", "Also", "No"))


def _candidates(tokenizer, example: dict, prompt: NLIPrompt, bos: int | None) -> list[tuple[list[int], int]]:
    """(token ids of the filled prompt, index of its first scored token) for each label."""
    context = prompt.template.split("{label}")[0].format(premise=example["premise"],
                                                         hypothesis=example["hypothesis"])
    (prefix,) = _frame(tokenizer, [context], bos, None, end=False)
    out = []
    for label in prompt.labels:
        text = prompt.template.format(premise=example["premise"], hypothesis=example["hypothesis"], label=label)
        (ids,) = _frame(tokenizer, [text], bos, None, end=False)
        start = next((i for i, (a, b) in enumerate(zip(prefix, ids)) if a != b), min(len(prefix), len(ids)))
        if start == 0 or start >= len(ids):
            raise LnsubError(f"the NLI prompt leaves label {label!r} nothing to score after a context")
        out.append((ids, start))
    return out


def xnli_zero_shot(model, tokenizer, examples: Sequence[dict], prompt: NLIPrompt = NLIPrompt(),
                   bos: int | None = None, batch_size: int = 16) -> dict:
    """Zero-shot XNLI: each example's prediction is the label whose candidate scores the highest summed
    log-probability (NLIPrompt). Examples in the hub's schema (premise, hypothesis, label 0/1/2).

    Default prompt, after GPT-3's (Brown et al. 2020) for NLI, with the label words last:
        "{premise}\\nQuestion: {hypothesis} True, False or Neither?\\nAnswer: {True|Neither|False}"
    Returns {"accuracy", "examples", "predictions", "scores" (per example, per label)}.
    """
    candidates = [c for ex in examples for c in _candidates(tokenizer, ex, prompt, bos)]
    logps = token_logprobs(model, [ids for ids, _ in candidates], batch_size)
    flat = [float(lp[start - 1:].sum()) for lp, (_, start) in zip(logps, candidates)]
    k = len(prompt.labels)
    scores = [flat[i:i + k] for i in range(0, len(flat), k)]
    predictions = [max(range(k), key=lambda j, s=s: (s[j], -j)) for s in scores]
    hits = sum(p == ex["label"] for p, ex in zip(predictions, examples))
    return {"accuracy": hits / max(len(examples), 1), "examples": len(examples), "predictions": predictions,
            "scores": scores}


def unigram_perplexity(train: Sequence[Sequence[int]], held: Sequence[Sequence[int]], vocab_size: int) -> float:
    """The baseline a language model must beat: an add-one unigram model fitted on `train`'s predicted tokens
    (each row's tokens after its first) and scored on `held`'s, over a vocabulary of `vocab_size`."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for row in train:
        counts += torch.bincount(torch.tensor(row[1:], dtype=torch.long), minlength=vocab_size).double()
    logp = torch.log((counts + 1) / (counts.sum() + vocab_size))
    targets = torch.tensor([t for row in held for t in row[1:]], dtype=torch.long)
    return math.exp(-float(logp[targets].mean()))
