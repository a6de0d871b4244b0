"""The mBERT-shaped rehearsal: `bert-base-multilingual-cased`'s architecture, randomly initialised,
and hub-faithful local copies of the three datasets, so that `--grid rehearsal` runs the `full`
grid's code path (real language codes, `from_pretrained(<folder>)`, the real loaders) offline.

Layout (`lnsub rehearsal --out DIR`, each folder built whole, DONE last):
    DIR/data/<task>/<language>/<split>.jsonl    as tests/hub_fixtures.py, at the sizes below
    DIR/model/                                  config.json, model.safetensors, the tokenizer files

The model is saved as `BertForPreTraining` (encoder, pooler, MLM and NSP heads), which is what the
hub's mBERT checkpoint holds: XNLI cells load its pooler, MLM cells its prediction head. Only the
vocabulary differs from mBERT's: a WordPiece trained on the copies (mBERT's 119,547 rows would make a
CPU rehearsal time its embedding gradients, which IMP never prunes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lnsub.trainables.storage.local import atomic_dir, is_built, write_json
from lnsub.orchestrator.rehearsal.hubcopies import LANGUAGES, write_hub_fixtures

log = logging.getLogger(__name__)

# bert-base-multilingual-cased's config.json, less its vocabulary size
MBERT_ARCHITECTURE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512,
                      "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                      "initializer_range": 0.02, "layer_norm_eps": 1e-12}
VOCAB_SIZE = 4000
# rows per split: enough for the rehearsal grid's sizes (MLM carves 2% of its documents for validation)
SIZES = {"mlm": {"train": 600}, "ner": {"train": 300, "validation": 100, "test": 100},
         "xnli": {"train": 300, "validation": 100, "test": 100}}
REPORT = "rehearsal.json"


def mbert_config(vocab_size: int):
    from transformers import BertConfig  # heavy: only building the model needs it

    return BertConfig(vocab_size=vocab_size, architectures=["BertForPreTraining"], **MBERT_ARCHITECTURE)


def train_wordpiece(texts: list[str], vocab_size: int):
    """A cased WordPiece over all languages at once, built the way mBERT's is, wrapped for `save_pretrained`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, do_lower_case=False, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


# google/mt5-base's config.json, less its vocabulary size (250,112): the paper's second model, XNLI only
MT5_ARCHITECTURE = {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12,
                    "d_kv": 64, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
                    "relative_attention_num_buckets": 32, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
                    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
MT5_VOCAB = 250_112


def mt5_config(vocab_size: int = MT5_VOCAB):
    """mt5-base's architecture (MT5ForConditionalGeneration), at `vocab_size`."""
    from transformers import MT5Config  # heavy: only building the model needs it

    return MT5Config(vocab_size=vocab_size, architectures=["MT5ForConditionalGeneration"], **MT5_ARCHITECTURE)


def _texts(data: Path) -> list[str]:
    """Every text of the copies, for the WordPiece vocabulary (all languages at once, as mBERT's)."""
    from datasets import load_dataset  # heavy: only building the tokenizer needs it

    texts: list[str] = []
    for path in sorted(data.glob("*/*/train.jsonl")):
        ds = load_dataset("json", data_files=str(path), split="train")
        for column in ("text", "premise", "hypothesis"):
            if column in ds.column_names:
                texts += ds[column]
        if "tokens" in ds.column_names:
            texts += [" ".join(tokens) for tokens in ds["tokens"]]
    return texts


def build_model(data: Path, out: Path, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> dict:
    """A randomly initialised mBERT-shaped model and a WordPiece trained on `data`, saved to `out`."""
    from transformers import BertForPreTraining, set_seed

    tokenizer = train_wordpiece(_texts(data), vocab_size)
    set_seed(seed)
    model = BertForPreTraining(mbert_config(len(tokenizer)))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer), "seed": seed}


def ensure_rehearsal(out: str | Path) -> dict[str, Path]:
    """Build (once) the rehearsal's data and model under `out`; returns their folders."""
    out = Path(out).expanduser().resolve()
    data, model = out / "data", out / "model"
    if not is_built(data):
        log.info("writing hub-faithful copies for %s to %s", ", ".join(LANGUAGES), data)
        with atomic_dir(data) as tmp:
            write_hub_fixtures(tmp, SIZES)
    if not is_built(model):
        log.info("building the mBERT-shaped model (random weights) in %s", model)
        started = time.perf_counter()
        with atomic_dir(model) as tmp:
            report = build_model(data, tmp)
            write_json(tmp / REPORT, {**report, "seconds": round(time.perf_counter() - started, 1),
                                      "architecture": MBERT_ARCHITECTURE})
    return {"data": data, "model": model}
