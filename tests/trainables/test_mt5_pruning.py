"""mT5's prunable set, its exact pruned counts per unit, and rewinding (docs/method.md).

Figures are checked against references independent of lnsub's rule: the closed form per block
(encoder 4 d_model·(heads·d_kv) + 3 d_model·d_ff; decoder twice the attention) and a plain walk
over `named_parameters()` by name.
"""

from __future__ import annotations

import pytest
import torch
from transformers import MT5Config, MT5ForConditionalGeneration

from lnsub.trainables import pruning
from lnsub.trainables.imp import rewind, split_state
from lnsub.orchestrator.rehearsal.build import MT5_ARCHITECTURE, MT5_VOCAB, mt5_config

# google/mt5-base: d_model 768, d_ff 2048, 12 + 12 blocks, inner attention dim 12 heads x 64 = 768
MT5_BASE_ENCODER = 12 * (4 * 768 * 768 + 3 * 768 * 2048)  # 84,934,656
MT5_BASE_DECODER = 12 * (8 * 768 * 768 + 3 * 768 * 2048)  # 113,246,208
ATTENTION = ("SelfAttention", "EncDecAttention")
FEED_FORWARD = ("wi", "wi_0", "wi_1", "wo")


def _walk(model) -> dict[str, int]:
    """Prunable weights per stack, found by name alone: attention q/k/v/o and feed-forward matrices of blocks."""
    totals = {"encoder": 0, "decoder": 0}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[0] not in totals or parts[1] != "block" or parts[-1] != "weight":
            continue
        attention = parts[-3] in ATTENTION and parts[-2] in ("q", "k", "v", "o")
        feed_forward = parts[-3] == "DenseReluDense" and parts[-2] in FEED_FORWARD
        if attention or feed_forward:
            totals[parts[0]] += p.numel()
    return totals


def _tiny_mt5(seed: int = 0) -> MT5ForConditionalGeneration:
    torch.manual_seed(seed)
    # per encoder block 4 x 16x16 + 3 x 16x24 = 2,176; per decoder block 8 x 256 + 1,152 = 3,200
    return MT5ForConditionalGeneration(MT5Config(vocab_size=40, d_model=16, d_ff=24, num_layers=2,
                                                 num_decoder_layers=2, num_heads=2, d_kv=8,
                                                 feed_forward_proj="gated-gelu", tie_word_embeddings=False))


def test_mt5_base_figures():
    assert MT5_BASE_ENCODER == 84_934_656 and MT5_BASE_DECODER == 113_246_208
    assert MT5_BASE_ENCODER + MT5_BASE_DECODER == 198_180_864
    a = MT5_ARCHITECTURE
    assert (a["d_model"], a["d_ff"], a["num_layers"], a["num_decoder_layers"], a["num_heads"], a["d_kv"]) == (
        768, 2048, 12, 12, 12, 64) and a["feed_forward_proj"] == "gated-gelu" and not a["tie_word_embeddings"]


def test_mt5_base_shaped_rehearsal_model_counts_on_the_meta_device():
    """mt5-base's architecture at its true vocabulary, randomly initialised on the meta device (no memory)."""
    with torch.device("meta"):
        model = MT5ForConditionalGeneration(mt5_config(MT5_VOCAB))
    params = pruning.prunable_parameters(model)
    assert len(params) == 12 * 7 + 12 * 11  # encoder q k v o wi_0 wi_1 wo; decoder adds cross q k v o
    units = pruning.pruning_units(params)
    by_unit = {u: pruning.prunable_count([p for p in params if p.unit == u]) for u in units}
    assert by_unit == {"encoder": MT5_BASE_ENCODER, "decoder": MT5_BASE_DECODER} == _walk(model)
    assert pruning.prunable_count(params) == 198_180_864
    never = ("shared", "embed_tokens", "layer_norm", "relative_attention_bias", "lm_head")
    assert not any(word in p.name for p in params for word in never)
    assert {p.component for p in params} == {f"{kind}_{m}" for kind in ("self", "cross") for m in "qkvo"} | {
        "wi_0", "wi_1", "wo"}


def test_prunable_set_equals_an_independent_enumeration():
    model = _tiny_mt5()
    params = pruning.prunable_parameters(model)
    walked = {n for n, p in model.named_parameters()
              if n.split(".")[0] in ("encoder", "decoder") and ".block." in n and n.endswith(".weight")
              and ((n.split(".")[-3] in ATTENTION and n.split(".")[-2] in "qkvo")
                   or (n.split(".")[-3] == "DenseReluDense" and n.split(".")[-2] in FEED_FORWARD))}
    assert {p.name for p in params} == walked
    assert sum(_walk(model).values()) == pruning.prunable_count(params) == 2 * 2176 + 2 * 3200
    for p in params:  # the name alone gives back where it sits
        assert pruning.locate_name(p.name) == (p.stack, p.layer, p.component)


