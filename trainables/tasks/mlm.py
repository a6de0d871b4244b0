"""Masked language modelling on Wikipedia text (docs/method.md: 512-token blocks, 15% masking, 80/10/10).

wikimedia/wikipedia has a single split, train. A cell's validation blocks come from the
documents that `held_out` picks by a hash of their id (spec.valid_documents): disjoint from
training, the same in every cell, and found without reading the dump to its end. A source
with its own validation split (the synthetic testbed) is used as is. Documents are read in
the dump's order (the Hub is streamed) and tokenised only until a split has its blocks, so
a cell never tokenises text it does not use. Validation masks are drawn once, block i's
from a generator seeded by (seed, i) alone: the same in every process, level and cell.

The prediction head runs on the masked positions only (`predict_masked_only`): projecting all 512
positions of a block onto mBERT's 119,547-word vocabulary costs about as many multiply-adds per token
as the whole encoder, and 85% of it would be thrown away. Loss, gradients and metrics are the same.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.tasks.base import LOCAL_SUFFIXES, PAPER_LANGUAGES, SPLITS, Task, gather, model_device

MLM_PROBABILITY = 0.15
EVAL_MASK_SEED = 1234  # validation masks are drawn once, the same for every level and cell
DOC_CHUNK = 64  # documents tokenised per tokenizer call: at most DOC_CHUNK - 1 are read beyond a split's need
BLOCKS_VERSION = 1  # part of the blocks' cache key: bump when the same source gives other blocks


def held_out(doc_id: str, fraction: float) -> bool:
    """Whether a document is in the carved validation split: sha256 of its id, as a number in [0, 1), < fraction."""
    digest = hashlib.sha256(str(doc_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def tokenize_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """The one place documents are tokenised (a test counts the documents passing here)."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def stream_blocks(texts, tokenizer, block_size: int, limit: int | None):
    """[CLS] body [SEP] blocks cut from consecutive documents (a block may span two), at most `limit`.

    Documents are pulled from the iterator `texts` DOC_CHUNK at a time and only while blocks are missing.
    """
    body, made, buffer = block_size - 2, 0, []
    texts = iter(texts)
    while limit is None or made < limit:
        chunk = list(itertools.islice(texts, DOC_CHUNK))
        if not chunk:
            return
        for ids in tokenize_texts(tokenizer, chunk):
            buffer.extend(ids)
        start = 0
        while len(buffer) - start >= body and (limit is None or made < limit):
            yield {"input_ids": [tokenizer.cls_token_id, *buffer[start:start + body], tokenizer.sep_token_id],
                   "attention_mask": [1] * block_size, "special_tokens_mask": [1] + [0] * body + [1]}
            start += body
            made += 1
        del buffer[:start]


def block_generator(seed: int, index: int) -> torch.Generator:
    """The generator block `index` draws its validation mask from: a function of (seed, index) only."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def mask_tokens(ids, special, vocab_size: int, mask_id: int, generator: torch.Generator):
    """15% of the non-special tokens as targets, 80% of them [MASK], 10% a random token, 10% kept."""
    labels = ids.clone()
    probability = torch.full(ids.shape, MLM_PROBABILITY).masked_fill_(special.bool(), 0.0)
    masked = torch.bernoulli(probability, generator=generator).bool()
    labels[~masked] = -100
    replaced = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & masked
    randomised = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & masked & ~replaced
    words = torch.randint(vocab_size, ids.shape, generator=generator)
    return torch.where(randomised, words, ids.masked_fill(replaced, mask_id)), labels


def premask(ds, tokenizer, seed: int = EVAL_MASK_SEED):
    """Fix the validation masks once, block by block, whatever the batching and the global RNG state."""
    vocab_size, mask_id = len(tokenizer), tokenizer.mask_token_id

    def mask(batch, indices):
        rows = [mask_tokens(torch.tensor(ids), torch.tensor(special), vocab_size, mask_id, block_generator(seed, i))
                for ids, special, i in zip(batch["input_ids"], batch["special_tokens_mask"], indices)]
        return {"input_ids": [r[0].tolist() for r in rows], "labels": [r[1].tolist() for r in rows]}

    return ds.map(mask, batched=True, batch_size=256, with_indices=True).remove_columns("special_tokens_mask")


def _documents(source: tuple, carve: tuple | None, features):
    """The texts of a source split's documents in order (streamed); `carve` = (fraction, held out or not)."""
    import datasets  # heavy: imported when data is read

    if source[0] == "hub":
        docs = datasets.load_dataset(source[1], source[2], split=source[3], streaming=True)
    else:
        docs = datasets.load_dataset(LOCAL_SUFFIXES[Path(source[1]).suffix], data_files={"train": source[1]},
                                     split="train", streaming=True, features=features)
    for doc in docs:
        if carve is None or held_out(doc["id"], carve[0]) == carve[1]:
            yield doc["text"]


