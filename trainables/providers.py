"""Model and data providers: where a cell's model folder and its data come from when not from the Hub.

The core (the spec, the tasks, loading) never imports a provider; it asks this registry (as open_lth's
registries do). Providers register themselves through the `lnsub.providers` entry-point group
(pyproject.toml), loaded the first time the registry is asked: the synthetic testbed
(trainables/testbed/provider.py) is one.

A provider's models and data are *prepared* (built, pretrained) by the driver before any trial starts
(`prepare`), never by a cell on its way in: a cell that finds them missing says which command prepares
them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

ENTRY_POINTS = "lnsub.providers"


@dataclass(frozen=True)
class ModelProvider:
    """Model names (a grid's `model:`) this provider answers for, and what it does for each spec."""

    names: tuple[str, ...]
    revision: Callable[[object], str]  # spec -> the model's resolved configuration hash (spec.model_revision)
    prepare: Callable[[object], None]  # spec -> build the model (driver side; a no-op once built)
    path: Callable[[object], str]  # spec -> the built folder from_pretrained reads (LnsubError if not prepared)
    install: Callable[[object, str], None] | None = None  # (model, folder) -> adjust a loaded model
    small: bool = False  # jobs on it are cheap enough that a process may run one after another
    tasks: tuple[str, ...] | None = None  # the tasks it has a form for (None: all)
    # (model folder, language) -> (beginning, end) token ids a language's sequences are framed with, where the model
    # gives each language its own (None: the tokenizer's)
    framing: Callable[[str, str], tuple[int | None, int | None]] | None = None


@dataclass(frozen=True)
class DataProvider:
    """Languages this provider holds data for, laid out as the Hub's (DIR/<task>/<language>/<split>.jsonl)."""

    languages: tuple[str, ...]
    real_language: Callable[[str], str]  # the paper language a provider language stands for
    prepare: Callable[[object], None]  # spec -> build the data (driver side)
    data_root: Callable[[object], str]  # spec -> the folder (LnsubError if not prepared)
    revision: Callable[[object], str] | None = None  # spec -> the data's generator configuration hash (data_revision)
    parallel_file: Callable[[object], Path] | None = None  # spec -> held-out parallel sentences (similarity)
    word_order: Callable[[str], str] | None = None  # language -> its basic word order, where known
    # (spec, document) -> the sequences a decoder of this provider models, where a document is several of them
    # (the testbed's tiny decoder models one sentence per sequence: clm scores and calibrates on sentences)
    segment: Callable[[object, str], list[str]] | None = None


_MODELS: dict[str, ModelProvider] = {}
_DATA: dict[str, DataProvider] = {}
_LOADED = threading.Event()
_LOCK = threading.Lock()


def register_model(provider: ModelProvider) -> None:
    for name in provider.names:
        _MODELS[name] = provider


def register_data(provider: DataProvider) -> None:
    for language in provider.languages:
        _DATA[language] = provider


def _load() -> None:
    """Every installed provider registers itself once (entry points of the group `lnsub.providers`)."""
    if _LOADED.is_set():
        return
    with _LOCK:
        if _LOADED.is_set():
            return
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINTS):
            entry.load()()
        _LOADED.set()


def model_provider(name: str) -> ModelProvider | None:
    """The provider of a model name, or None for a hub id or a local folder."""
    _load()
    return _MODELS.get(name)


def data_provider(language: str) -> DataProvider | None:
    """The provider of a language's data, or None for a paper language (the Hub, or --data-dir)."""
    _load()
    return _DATA.get(language)


def provider_languages() -> tuple[str, ...]:
    _load()
    return tuple(_DATA)


def real_language(language: str) -> str:
    """The paper language a language stands for (a provider's twin stands for its real language)."""
    provider = data_provider(language)
    return provider.real_language(language) if provider else language


def prepare(specs: Iterable) -> None:
    """Build, once, every provider model and dataset these specs need (the driver, before trials start)."""
    for spec in specs:
        model = model_provider(spec.model)
        if model is not None:
            model.prepare(spec)
        data = data_provider(spec.language)
        if data is not None and spec.data_dir is None:
            data.prepare(spec)


def small_models(specs: Iterable) -> bool:
    """Whether every spec's model is a provider's small one (so processes may be reused between jobs)."""
    return all((p := model_provider(s.model)) is not None and p.small for s in specs)
