"""reuse_freed_memory: large blocks come from the reusable heap inside the block, mmap outside."""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segsuite import memory

pytestmark = pytest.mark.skipif(not memory.available(), reason="needs glibc (Linux)")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mallinfo() -> MallInfo2:
    libc = memory._glibc()
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def mmapped_bytes() -> int:
    return mallinfo().hblkhd


def malloc_bytes() -> int:
    """Everything malloc has handed out: heap blocks in use plus its own mmapped blocks."""
    info = mallinfo()
    return info.uordblks + info.hblkhd


def in_fresh_interpreter(test):
    """glibc serves a request from a free heap chunk before it considers mmap, so a test process whose
    heap already holds large free chunks (after an in-process SynthSeg run) cannot show the mmap
    default: the test's body runs in a new interpreter."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get("SEGSUITE_MEMORY_TEST_CHILD") == "1":
            return test(*args, **kwargs)
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"Testing/{Path(__file__).name}::{test.__name__}"],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              env={**os.environ, "SEGSUITE_MEMORY_TEST_CHILD": "1"})
        assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
    return wrapper


@in_fresh_interpreter
def test_large_blocks_come_from_the_heap_only_inside():
    size = 64 * 2 ** 20
    before = mmapped_bytes()
    outside = np.ones(size // 8)
    assert mmapped_bytes() >= before + size  # glibc's default: a fresh mmap per large block
    del outside
    with memory.reuse_freed_memory():
        with memory.reuse_freed_memory():  # re-entrant
            inside = np.ones(size // 8)
            assert mmapped_bytes() < before + size
            del inside
        again = np.ones(size // 8)  # still inside the outer block
        assert mmapped_bytes() < before + size
        del again
    restored = np.ones(size // 8)  # defaults are back after the outermost block
    assert mmapped_bytes() >= before + size
    del restored


@in_fresh_interpreter
def test_a_large_free_top_is_kept_inside_and_handed_back_on_exit():
    """glibc trims a free top above the trim threshold; 2 GiB (the largest positive value) still let
    it trim between two networks. np.empty touches no pages, so 2.5 GiB of heap costs no memory."""
    size = 5 * 2 ** 29  # 2.5 GiB
    with memory.reuse_freed_memory():
        base = mallinfo().arena
        block = np.empty(size // 8)
        grown = mallinfo().arena
        assert grown >= base + size
        del block
        assert mallinfo().arena == grown  # kept for the next network
    assert mallinfo().arena < grown - size // 2  # trimmed on exit


@in_fresh_interpreter
def test_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("SEGSUITE_REUSE_MEMORY", "0")
    assert not memory.available()
    before = mmapped_bytes()
    with memory.reuse_freed_memory():
        block = np.ones(8 * 2 ** 20)
        assert mmapped_bytes() >= before + 64 * 2 ** 20
        del block


def test_outside_heap_tensor_is_writable_and_shared_with_numpy():
    tensor = memory.outside_heap((3, 4, 5))
    assert tensor.shape == (3, 4, 5) and tensor.dtype.is_floating_point and tensor.element_size() == 4
    tensor.fill_(2.5)
    array = tensor.numpy()
    array[1, 2, 3] = 7
    assert float(tensor[1, 2, 3]) == 7 and float(tensor.sum()) == 2.5 * 59 + 7
    with memory.reuse_freed_memory():
        before = malloc_bytes()
        big = memory.outside_heap((64, 2 ** 18))  # 64 MiB: its own map even while the heap is reused
        assert malloc_bytes() - before < 2 ** 20  # not a malloc block at all
        big.fill_(1)
        assert float(big[-1, -1]) == 1