def _generate(source: tuple, carve: tuple | None, features, tokenizer, block_size: int, limit: int | None):
    yield from stream_blocks(_documents(source, carve, features), tokenizer, block_size, limit)


def _fingerprint(source: tuple, carve, tokenizer, block_size: int, limit: int | None) -> str:
    from datasets.fingerprint import Hasher  # heavy: imported when data is read

    stamp = list(source)
    if source[0] == "local":  # a local copy that changes gets new blocks
        st = os.stat(source[1])
        stamp += [st.st_size, st.st_mtime_ns]
    key = json.dumps([BLOCKS_VERSION, stamp, carve, Hasher.hash(tokenizer), block_size, limit])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# model_type -> the attribute holding its MLM prediction head (transform, LayerNorm, vocabulary projection)
MLM_HEADS = {"bert": "cls"}


def predict_masked_only(model) -> bool:
    """Make `model(**batch, labels=labels)` run its MLM head on the positions whose label is not -100.

    Two hooks, so the module tree, its parameter names and `model(...)` itself are unchanged (under DDP
    the call goes through the wrapper, which synchronises the gradients): a pre-hook on the model keeps
    the labels of the masked positions only and notes where they are; a pre-hook on the head gathers
    those positions' hidden states. Hugging Face's own loss (cross-entropy over the labelled positions)
    then reads (n_masked, vocabulary) logits and n_masked labels: the same loss and gradients as over
    every position, since positions labelled -100 count for nothing. The logits returned are those rows.
    Without labels (or labels passed positionally) the model runs as before. Returns whether it applied.
    """
    head_name = MLM_HEADS.get(getattr(model.config, "model_type", None))
    if head_name is None or not hasattr(model, head_name):
        return False
    if not getattr(model, "_lnsub_masked_only", False):
        model.register_forward_pre_hook(_keep_masked_labels, with_kwargs=True)
        getattr(model, head_name).register_forward_pre_hook(_gather_masked_positions)
        model._lnsub_masked_only = True
    return True


def _keep_masked_labels(model, args, kwargs):
    head = getattr(model, MLM_HEADS[model.config.model_type])
    labels = kwargs.get("labels")
    head._lnsub_keep = None if labels is None else labels != -100
    if labels is None:
        return None
    return args, {**kwargs, "labels": labels[head._lnsub_keep]}


def _gather_masked_positions(head, args):
    keep, head._lnsub_keep = getattr(head, "_lnsub_keep", None), None
    if keep is None:
        return None
    return (args[0][keep], *args[1:])


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


