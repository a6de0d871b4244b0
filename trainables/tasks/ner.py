"""WikiANN named-entity recognition; only the first sub-word of each word is labelled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lnsub.trainables.tasks.base import Task, gather, model_device

WIKIANN_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")  # hub label ids
IGNORE = -100


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label the first sub-word of each word; later sub-words and special tokens get -100."""
    out, previous = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == previous else word_labels[w])
        previous = w
    return out


@dataclass(frozen=True)
class NER(Task):
    name: str = "ner"
    hub_dataset: str = "unimelb-nlp/wikiann"
    languages: tuple[str, ...] = ("en", "fr", "de", "zh", "ru", "es", "fa", "ur", "ar")  # no hi, no sw
    metric: str = "f1"
    greater_is_better: bool = True
    head_prefixes: tuple[str, ...] = ("classifier.",)
    auto_model: str = "AutoModelForTokenClassification"

    def features(self):
        from datasets import ClassLabel, Features, Sequence, Value

        return Features({"tokens": Sequence(Value("string")),
                         "ner_tags": Sequence(ClassLabel(names=list(WIKIANN_LABELS))),
                         "langs": Sequence(Value("string")), "spans": Sequence(Value("string"))})

    def model_kwargs(self):
        return {"num_labels": len(WIKIANN_LABELS), "id2label": dict(enumerate(WIKIANN_LABELS)),
                "label2id": {n: i for i, n in enumerate(WIKIANN_LABELS)}}

    def preprocess(self, ds, tokenizer, max_length: int, seed: int = 0):
        def encode(batch):
            enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
            enc["labels"] = [align_labels(enc.word_ids(i), tags) for i, tags in enumerate(batch["ner_tags"])]
            return enc

        return ds.map(encode, batched=True, remove_columns=ds["train"].column_names)

    def collator(self, tokenizer, train: bool):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

    @torch.no_grad()
    def evaluate(self, model, loader, accelerator=None) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        model.eval()
        device = model_device(model)
        gold, pred = [], []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            predictions = model(**batch).logits.argmax(-1)
            if accelerator is not None:  # sequences differ in length across processes
                predictions = accelerator.pad_across_processes(predictions, dim=1, pad_index=IGNORE)
                labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORE)
            predictions, labels = gather(accelerator, predictions), gather(accelerator, labels)
            for p_row, l_row in zip(predictions.tolist(), labels.tolist()):
                keep = [(p, l) for p, l in zip(p_row, l_row) if l != IGNORE]
                gold.append([WIKIANN_LABELS[l] for _, l in keep])
                pred.append([WIKIANN_LABELS[p] for p, _ in keep])
        model.train()
        # an untrained model may predict no entity at all: its precision is 0, not a warning
        return {"f1": f1_score(gold, pred, zero_division=0), "precision": precision_score(gold, pred, zero_division=0),
                "recall": recall_score(gold, pred, zero_division=0)}
