"""The models the slow tests load, built by tests/conftest.py beside the quick tests, each in a process of its own
(`python tests/prebuild.py tinybert|tinymt5`); and the grid the mT5 end-to-end test sweeps, defined once for both."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

MODELS = ("tinybert", "tinymt5")


def smoke_mt5_test_grid() -> dict:
    """smoke-mt5's own settings, cut to 2 twins, 1 level and a tiny mT5 pretrained for 100 steps."""
    from lnsub.orchestrator.grid import grid_path

    grid = yaml.safe_load(grid_path("smoke-mt5").read_text())
    grid.update(languages=["syn-en", "syn-ar"], levels=1)
    grid["tasks"]["xnli"].update(steps=10, train_size=640, valid_size=96, testbed_pretrain_steps=100)
    return grid


def write_smoke_mt5_test_grid(folder: Path) -> Path:
    path = folder / "smoke-mt5.yaml"
    path.write_text(yaml.safe_dump(smoke_mt5_test_grid()))
    return path


def build(name: str) -> None:
    if name == "tinybert":
        from lnsub.trainables.testbed.tinybert import ensure_tiny_model

        ensure_tiny_model()
    elif name == "tinymt5":
        from lnsub.orchestrator.grid import plan
        from lnsub.trainables import providers

        with tempfile.TemporaryDirectory() as folder:
            providers.prepare([plan(str(write_smoke_mt5_test_grid(Path(folder)))).cells[0].spec])
    else:
        raise SystemExit(f"prebuild: no model {name!r} (one of {', '.join(MODELS)})")


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # beside the quick tests: one core
    build(sys.argv[1])
