"""The Qwen2.5-0.5B-shaped rehearsal of one-shot discovery: `Qwen/Qwen2.5-0.5B`'s architecture, randomly
initialised, and hub-faithful local copies of Wikipedia and XNLI, so that `--grid rehearsal-decoder` runs the
`oneshot-qwen` grid's code path (real language codes, `from_pretrained(<folder>)`, clm's carve of the Wikipedia
copy, the XNLI loader, calibration, Wanda and SparseGPT block by block, scoring) offline.

Layout (`lnsub rehearsal --decoder --out DIR`, each folder built whole, DONE last):
    DIR/data/<task>/<language>/<split>.jsonl    hubcopies.py's copies (mlm's Wikipedia, which clm reads; xnli)
    DIR/model/                                  config.json, model.safetensors, the tokenizer files

Only the vocabulary differs from Qwen2.5's: a byte-level BPE trained on the copies (151,936 rows would make
a CPU rehearsal score its logits, which nothing prunes); like Qwen2.5's tokenizer it has no beginning-of-
sequence token and `<|endoftext|>` as end of sequence and padding.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lnsub.orchestrator.rehearsal.build import _texts
from lnsub.orchestrator.rehearsal.hubcopies import write_hub_fixtures
from lnsub.trainables.storage.local import atomic_dir, is_built, write_json

log = logging.getLogger(__name__)

# Qwen/Qwen2.5-0.5B's config.json, less its vocabulary size and special token ids
QWEN_ARCHITECTURE = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                     "hidden_act": "silu", "use_sliding_window": False, "attention_dropout": 0.0}
VOCAB_SIZE = 4000
END = "<|endoftext|>"
SIZES = {"mlm": {"train": 300}, "xnli": {"train": 60, "validation": 20, "test": 10}}
REPORT = "rehearsal.json"


def qwen_config(vocab_size: int, end_id: int, layers: int | None = None):
    from transformers import Qwen2Config  # heavy: only building the model needs it

    arch = {**QWEN_ARCHITECTURE, **({"num_hidden_layers": layers} if layers else {})}
    return Qwen2Config(vocab_size=vocab_size, bos_token_id=None, eos_token_id=end_id, pad_token_id=end_id,
                       architectures=["Qwen2ForCausalLM"], **arch)


def train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE over all languages at once, as Qwen2's, wrapped for `save_pretrained`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token=END)


def build_model(data: Path, out: Path, layers: int | None = None, seed: int = 0) -> dict:
    """A randomly initialised Qwen2.5-0.5B-shaped decoder and a BPE trained on `data`, saved to `out`."""
    from transformers import Qwen2ForCausalLM, set_seed

    tokenizer = train_bpe(_texts(data), VOCAB_SIZE)
    set_seed(seed)
    model = Qwen2ForCausalLM(qwen_config(len(tokenizer), tokenizer.eos_token_id, layers))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer), "seed": seed}


def ensure_decoder_rehearsal(out: str | Path, layers: int | None = None) -> dict[str, Path]:
    """Build (once) the decoder rehearsal's data and model under `out`; returns their folders. `layers` cuts the
    stack (tests); the rehearsal proper has Qwen2.5-0.5B's 24."""
    out = Path(out).expanduser().resolve()
    data, model = out / "data", out / "model"
    if not is_built(data):
        log.info("writing hub-faithful copies to %s", data)
        with atomic_dir(data) as tmp:
            write_hub_fixtures(tmp, SIZES)
    if not is_built(model):
        log.info("building the Qwen2.5-0.5B-shaped decoder (random weights) in %s", model)
        started = time.perf_counter()
        with atomic_dir(model) as tmp:
            report = build_model(data, tmp, layers)
            write_json(tmp / REPORT, {**report, "seconds": round(time.perf_counter() - started, 1),
                                      "architecture": QWEN_ARCHITECTURE, "layers": layers or 24})
    return {"data": data, "model": model}
