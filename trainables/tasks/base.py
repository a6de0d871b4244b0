"""What every task shares: where its data comes from, how a model is loaded, the split sizes.

Real runs load from the Hugging Face Hub (`load_dataset(source, language)`,
`from_pretrained(name)`). The same code also reads a local folder,
DIR/<task>/<language>/, holding `train` and `validation` files (.jsonl, .json or
.parquet; MLM on Wikipedia: `train` only) in the hub dataset's own schema, cast to
the hub's features so label ids agree; a data provider's languages (the synthetic
twins, `syn-*`) resolve to the provider's folder that way (trainables.providers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.providers import real_language

SPLITS = ("train", "validation")
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PAPER_LANGUAGES = ("en", "fr", "de", "zh", "ru", "es", "fa", "ur", "ar", "hi", "sw")


def _offline_hint() -> str:
    return "the Hugging Face Hub is unreachable" + (" (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") else "")


@dataclass(frozen=True)
class Task:
    name: str
    hub_dataset: str  # the hub dataset id; its config is the language
    languages: tuple[str, ...]  # paper languages the dataset has (twins follow them)
    metric: str  # the validation metric the task is judged by
    greater_is_better: bool
    head_prefixes: tuple[str, ...]  # parameters of the task head: carried over, never rewound
    auto_model: str  # the transformers Auto class
    trainable: bool = True  # False: a decoder's task scored as is (one-shot discovery; trainables.tasks.lm)

    # --- availability -----------------------------------------------------------------
    def has_language(self, language: str) -> bool:
        return real_language(language) in self.languages

    def missing_reason(self, language: str) -> str | None:
        """Why a (task, language) cell is left out of a plan, or None if it is not."""
        real = real_language(language)
        if real not in PAPER_LANGUAGES:
            return f"unknown language {language!r}"
        if real not in self.languages:
            return f"{self.hub_dataset} has no {real}"
        return None

    # --- data -------------------------------------------------------------------------
    def hub_config(self, language: str) -> str:
        return language

    def features(self):
        """The hub dataset's features (column types and label names)."""
        raise NotImplementedError

    def local_dir(self, language: str, data_dir: str | os.PathLike | None) -> Path | None:
        """The local folder for a language (DIR/<task>/<language>), or None to use the Hub."""
        return None if data_dir is None else Path(data_dir) / self.name / language

    def local_files(self, local: Path, language: str, splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
        """{split: file} in a local folder; one clear line for a missing split."""
        files = {}
        for split in splits:
            found = sorted(p for p in local.glob(f"{split}.*") if p.suffix in LOCAL_SUFFIXES)
            if not found:
                raise LnsubError(f"no {split} file for {self.name}/{language} in {local} "
                                 f"(expected {split}.jsonl, .json or .parquet in the {self.hub_dataset} schema)")
            files[split] = found[0]
        return files

    def hub_error(self, language: str, error: Exception, splits: tuple[str, ...] = SPLITS) -> LnsubError:
        return LnsubError(
            f"cannot load dataset {self.hub_dataset} ({self.hub_config(language)}): {_offline_hint()} or the "
            f"dataset is missing ({type(error).__name__}); copy {'/'.join(splits)} files in its schema to "
            f"DIR/{self.name}/{language}/ and pass --data-dir DIR")

    def check_language(self, language: str) -> None:
        if not self.has_language(language):
            raise LnsubError(f"task {self.name} has no language {language!r} ({self.missing_reason(language)})")

    def load(self, language: str, data_dir: str | os.PathLike | None = None,
             sizes: tuple[int | None, int | None] = (None, None)):
        """The train and validation splits as a DatasetDict in the hub schema, each cut to its size."""
        import datasets  # heavy: imported when data is read

        self.check_language(language)
        local = self.local_dir(language, data_dir)
        if local is not None:
            files = self.local_files(local, language)
            try:
                ds = datasets.load_dataset(LOCAL_SUFFIXES[files["train"].suffix],
                                           data_files={k: str(v) for k, v in files.items()}, features=self.features())
            except Exception as e:  # malformed file: say which one
                raise LnsubError(f"cannot read {self.name}/{language} from {local}: {str(e).splitlines()[0]}") from e
        else:
            try:
                ds = datasets.load_dataset(self.hub_dataset, self.hub_config(language))
            except Exception as e:
                raise self.hub_error(language, e) from e
            ds = datasets.DatasetDict({s: ds[s] for s in SPLITS})
        for split, n in zip(SPLITS, sizes):
            if n is not None and n < len(ds[split]):
                ds[split] = ds[split].select(range(n))
        return ds

    def prepare(self, language: str, data_dir: str | os.PathLike | None, tokenizer, max_length: int,
                seed: int = 0, sizes: tuple[int | None, int | None] = (None, None),
                valid_documents: float | None = None):
        """Tokenised train/validation splits of at most `sizes` examples, ready for `collator`.

        Examples are selected before tokenising: one raw example is one tokenised example here
        (MLM, whose blocks span documents, overrides this).
        """
        if valid_documents is not None:
            raise LnsubError(f"task {self.name} has its own validation split; valid_documents is for mlm")
        return self.preprocess(self.load(language, data_dir, sizes), tokenizer, max_length, seed)

    # --- model ------------------------------------------------------------------------
    def for_model(self, config) -> "Task":
        """This task in the form the model (its `config`) takes; an encoder-decoder only fits XNLI (docs/method.md)."""
        if getattr(config, "is_encoder_decoder", False):
            raise LnsubError(f"task {self.name} has no encoder-decoder form: the paper fine-tunes "
                             f"{getattr(config, 'model_type', 'an encoder-decoder')} on xnli only")
        return self

    def model_kwargs(self) -> dict[str, Any]:
        return {}

    def load_model(self, name_or_path: str):
        """`from_pretrained` with this task's head; one clear line if the weights are missing (a provider's model
        is adjusted by its provider afterwards: trainables.loading)."""
        import transformers

        auto = getattr(transformers, self.auto_model)
        transformers.logging.set_verbosity_error()  # the expected "head newly initialised" report is noise here
        try:
            model = auto.from_pretrained(name_or_path, **self.model_kwargs())
        except OSError as e:
            raise LnsubError(
                f"cannot load model {name_or_path!r}: not a local folder and {_offline_hint()} or it is not "
                f"cached; download it where there is network (hf download {name_or_path}) and pass its "
                f"folder as the model") from e
        return model

    def load_tokenizer(self, name_or_path: str):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(name_or_path)
        except OSError as e:
            raise LnsubError(f"cannot load the tokenizer of {name_or_path!r}: {_offline_hint()} or it is not "
                             f"cached; download the model folder and pass its path") from e

    # --- per-task hooks ---------------------------------------------------------------
    def preprocess(self, ds, tokenizer, max_length: int, seed: int = 0):
        """Tokenised train/validation splits, ready for `collator`."""
        raise NotImplementedError

    def collator(self, tokenizer, train: bool):
        raise NotImplementedError

    def evaluate(self, model, loader, accelerator=None) -> dict[str, float]:
        raise NotImplementedError


def gather(accelerator, tensor):
    """All processes' rows of `tensor`, without the duplicates padding the last batch."""
    return tensor if accelerator is None else accelerator.gather_for_metrics(tensor)


def model_device(model):
    return next(model.parameters()).device