@dataclass(frozen=True)
class MLM(Task):
    name: str = "mlm"
    hub_dataset: str = "wikimedia/wikipedia"
    languages: tuple[str, ...] = PAPER_LANGUAGES
    metric: str = "perplexity"
    greater_is_better: bool = False
    head_prefixes: tuple[str, ...] = ("cls.",)
    auto_model: str = "AutoModelForMaskedLM"
    dump: str = "20231101"  # the Wikipedia dump; the hub config is "<dump>.<language>"

    def hub_config(self, language: str) -> str:
        return f"{self.dump}.{language}"

    def features(self):
        from datasets import Features, Value

        return Features({"id": Value("string"), "url": Value("string"), "title": Value("string"),
                         "text": Value("string")})

    def prepare(self, language: str, data_dir: str | os.PathLike | None, tokenizer, max_length: int,
                seed: int = 0, sizes: tuple[int | None, int | None] = (None, None),
                valid_documents: float | None = None):
        """Blocks of at most `sizes` (train, validation); validation carved from train when valid_documents is set."""
        from datasets import DatasetDict  # heavy: imported when data is read

        self.check_language(language)
        splits = ("train",) if valid_documents is not None else SPLITS
        local = self.local_dir(language, data_dir)
        files = self.local_files(local, language, splits) if local is not None else None
        out = {}
        for split, limit in zip(SPLITS, sizes):
            source_split = "train" if valid_documents is not None else split
            source = (("local", str(files[source_split].resolve())) if files is not None
                      else ("hub", self.hub_dataset, self.hub_config(language), source_split))
            carve = None if valid_documents is None else (valid_documents, split == "validation")
            out[split] = self._blocks(language, source, carve, tokenizer, max_length, limit, splits)
        out["validation"] = premask(out["validation"], tokenizer, EVAL_MASK_SEED + seed)
        return DatasetDict(out)

    def _blocks(self, language: str, source: tuple, carve, tokenizer, block_size: int, limit: int | None,
                splits: tuple[str, ...]):
        """One split's blocks, written once to the datasets cache (other processes of the cell read it back)."""
        from datasets import Dataset, Features, Sequence, Value  # heavy: imported when data is read

        features = Features({k: Sequence(Value("int64")) for k in ("input_ids", "attention_mask",
                                                                   "special_tokens_mask")})
        try:
            return Dataset.from_generator(
                _generate, features=features, fingerprint=_fingerprint(source, carve, tokenizer, block_size, limit),
                gen_kwargs={"source": source, "carve": carve, "features": self.features(), "tokenizer": tokenizer,
                            "block_size": block_size, "limit": limit})
        except Exception as e:
            cause = _root_cause(e)
            if isinstance(cause, LnsubError):
                raise cause from e
            if source[0] == "hub":
                raise self.hub_error(language, cause, splits) from e
            raise LnsubError(f"cannot read {self.name}/{language} from {source[1]}: "
                             f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from e

    def load_model(self, name_or_path: str):
        """The pretrained model with its MLM head, which runs on the masked positions only (predict_masked_only)."""
        model = super().load_model(name_or_path)
        predict_masked_only(model)
        return model

    def collator(self, tokenizer, train: bool):
        from transformers import DataCollatorForLanguageModeling, default_data_collator

        if train:  # masks drawn from torch's global RNG, whose state the checkpoints carry
            return DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY)
        return default_data_collator

    @torch.no_grad()
    def evaluate(self, model, loader, accelerator=None) -> dict[str, float]:
        model.eval()
        device = model_device(model)
        loss_sum = count = correct = 0.0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            stats = gather(accelerator, _block_stats(model, batch))  # one row per block
            loss_sum += stats[:, 0].sum().item()
            count += stats[:, 1].sum().item()
            correct += stats[:, 2].sum().item()
        model.train()
        mean = loss_sum / max(count, 1.0)
        return {"perplexity": math.exp(min(mean, 50.0)), "loss": mean, "accuracy": correct / max(count, 1.0)}


def _block_stats(model, batch: dict) -> torch.Tensor:
    """Per block: summed NLL of its masked tokens, their count, how many the model predicts right.

    The model gets the labels, so its head runs on the masked positions only (predict_masked_only); a model
    without that hook returns every position's logits, and the masked ones are taken here.
    """
    labels = batch["labels"]
    keep = labels != -100
    logits = model(**batch).logits.float()
    if logits.dim() == 3:
        logits = logits[keep]
    targets, rows = labels[keep], keep.nonzero()[:, 0]
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    stats = torch.zeros(labels.shape[0], 3, device=labels.device, dtype=torch.float64)
    stats[:, 0].index_add_(0, rows, nll.double())
    stats[:, 1].index_add_(0, rows, torch.ones_like(nll, dtype=torch.float64))
    stats[:, 2].index_add_(0, rows, (logits.argmax(-1) == targets).double())
    return stats
