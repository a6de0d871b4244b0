"""Write a tiny model that ships with lnsub: trainables/testbed/shipped/<config id>/, with its SHA256SUMS.

Usage: .venv/bin/python scripts/ship_tiny_model.py [--steps 6000] [--from-cache]
       .venv/bin/python scripts/ship_tiny_model.py --decoder [--from-cache]
With `--decoder`: the tiny decoder the one-shot decoder grids name and its decoupled control (both
at TinyDecoderConfig's defaults), instead of the tiny BERT.
Pretrains from scratch the testbed's default tiny BERT with `--steps` pretraining steps, the
configuration the smoke and science grids name (testbed_pretrain_steps); with `--from-cache`, takes
the $LNSUB_CACHE build of that same configuration (`ensure_tiny_model`: its folder is named by the
configuration's hash, and it pretrains there if absent). Commit the folder it prints: a model is
loaded from it only when its configuration hashes to the folder's name, and only if every sum matches.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from lnsub.trainables.storage.layout import DONE
from lnsub.trainables.testbed.shipped import SHIPPED, write_sums
from lnsub.trainables.testbed import tinydecoder
from lnsub.trainables.testbed.tinybert import TinyBertConfig, ensure_tiny_model, pretrain
from lnsub.trainables.testbed.tinydecoder import TinyDecoderConfig


def ship(config: TinyBertConfig | TinyDecoderConfig, fresh: bool, root: Path = SHIPPED) -> Path:
    decoder = isinstance(config, TinyDecoderConfig)
    final = root / config.id
    with tempfile.TemporaryDirectory(prefix="lnsub-ship-") as tmp:
        built = Path(tmp) / config.id
        if fresh:
            torch.set_num_threads(1)  # as bench/multilinguality.py: other thread counts round otherwise
            built.mkdir()
            (tinydecoder.pretrain if decoder else pretrain)(config, built)
        else:
            shutil.copytree(tinydecoder.ensure_tiny_decoder(config) if decoder else ensure_tiny_model(config), built)
            (built / DONE).unlink()
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(built, final)
    return write_sums(final)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="pretraining steps (the grids' testbed_pretrain_steps)")
    parser.add_argument("--from-cache", action="store_true", help="the cache's build of the same configuration")
    parser.add_argument("--decoder", action="store_true", help="the tiny decoder and its decoupled control")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    configs = ([TinyDecoderConfig(), tinydecoder.decoupled(TinyDecoderConfig())] if args.decoder
               else [dataclasses.replace(TinyBertConfig(), steps=args.steps)])
    for config in configs:
        folder = ship(config, fresh=not args.from_cache)
        total = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{folder} ({total / 1e6:.2f} MB)")
