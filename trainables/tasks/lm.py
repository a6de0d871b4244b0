"""Tasks a decoder LM is scored on as it is, with no training: causal-LM perplexity and zero-shot XNLI.

One-shot discovery (trainables.oneshot_cell) prunes a pretrained decoder from a calibration set of the cell's
language and scores the pruned model here; nothing is fine-tuned, so there is no task head.

    clm            Causal-LM perplexity on the language's held-out Wikipedia text: the same carve as MLM
                   (tasks/mlm.py `held_out`, spec.valid_documents of the documents by a hash of their id), read
                   from the same data (the Hub's wikimedia/wikipedia, or DIR/mlm/<language>/ in its schema).
                   Each document is one sequence `bos text eos`, cut into windows of max_length tokens
                   (lm_scoring.perplexity). The calibration set: windows of max_length tokens drawn from the
                   training documents (oneshot.calibration_windows), as Wanda's and SparseGPT's code draws them.
    xnli-zeroshot  XNLI's validation split scored by the log-likelihood of the label words
                   (lm_scoring.xnli_zero_shot) with the prompt
                       "{premise}\\nQuestion: {hypothesis} True, False or Neither?\\nAnswer: {True|Neither|False}"
                   (English label words for every language; lm_scoring.NLIPrompt holds them). The calibration
                   set: windows from the language's XNLI training premises and hypotheses.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from lnsub.trainables import lm_scoring
from lnsub.trainables.tasks.base import SPLITS, Task
from lnsub.trainables.tasks.mlm import MLM, _documents
from lnsub.trainables.tasks.xnli import XNLI

NLI_PROMPT = lm_scoring.NLIPrompt()


@dataclass(frozen=True)
class LMTask(Task):
    """A task scored as is; its data are texts (calibration) and an evaluation set."""

    head_prefixes: tuple[str, ...] = ("lm_head.",)
    auto_model: str = "AutoModelForCausalLM"
    trainable: bool = False

    def calibration_texts(self, language: str, data_dir, limit: int | None, valid_documents: float | None) -> list[str]:
        raise NotImplementedError

    def evaluation_set(self, language: str, data_dir, limit: int | None, valid_documents: float | None) -> list:
        raise NotImplementedError

    def score(self, model, tokenizer, examples: list, bos: int | None, eos: int | None, max_length: int,
              batch_size: int) -> dict[str, float]:
        raise NotImplementedError


@dataclass(frozen=True)
class CLM(LMTask):
    name: str = "clm"
    hub_dataset: str = "wikimedia/wikipedia"
    languages: tuple[str, ...] = MLM().languages
    metric: str = "perplexity"
    greater_is_better: bool = False

    def hub_config(self, language: str) -> str:
        return MLM().hub_config(language)

    def features(self):
        return MLM().features()

    def local_dir(self, language: str, data_dir: str | os.PathLike | None) -> Path | None:
        """MLM's folder: the same Wikipedia text, read by both tasks."""
        return None if data_dir is None else Path(data_dir) / "mlm" / language

    def _texts(self, language: str, data_dir, split: str, limit: int | None, valid_documents: float | None):
        self.check_language(language)
        local = self.local_dir(language, data_dir)
        splits = ("train",) if valid_documents is not None else SPLITS
        source_split = "train" if valid_documents is not None else split
        if local is not None:
            source = ("local", str(self.local_files(local, language, splits)[source_split].resolve()))
        else:
            source = ("hub", self.hub_dataset, self.hub_config(language), source_split)
        carve = None if valid_documents is None else (valid_documents, split == "validation")
        try:
            return [t for t in itertools.islice(_documents(source, carve, self.features()), limit) if t.strip()]
        except Exception as e:
            if source[0] == "hub":
                raise self.hub_error(language, e, splits) from e
            raise

    def calibration_texts(self, language, data_dir, limit, valid_documents):
        return self._texts(language, data_dir, "train", limit, valid_documents)

    def evaluation_set(self, language, data_dir, limit, valid_documents):
        return self._texts(language, data_dir, "validation", limit, valid_documents)

    def score(self, model, tokenizer, examples, bos, eos, max_length, batch_size):
        return lm_scoring.perplexity(model, tokenizer, examples, bos=bos, eos=eos, max_length=max_length,
                                     batch_size=batch_size)


@dataclass(frozen=True)
class XNLIZeroShot(LMTask):
    name: str = "xnli-zeroshot"
    hub_dataset: str = "facebook/xnli"
    languages: tuple[str, ...] = XNLI().languages
    metric: str = "accuracy"
    greater_is_better: bool = True

    def features(self):
        return XNLI().features()

    def local_dir(self, language: str, data_dir: str | os.PathLike | None) -> Path | None:
        """XNLI's folder: the same examples."""
        return None if data_dir is None else Path(data_dir) / "xnli" / language

    def calibration_texts(self, language, data_dir, limit, valid_documents):
        rows = self.load(language, data_dir, (limit, None))["train"]
        return [f"{p} {h}" for p, h in zip(rows["premise"], rows["hypothesis"])]

    def evaluation_set(self, language, data_dir, limit, valid_documents):
        return list(self.load(language, data_dir, (None, limit))["validation"])

    def score(self, model, tokenizer, examples, bos, eos, max_length, batch_size):
        out = lm_scoring.xnli_zero_shot(model, tokenizer, examples, NLI_PROMPT, bos=bos, batch_size=batch_size)
        return {"accuracy": out["accuracy"], "examples": out["examples"]}
