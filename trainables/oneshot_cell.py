"""A one-shot cell: prune a pretrained decoder from a calibration set of the cell's language, score it, save the masks.

The one-shot counterpart of IMP's run_cell (trainables.imp dispatches here for spec.method != "imp"). Nothing
is trained. Level 0 scores the dense model with the all-ones mask; level k (1..levels) restores θ0 and prunes
it to sparsity k × prune_fraction (each level its own mask from the dense model, no rounds), by magnitude or,
from `calibration_samples` windows of `max_length` tokens of the cell's language (drawn with the cell's
seed), by Wanda or SparseGPT (trainables.oneshot); an N:M pattern has one level at 1 − N/M. Each level is a
guarded stage as in IMP: mask, metrics and, for SparseGPT, the weights it updated (weights.safetensors),
then DONE. θ0's layer-wise magnitude mask of the same sparsity and pattern is saved as the cell's
`oneshot_pretrained` baseline (the transfer analysis's magnitude row).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from lnsub.trainables import metrics as M
from lnsub.trainables import memory, pruning
from lnsub.trainables.layerwise import Structure, magnitude_mask
from lnsub.trainables.loading import data_root, load_model, model_path
from lnsub.trainables.oneshot import OneShotConfig, calibration_windows, prune_one_shot
from lnsub.trainables.providers import data_provider, model_provider
from lnsub.trainables.spec import CALIBRATED, CellSpec
from lnsub.trainables.store import ONESHOT_PRETRAINED, CellStore
from lnsub.trainables.tasks import LMTask, get_task

log = logging.getLogger(__name__)


@dataclass
class Scorer:
    """A pretrained decoder with its θ0, tokenizer and task: what a one-shot cell and the transfer analysis share."""

    spec: CellSpec
    task: LMTask
    tokenizer: object
    model: torch.nn.Module
    path: str
    theta0: dict[str, torch.Tensor]  # every tensor of the state dict, as loaded
    params: list[pruning.Prunable]

    def restore(self) -> None:
        """Back to the dense pretrained model."""
        self.model.load_state_dict(self.theta0)

    def framing(self, language: str) -> tuple[int | None, int | None]:
        """The (beginning, end) tokens of `language`'s sequences (a provider may give each language its own)."""
        provider = model_provider(self.spec.model)
        if provider is not None and provider.framing is not None:
            return provider.framing(self.path, language)
        return None, None

    def evaluation_set(self, spec: CellSpec) -> list:
        examples = self.task.evaluation_set(spec.language, data_root(spec), spec.valid_size, spec.valid_documents)
        return segmented(spec, examples)

    def score(self, spec: CellSpec, examples: list | None = None) -> dict[str, float]:
        """The task's metrics of the model as it is now, on `spec`'s language (its evaluation set)."""
        bos, eos = self.framing(spec.language)
        examples = self.evaluation_set(spec) if examples is None else examples
        return self.task.score(self.model, self.tokenizer, examples, bos, eos, spec.max_length, spec.batch_size)


def segmented(spec: CellSpec, texts: list) -> list:
    """clm's documents as the sequences the model reads: a data provider may cut a document into several."""
    provider = data_provider(spec.language)
    if spec.task != "clm" or provider is None or provider.segment is None:
        return texts
    return [part for text in texts for part in provider.segment(spec, text)]


def open_scorer(spec: CellSpec) -> Scorer:
    """Load the cell's pretrained decoder (on the GPU where there is one) and its tokenizer."""
    task = get_task(spec.task)
    if not isinstance(task, LMTask):
        raise TypeError(f"task {spec.task} is trained, not scored as is")
    path = model_path(spec)
    model = load_model(spec, task, path).to("cuda" if torch.cuda.is_available() else "cpu").eval()
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Scorer(spec, task, task.load_tokenizer(path), model, path, theta0, pruning.prunable_parameters(model))


