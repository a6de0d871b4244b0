"""XNLI: each language's own (translated) train split; accuracy on validation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lnsub.trainables.tasks.base import Task, gather, model_device

XNLI_LABELS = ("entailment", "neutral", "contradiction")  # hub label ids


@dataclass(frozen=True)
class XNLI(Task):
    name: str = "xnli"
    hub_dataset: str = "facebook/xnli"
    languages: tuple[str, ...] = ("en", "fr", "de", "zh", "ru", "es", "ur", "ar", "hi", "sw")  # no fa
    metric: str = "accuracy"
    greater_is_better: bool = True
    head_prefixes: tuple[str, ...] = ("classifier.",)
    auto_model: str = "AutoModelForSequenceClassification"

    def features(self):
        from datasets import ClassLabel, Features, Value

        return Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=list(XNLI_LABELS))})

    def model_kwargs(self):
        return {"num_labels": len(XNLI_LABELS), "id2label": dict(enumerate(XNLI_LABELS)),
                "label2id": {n: i for i, n in enumerate(XNLI_LABELS)}}

    def preprocess(self, ds, tokenizer, max_length: int, seed: int = 0):
        def encode(batch):
            enc = tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length)
            enc["labels"] = batch["label"]
            return enc

        return ds.map(encode, batched=True, remove_columns=ds["train"].column_names)

    def collator(self, tokenizer, train: bool):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    @torch.no_grad()
    def evaluate(self, model, loader, accelerator=None) -> dict[str, float]:
        model.eval()
        device = model_device(model)
        correct = total = 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            hits = gather(accelerator, (model(**batch).logits.argmax(-1) == labels).long())
            correct += hits.sum().item()
            total += hits.numel()
        model.train()
        return {"accuracy": correct / max(total, 1)}
