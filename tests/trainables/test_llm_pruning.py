"""Prunable sets of XLM-R and of decoder-only LLMs (the Llama family, BLOOM), pinned at real shapes.

Models are built on the meta device from their published configs' values (no weights, no memory, no Hub).
References independent of lnsub's rule: closed forms per block from the config's numbers, the published
total parameter counts, and a plain walk over `named_modules()` by name.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                          XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaForSequenceClassification,
                          XLMRobertaModel)

from lnsub.trainables import pruning

# Qwen/Qwen2.5-0.5B config.json: hidden 896, intermediate 4864, 24 layers, 14 heads (head_dim 64), 2 kv heads,
# vocabulary 151936, tie_word_embeddings true
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
# bigscience/bloom-560m config.json: hidden 1024, 24 layers, 16 heads, vocabulary 250880, tied lm_head (4h MLP)
BLOOM_560M = dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16, tie_word_embeddings=True)
# FacebookAI/xlm-roberta-base config.json: BERT-base shapes, vocabulary 250002, 514 positions, one token type
XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)


def _qwen_block(h: int, inter: int, heads: int, kv: int) -> int:
    head_dim = h // heads
    return 2 * h * h + 2 * h * kv * head_dim + 3 * h * inter  # q, o; k, v (grouped); gate, up, down


def _walk(model: nn.Module, endings: tuple[str, ...]) -> dict[str, int]:
    """{parameter name: size} of every Linear weight inside a numbered block whose module name ends in `endings`."""
    return {f"{n}.weight": m.weight.numel() for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.endswith(endings) and any(part.isdigit() for part in n.split("."))}


LLAMA_ENDINGS = tuple(f"self_attn.{m}_proj" for m in "qkvo") + tuple(f"mlp.{m}_proj" for m in ("gate", "up", "down"))
BLOOM_ENDINGS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
BERT_ENDINGS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")


def test_qwen25_05b_counts_on_the_meta_device():
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B))
    params = pruning.prunable_parameters(model)
    block = _qwen_block(896, 4864, 14, 2)
    assert block == 14_909_440
    assert len(params) == 24 * 7 and pruning.prunable_count(params) == 24 * block == 357_826_560
    assert {p.name: int(torch.tensor(p.shape).prod()) for p in params} == _walk(model, LLAMA_ENDINGS)
    # the published total (embeddings tied to lm_head, biases on q k v, RMSNorms): 494,032,768
    assert sum(p.numel() for p in model.parameters()) == 494_032_768
    assert {p.component for p in params} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert {p.unit for p in params} == {"all"} and sorted({p.layer for p in params}) == list(range(24))
    assert not any(w in p.name for p in params for w in ("embed", "norm", "lm_head", "bias"))


def test_bloom_560m_counts_on_the_meta_device():
    with torch.device("meta"):
        model = BloomForCausalLM(BloomConfig(**BLOOM_560M))
    params = pruning.prunable_parameters(model)
    h = 1024
    block = 3 * h * h + h * h + 4 * h * h + 4 * h * h  # fused qkv, attention dense, h->4h, 4h->h
    assert len(params) == 24 * 4 and pruning.prunable_count(params) == 24 * block == 301_989_888
    assert {p.name: int(torch.tensor(p.shape).prod()) for p in params} == _walk(model, BLOOM_ENDINGS)
    assert sum(p.numel() for p in model.parameters()) == 559_214_592  # the published total
    assert {p.component for p in params} == {"qkv", "o", "up", "down"}
    assert all(p.name.startswith("transformer.h.") for p in params)


def test_xlmr_base_counts_on_the_meta_device():
    with torch.device("meta"):
        base = XLMRobertaModel(XLMRobertaConfig(**XLMR_BASE))
        mlm = XLMRobertaForMaskedLM(XLMRobertaConfig(**XLMR_BASE))
    encoder = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert encoder == 84_934_656  # the same figure as mBERT's: the same encoder shape
    with_pooler = pruning.prunable_parameters(base)
    assert len(with_pooler) == 73 and pruning.prunable_count(with_pooler) == encoder + 768 * 768
    assert sum(p.numel() for p in base.parameters()) == 278_043_648  # xlm-roberta-base's published total
    params = pruning.prunable_parameters(mlm)  # the MLM model has no pooler; its head is never pruned
    assert len(params) == 72 and pruning.prunable_count(params) == encoder
    assert all(p.name.startswith("roberta.encoder.layer.") for p in params)
    assert {p.name: int(torch.tensor(p.shape).prod()) for p in params} == _walk(mlm, BERT_ENDINGS)


def test_xlmr_classifier_prunes_the_encoder_not_the_head():
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(XLMRobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        num_labels=3))
    params = pruning.prunable_parameters(model)
    assert pruning.prunable_count(params) == 2 * (4 * 16 * 16 + 2 * 16 * 32)
    assert not any(p.name.startswith("classifier") for p in params)
    assert pruning.is_backbone(model, "roberta.embeddings.word_embeddings.weight")
    assert not pruning.is_backbone(model, "classifier.out_proj.weight")


@pytest.mark.parametrize("make", [
    lambda: LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2)),
    lambda: MistralForCausalLM(MistralConfig(vocab_size=40, hidden_size=32, intermediate_size=48,
                                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)),
    lambda: Qwen3ForCausalLM(Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
], ids=["llama", "mistral", "qwen3"])
def test_llama_family_prunable_set_equals_an_independent_enumeration(make):
    torch.manual_seed(0)
    model = make()
    params = pruning.prunable_parameters(model)
    walked = _walk(model, LLAMA_ENDINGS)
    assert {p.name for p in params} == set(walked) and len(params) == 3 * 7
    assert pruning.prunable_count(params) == 3 * _qwen_block(32, 48, 4, 2) == sum(walked.values())
    for p in params:  # the name alone says where a weight sits, so overlap can group by layer and component
        assert pruning.locate_name(p.name) == (p.stack, p.layer, p.component)
    assert not any("norm" in p.name for p in params)  # Qwen3's q_norm and k_norm are norms, never pruned


def test_bloom_names_locate_and_the_head_is_never_pruned():
    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=40, hidden_size=16, n_layer=2, n_head=2))
    params = pruning.prunable_parameters(model)
    for p in params:
        assert pruning.locate_name(p.name) == (None, p.layer, p.component)
    assert pruning.is_backbone(model, "transformer.word_embeddings.weight")
    masks = pruning.one_shot_masks(dict(model.named_parameters()), params, 0.5)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * pruning.prunable_count(params))


def test_overlap_groups_decoder_masks_by_layer_and_component():
    from lnsub.analysis.overlap import group_of

    assert group_of("model.layers.3.mlp.gate_proj.weight", "layer") == "layer_3"
    assert group_of("model.layers.3.mlp.gate_proj.weight", "component") == "gate"
    assert group_of("transformer.h.11.self_attention.query_key_value.weight", "component") == "qkv"
    assert group_of("transformer.h.11.mlp.dense_4h_to_h.weight", "layer") == "layer_11"
    assert group_of("roberta.encoder.layer.5.output.dense.weight", "component") == "output"
    assert group_of("model.layers.0.self_attn.o_proj.weight", "stack") is None