def calibration(scorer: Scorer, spec: CellSpec) -> list[dict]:
    """The calibration windows of the cell's language (none for magnitude)."""
    if spec.method not in CALIBRATED:
        return []
    texts = segmented(spec, scorer.task.calibration_texts(spec.language, data_root(spec), spec.train_size,
                                                          spec.valid_documents))
    bos, eos = scorer.framing(spec.language)
    return calibration_windows(scorer.tokenizer, texts, spec.calibration_samples, spec.max_length, seed=spec.seed,
                               bos=bos, eos=eos)


def prune(scorer: Scorer, spec: CellSpec, windows: list[dict], sparsity: float) -> pruning.Masks:
    """Restore θ0 and prune it one-shot to `sparsity` with the cell's method and pattern; the masks."""
    scorer.restore()
    config = OneShotConfig(spec.method, sparsity, spec.sparsity_pattern)
    return prune_one_shot(scorer.model, windows, config, device=next(scorer.model.parameters()).device)


def magnitude_baseline(scorer: Scorer, spec: CellSpec, sparsity: float) -> pruning.Masks:
    """θ0's layer-wise magnitude mask at the sparsity and pattern of the cell."""
    structure = Structure.parse(spec.sparsity_pattern)
    return {p.name: magnitude_mask(scorer.theta0[p.name], sparsity, structure).cpu() for p in scorer.params}


def run_level(scorer: Scorer, store: CellStore, windows: list[dict], examples: list, level: int) -> dict:
    """One guarded level: prune (level > 0), score, save the mask (and SparseGPT's weights), metrics, DONE."""
    spec, started = scorer.spec, time.perf_counter()
    sparsity = spec.sparsities[level]
    if level == 0:
        scorer.restore()
        masks = pruning.dense_masks(scorer.params)
    else:
        masks = prune(scorer, spec, windows, sparsity)
    metrics = scorer.score(spec, examples)
    store.save_mask(level, masks, sparsity=sparsity)
    if level > 0 and spec.method == "sparsegpt":
        state = scorer.model.state_dict()
        store.save_weights(level, {p.name: state[p.name] for p in scorer.params})
    if level > 0 and not store.has_baseline(ONESHOT_PRETRAINED, sparsity):
        store.save_baseline(ONESHOT_PRETRAINED, sparsity, magnitude_baseline(scorer, spec, sparsity))
    record = {M.LEVEL: level, M.SPARSITY: sparsity, M.DENSITY: pruning.density(masks), M.METRIC: scorer.task.metric,
              M.SCORE: metrics[scorer.task.metric], **metrics, M.STEPS: 0, M.STEPS_TRAINED: 0, M.WORKERS: 1,
              "method": spec.method, "sparsity_pattern": spec.sparsity_pattern,
              M.LEVEL_SECONDS: time.perf_counter() - started}
    store.save_metrics(level, record)
    store.mark_level_done(level)
    log.info("one-shot cell %s level %d (%s %s, sparsity %.0f%%): %s %.4f", spec.id, level, spec.method,
             spec.sparsity_pattern, 100 * sparsity, scorer.task.metric, record[M.SCORE])
    return record


def run_oneshot_cell(spec: CellSpec, store: CellStore) -> float:
    """Every unfinished level of a one-shot cell, then timing and the cell's DONE; the call's seconds."""
    started = time.perf_counter()
    memory.reset_peak()
    store.write_spec()
    scorer = open_scorer(spec)
    windows, examples = calibration(scorer, spec), scorer.evaluation_set(spec)
    for level in range(spec.levels + 1):
        if not store.level_done(level):
            run_level(scorer, store, windows, examples, level)
    seconds = time.perf_counter() - started
    store.write_timing(seconds, 0, 1, memory.peak_rss_bytes())
    store.mark_finished()
    return seconds


def pruned_model(scorer: Scorer, source: CellSpec, store: CellStore, level: int) -> pruning.Masks:
    """Set the scorer's model to a finished one-shot cell's pruned model at `level` (θ0 ⊙ its mask, or SparseGPT's
    saved weights); its mask."""
    scorer.restore()
    masks = store.load_mask(level)
    if store.has_weights(level):
        scorer.model.load_state_dict(store.load_weights(level), strict=False)
    pruning.apply_masks(scorer.model, masks)
    return masks
