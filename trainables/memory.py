"""A cell's peak memory, measured per cell in a process that runs many.

Tune reuses a trial's process for the next cell (no second import of torch), so the process's
lifetime peak (`ru_maxrss`) would report the largest cell so far, not this one. On Linux the kernel's
high-water mark (VmHWM) can be reset (`/proc/self/clear_refs`, value 5, since Linux 4.0); a cell
resets it when it starts and reads it when it ends. Elsewhere the lifetime peak is what there is.

Freed tensors go back to the C allocator, which keeps much of them: a process that ran an
mBERT-sized cell holds gigabytes it no longer uses. `release()` hands them back to the system
between cells (glibc's malloc_trim), so reused processes do not grow cell after cell.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new peak from the current resident size; False where the kernel cannot."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The peak resident size since the last reset_peak() (Linux), else over the process's life."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def release() -> None:
    """Collect garbage and return the allocator's free memory to the system (glibc only)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # musl and others have no malloc_trim
            pass


@contextlib.contextmanager
def long_lived():
    """While the block runs, what is alive at its start (the imported libraries, the loaded model, θ0, the data)
    is out of the garbage collector's sight (gc.freeze): Accelerate's `free_memory()` after each level collects
    garbage, and without this each collection walks the ~450,000 objects torch and transformers leave (0.2 s a
    level on 2 cores, about a tenth of a testbed round). Everything is back in sight afterwards, before `release()`."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