def test_mt5_sequence_classification_prunes_its_backbone_not_its_head():
    from transformers import MT5ForSequenceClassification

    torch.manual_seed(0)
    model = MT5ForSequenceClassification(MT5Config(vocab_size=40, d_model=16, d_ff=24, num_layers=2, num_heads=2,
                                                   d_kv=8, feed_forward_proj="gated-gelu", num_labels=3))
    params = pruning.prunable_parameters(model)
    assert all(p.name.startswith("transformer.") for p in params)
    assert pruning.prunable_count(params) == 2 * 2176 + 2 * 3200


@pytest.mark.parametrize("fraction,levels", [(0.1, 9), (0.2, 4)])
def test_exact_pruned_counts_in_each_stack(fraction, levels):
    """Each stack is pruned to the level's sparsity on its own (as the authors' pruning_mt5_model does)."""
    model = _tiny_mt5()
    params = pruning.prunable_parameters(model)
    units = pruning.pruning_units(params)
    sizes = {u: sum(model.get_parameter(n).numel() for n in names) for u, names in units.items()}
    masks = pruning.dense_masks(params)
    generator = torch.Generator().manual_seed(3)
    for level in range(1, levels + 1):
        weights = {p.name: torch.randn(p.shape, generator=generator) for p in params}
        new = pruning.magnitude_prune(weights, masks, level, fraction, units)
        for unit, names in units.items():
            zeros = sum(int((~new[n]).sum()) for n in names)
            assert zeros == round(level * fraction * sizes[unit]), (level, unit)
        assert all(bool((new[n] <= masks[n]).all()) for n in masks)  # nested in the previous level's mask
        masks = new
    for make in (lambda s: pruning.random_masks(params, s, seed=0),
                 lambda s: pruning.one_shot_masks(dict(model.named_parameters()), params, s)):
        m = make(0.5)
        for unit, names in units.items():
            assert sum(int((~m[n]).sum()) for n in names) == round(0.5 * sizes[unit])


def _untied(model):
    """mt5-base's own checkpoint has an untied lm_head; transformers 5's MT5Config ties it to `shared` always."""
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model


@pytest.mark.parametrize("untie", [False, True])
def test_rewinding_restores_every_backbone_tensor_and_carries_the_head(untie):
    model = _untied(_tiny_mt5()) if untie else _tiny_mt5()
    theta0, head0, tied = split_state(model)
    # an untied LM head is the task head; a tied one is the shared embedding and follows the backbone
    assert (set(head0), tied - {"lm_head.weight"}) == ({"lm_head.weight"} if untie else set(), set())
    assert "shared.weight" in theta0 and any("relative_attention_bias" in k for k in theta0)
    assert any(k.endswith("layer_norm.weight") for k in theta0) and any(k.startswith("decoder.") for k in theta0)
    params = pruning.prunable_parameters(model)
    masks = pruning.random_masks(params, 0.3, seed=1)
    with torch.no_grad():  # "training": every tensor moves
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    _, trained_head, _ = split_state(model)
    rewind(model, theta0, trained_head, tied, masks)
    state = model.state_dict()
    for name, value in theta0.items():
        expected = value * masks[name] if name in masks else value
        assert torch.equal(state[name], expected), name
    if untie:  # carried over from the trained model, not rewound
        assert torch.equal(state["lm_head.weight"], trained_head["lm_head.weight"])
        assert not torch.equal(state["lm_head.weight"], head0["lm_head.weight"])
    else:
        assert torch.equal(state["lm_head.weight"], theta0["shared.weight"])


def test_the_testbeds_tiny_mt5_counts_by_the_closed_form():
    """The tiny mT5 the testbed pretrains (TinyMT5Config's defaults), built on the meta device."""
    from lnsub.trainables.testbed.tinymt5 import TinyMT5Config, build_model

    c = TinyMT5Config()
    with torch.device("meta"):
        model = build_model(c, c.vocab_size)
    inner = c.heads * c.d_kv
    encoder = c.layers * (4 * c.d_model * inner + 3 * c.d_model * c.d_ff)
    decoder = c.layers * (8 * c.d_model * inner + 3 * c.d_model * c.d_ff)
    assert (encoder, decoder) == (122_880, 172_032)  # the figures the README gives
    params = pruning.prunable_parameters(model)
    by_unit = {u: pruning.prunable_count([p for p in params if p.unit == u]) for u in pruning.pruning_units(params)}
    assert by_unit == {"encoder": encoder, "decoder": decoder} == _walk(model)
