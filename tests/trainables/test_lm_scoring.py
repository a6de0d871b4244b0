"""Perplexity and zero-shot XNLI scoring against a prefix-by-prefix loop (one forward per predicted token)."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lnsub.trainables import lm_scoring
from lnsub.trainables.errors import LnsubError
from lnsub.trainables.lm_scoring import XGLM_PROMPT, NLIPrompt

WORDS = ("<pad> <s> </s> <unk> the cat dog sat ran on mat a , right ? Yes Also No True False Neither "
         "Question Answer : or").split(" ")


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words, and punctuation apart
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def _model(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1)).double().eval()


def _loop_logprob(model, row: list[int], t: int) -> float:
    """log P(row[t] | row[:t]) from a forward of the prefix alone, no padding, no batch."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row[:t]])).logits[0, -1]
    return float(torch.log_softmax(logits, -1)[row[t]])


def test_token_logprobs_equal_a_prefix_by_prefix_loop():
    model = _model(30)
    rows = [[1, 5, 6, 7, 2], [1, 9, 2], [1, 4, 4, 4, 4, 8, 11, 2]]
    got = lm_scoring.token_logprobs(model, rows, batch_size=2)
    for row, lp in zip(rows, got):
        assert lp.shape == (len(row) - 1,)
        for t in range(1, len(row)):
            assert math.isclose(float(lp[t - 1]), _loop_logprob(model, row, t), abs_tol=1e-9)


def test_perplexity_is_exp_of_the_mean_nll_over_windows():
    tok = _tokenizer()
    model = _model(len(tok))
    texts = ["the cat sat on the mat", "a dog ran", "the dog sat on a cat , right ?"]
    result = lm_scoring.perplexity(model, tok, texts, max_length=4)
    nll, count = 0.0, 0
    for text in texts:
        row = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for start in range(0, len(row), 4):
            window = row[start:start + 4]
            for t in range(1, len(window)):
                nll -= _loop_logprob(model, window, t)
                count += 1
    assert result["tokens"] == count
    assert math.isclose(result["perplexity"], math.exp(nll / count), rel_tol=1e-9)
    whole = lm_scoring.perplexity(model, tok, texts)  # windows long enough: every token after <s> predicted
    assert whole["tokens"] == sum(len(t.split()) + 1 for t in texts)


EXAMPLES = [{"premise": "the cat sat on the mat", "hypothesis": "a cat sat", "label": 0},
            {"premise": "a dog ran", "hypothesis": "the dog sat on a mat", "label": 2},
            {"premise": "the dog sat", "hypothesis": "a cat ran", "label": 1}]


def test_xnli_label_words_scores_equal_brute_force():
    tok = _tokenizer()
    model = _model(len(tok), seed=3)
    result = lm_scoring.xnli_zero_shot(model, tok, EXAMPLES, batch_size=2)
    prompt = NLIPrompt()
    assert tok.unk_token_id not in tok("Question: True, False or Neither? Answer:")["input_ids"]
    for ex, scores, predicted in zip(EXAMPLES, result["scores"], result["predictions"]):
        context = f"{ex['premise']}\nQuestion: {ex['hypothesis']} True, False or Neither?\nAnswer:"
        row = [tok.bos_token_id] + tok(context, add_special_tokens=False)["input_ids"]
        expected = []
        for label in prompt.labels:
            label_ids = tok(label, add_special_tokens=False)["input_ids"]
            full = row + label_ids
            expected.append(sum(_loop_logprob(model, full, t) for t in range(len(row), len(full))))
        assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(scores, expected))
        assert predicted == max(range(3), key=lambda j: expected[j])
    assert result["accuracy"] == sum(p == ex["label"] for p, ex in zip(result["predictions"], EXAMPLES)) / 3


def test_xglm_prompt_ranks_as_whole_sentence_likelihoods():
    tok = _tokenizer()
    model = _model(len(tok), seed=5)
    result = lm_scoring.xnli_zero_shot(model, tok, EXAMPLES, XGLM_PROMPT)
    for ex, predicted in zip(EXAMPLES, result["predictions"]):
        totals = []
        for label in XGLM_PROMPT.labels:
            text = XGLM_PROMPT.template.format(premise=ex["premise"], hypothesis=ex["hypothesis"], label=label)
            row = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            totals.append(sum(_loop_logprob(model, row, t) for t in range(1, len(row))))
        assert predicted == max(range(3), key=lambda j: totals[j])
        assert len(set(totals)) == 3  # the label words are known tokens: the candidates differ


def test_a_prompt_without_context_is_refused():
    with pytest.raises(LnsubError, match="nothing to score"):
        lm_scoring.xnli_zero_shot(_model(len(_tokenizer())), _tokenizer(), EXAMPLES[:1],
                                  NLIPrompt("{premise} {hypothesis}{label}", ("", "", "")))


def test_unigram_perplexity_by_hand():
    train = [[9, 1, 1, 2], [9, 2]]  # predicted tokens: 1, 1, 2, 2 (the first of each row is context)
    held = [[9, 1, 3]]  # predicted: 1, 3
    vocab = 4
    p1, p3 = (2 + 1) / (4 + 4), (0 + 1) / (4 + 4)
    expected = math.exp(-(math.log(p1) + math.log(p3)) / 2)
    assert math.isclose(lm_scoring.unigram_perplexity(train, held, vocab), expected, rel_tol=1e-12)
