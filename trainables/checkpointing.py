"""Checkpoints written beside training, not in its way.

A checkpoint of mBERT (weights and AdamW's two moments, fp32) is about 2.1 GB: serialised, written and hashed
it took the round ~2 s every `checkpoint_every` steps, while the GPU waited (orchestrator/cost.py's
largest part after the matmuls). Here training waits only for a copy of its state into host memory; a
thread writes that copy through `Checkpoints.save` (atomic, checksummed) while the next steps run.

One write at a time: a checkpoint that falls due while the one before is still being written waits for it,
so every due checkpoint is written, in order, exactly as a synchronous save would have (what resume and the
fault tests rely on), and one copy of the state lives in host memory, reused from checkpoint to checkpoint.
A write that failed raises in the training process at the next checkpoint or at the end of the round, never
silently: the trial fails and Ray Tune retries it, as it does for a synchronous write. A process killed
mid-write leaves what a kill always left: no checkpoint, or a temporary file that resume never reads
(`Storage.atomic_path`); resume takes the checkpoint before.
"""

from __future__ import annotations

import logging
import threading

import torch

from lnsub.trainables.store import Checkpoints

log = logging.getLogger(__name__)

# Optimizer steps between a round's checkpoints unless told otherwise. On a GPU an mBERT step of the `full` grid
# takes 9-70 ms (orchestrator/cost.py: NER, XNLI, MLM on an A100), so 1,000 steps is at most about a minute of
# work lost to a kill, while a 2.1 GB write every 100 steps (1-7 s of training) would not finish before the
# next one fell due.
DEFAULT_CHECKPOINT_EVERY = 1_000


def host_copy(state, into=None):
    """A deep copy of a checkpoint's state in host memory: tensors copied (from any device), containers rebuilt.

    The optimizer's and the model's state_dict hold the very tensors training updates in place; the copy is
    what the checkpoint says at this step, whatever the next steps do. A tensor that appears twice (a tied
    weight: mBERT's MLM decoder is its word embeddings) is copied once and appears twice, so torch.save
    still writes it once. `into`, the copy of an earlier step of the same round, lends its tensors where
    shape and dtype match: copied into, not allocated (and, copied from a GPU, pinned), so a checkpoint
    neither faults in fresh pages nor goes through pageable memory. Copies from a GPU are asynchronous:
    call `synchronize` before anything reads the copy.
    """
    return _copy(state, into, {})


def _copy(state, into, seen: dict):
    if isinstance(state, torch.Tensor):
        source = state.detach()
        key = (source.device, source.data_ptr(), source.dtype, tuple(source.shape), source.stride())
        if key not in seen:
            if not (isinstance(into, torch.Tensor) and into.shape == source.shape and into.dtype == source.dtype):
                into = torch.empty(source.shape, dtype=source.dtype, pin_memory=source.is_cuda)
            seen[key] = into.copy_(source, non_blocking=source.is_cuda)
        return seen[key]
    if isinstance(state, dict):
        lent = into if isinstance(into, dict) else {}
        return type(state)((k, _copy(v, lent.get(k), seen)) for k, v in state.items())  # OrderedDict stays one
    if isinstance(state, (list, tuple)):
        lent = into if isinstance(into, (list, tuple)) and len(into) == len(state) else [None] * len(state)
        return type(state)(_copy(v, w, seen) for v, w in zip(state, lent))
    return state  # ints, floats, strings, None: immutable


def synchronize() -> None:
    """Wait for the asynchronous copies off the GPU (none on a CPU-only machine)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class CheckpointWriter:
    """Writes a round's checkpoints on a thread, one at a time, in order; `close` waits for the last one."""

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._copy: dict | None = None  # the last checkpoint's copy: its tensors hold the next one, once written

    def save(self, step: int, state: dict) -> None:
        """Once the write before has finished, copy `state` into host memory; write that behind training."""
        self.wait()
        self._copy = snapshot = host_copy(state, self._copy)
        synchronize()
        self._thread = threading.Thread(target=self._write, args=(step, snapshot), daemon=True,
                                        name=f"checkpoint-{step}")
        self._thread.start()

    def _write(self, step: int, snapshot: dict) -> None:
        try:
            self.checkpoints.save(step, snapshot)
        except BaseException as e:  # raised in the training thread by wait()
            self._error = e

    def wait(self) -> None:
        """Block until the write in flight (if any) is on the storage; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self, failing: bool = False) -> None:
        """The end of the round: the last write finishes. While another error unwinds, a write's error is logged
        (that error is the one the caller must see)."""
        self._copy = None
        try:
            self.wait()
        except Exception as e:
            if not failing:
                raise
            log.error("a checkpoint write failed as well: %s: %s", type(e).__name__, e)
