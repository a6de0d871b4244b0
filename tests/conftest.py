"""Shared fixtures: an offline Hub, a project-local cache, the testbed and the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Generated artefacts are keyed by a hash of their configuration, so a cache shared
# across test runs can only ever return the same thing the test would build.
os.environ.setdefault("LNSUB_CACHE", str(ROOT / ".cache" / "lnsub-test"))


@pytest.fixture(scope="session")
def testbed_dir() -> Path:
    from trainables.testbed.generate import ensure_testbed

    return ensure_testbed()


@pytest.fixture(scope="session")
def tiny_model(testbed_dir) -> Path:
    from trainables.testbed.tinybert import ensure_tiny_model

    return ensure_tiny_model()
