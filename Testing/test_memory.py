"""reuse_freed_memory: large blocks come from the reusable heap inside the block, mmap outside."""

from __future__ import annotations

import ctypes

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
