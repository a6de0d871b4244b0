"""The `lnsub` command line: thin, each command calls one library function."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.table import Table

from trainables.errors import LnsubError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Language-neutral sub-networks: lottery-ticket sweeps over languages x tasks x sparsity.")
console = Console()


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)
    for noisy in ("datasets", "transformers", "urllib3", "filelock", "fsspec", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    _setup_logging(verbose)


@app.command()
def testbed(
    seed: int = typer.Option(0, help="Seed of the latent grammar and lexicons."),
    anchor_fraction: float = typer.Option(0.0, help="Share of content words written the same in every twin."),
    noise: float = typer.Option(0.0, help="Per-word chance of a random replacement outside entities."),
) -> None:
    """Build the synthetic multilingual testbed and pretrain its tiny BERT (cached; a rerun does nothing)."""
    from dataclasses import replace

    from trainables.testbed.generate import TestbedConfig
    from trainables.testbed.tinybert import TinyBertConfig, ensure_tiny_model, pretrain_report

    if not 0.0 <= anchor_fraction < 1.0 or not 0.0 <= noise < 1.0:
        raise LnsubError("--anchor-fraction and --noise must lie in [0, 1)")
    config = replace(TinyBertConfig(), testbed=TestbedConfig(seed=seed, anchor_fraction=anchor_fraction, noise=noise))
    path = ensure_tiny_model(config)
    report = pretrain_report(path)
    table = Table(title=f"tiny multilingual BERT ({report['parameters']:,} parameters, "
                        f"pretrained in {report['seconds']} s)")
    for col in ("language", "masked-token accuracy", "unigram baseline"):
        table.add_column(col, justify="right")
    for lang, r in report["per_language"].items():
        table.add_row(lang, f"{r['accuracy']:.3f}", f"{r['unigram_baseline']:.3f}")
    console.print(table)
    console.print(f"model and tokenizer: [bold]{path}[/bold]")


def main() -> None:
    """Entry point: a user-facing error is one line on stderr and exit status 2."""
    try:
        app()
    except LnsubError as e:
        print(f"lnsub: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
