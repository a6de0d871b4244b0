"""Per-cell peak memory in a reused process, and handing freed memory back between cells (Linux).

Checked against the kernel's own figures in /proc/self/status (VmRSS, VmHWM), read here directly.
"""

from __future__ import annotations

import gc
import weakref

import sys
from pathlib import Path

import numpy as np
import pytest

from lnsub.trainables import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and glibc are Linux's")
MB = 2**20


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_peak_is_this_cells_after_a_reset():
    assert memory.reset_peak()
    before = memory.peak_rss_bytes()
    big = np.ones(400 * MB // 8)  # touched: resident
    assert memory.peak_rss_bytes() >= before + 380 * MB
    assert memory.peak_rss_bytes() == _status("VmHWM")
    high = memory.peak_rss_bytes()
    del big
    memory.reset_peak()  # a new cell: the last one's 400 MB no longer counts
    assert memory.peak_rss_bytes() <= high - 300 * MB


def test_release_hands_fragmented_free_memory_back():
    """Freed small blocks with a few survivors among them stay resident (free() trims only the heap's top);
    release() returns their pages, as between two cells in one process."""
    blocks = [bytearray(4096) for _ in range(100_000)]  # 400 MB of 4 KiB blocks, below malloc's mmap threshold
    survivors = blocks[::100]  # every 100th stays alive, pinning the heap's top
    del blocks
    held = _status("VmRSS")
    memory.release()
    assert _status("VmRSS") <= held - 200 * MB
    assert len(survivors) == 1000


def test_long_lived_hides_what_was_alive_from_the_collector_until_the_block_ends():
    class Node:
        pass

    old = Node()
    old.self = old  # a reference cycle: only the collector frees it
    gone = weakref.ref(old)
    with memory.long_lived():
        del old
        gc.collect()
        assert gone() is not None  # frozen: a collection inside the block does not walk it
        young = Node()
        young.self = young
        made = weakref.ref(young)
        del young
        gc.collect()
        assert made() is None  # what the block made is collected as usual
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # back in sight: collected
