"""Masked language modelling on Wikipedia text (docs/method.md: 512-token blocks, 15% masking, 80/10/10)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lnsub.trainables.tasks.base import PAPER_LANGUAGES, Task, gather, model_device

MLM_PROBABILITY = 0.15
EVAL_MASK_SEED = 1234  # validation masks are drawn once, the same for every level and cell


def _blocks(batch, tokenizer, block_size: int):
    """Concatenate the texts and cut them into blocks of block_size tokens, [CLS] ... [SEP]."""
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    flat = [t for seq in ids for t in seq]
    body = block_size - 2
    n = len(flat) // body
    blocks = [[tokenizer.cls_token_id, *flat[i * body:(i + 1) * body], tokenizer.sep_token_id] for i in range(n)]
    return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks],
            "special_tokens_mask": [[1] + [0] * body + [1] for _ in blocks]}


def group_texts(ds, tokenizer, block_size: int):
    """Tokenised blocks; the remainder of each map batch is dropped, as in run_mlm."""
    return ds.map(_blocks, batched=True, batch_size=1000, remove_columns=ds.column_names,
                  fn_kwargs={"tokenizer": tokenizer, "block_size": block_size})


def premask(ds, tokenizer, seed: int = EVAL_MASK_SEED):
    """Fix the validation masks once (80/10/10 via the transformers collator), independent of batching."""
    from transformers import DataCollatorForLanguageModeling

    def mask(batch, indices):
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY,
                                                   seed=seed + indices[0])
        inputs = torch.tensor(batch["input_ids"])
        special = torch.tensor(batch["special_tokens_mask"])
        masked, labels = collator.torch_mask_tokens(inputs.clone(), special_tokens_mask=special)
        return {"input_ids": masked.tolist(), "labels": labels.tolist()}

    return ds.map(mask, batched=True, batch_size=256, with_indices=True).remove_columns("special_tokens_mask")


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

    def preprocess(self, ds, tokenizer, max_length: int, seed: int = 0):
        from datasets import DatasetDict

        train = group_texts(ds["train"], tokenizer, max_length)
        valid = premask(group_texts(ds["validation"], tokenizer, max_length), tokenizer, EVAL_MASK_SEED + seed)
        return DatasetDict(train=train, validation=valid)

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
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            keep = labels != -100
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
            stats = torch.stack([(nll * keep).sum(1), keep.sum(1).float(),
                                 ((logits.argmax(-1) == labels) & keep).sum(1).float()], dim=1)
            stats = gather(accelerator, stats)  # one row per block
            loss_sum += stats[:, 0].sum().item()
            count += stats[:, 1].sum().item()
            correct += stats[:, 2].sum().item()
        model.train()
        mean = loss_sum / max(count, 1.0)
        return {"perplexity": math.exp(min(mean, 50.0)), "loss": mean, "accuracy": correct / max(count, 1.0)}
