"""Keep freed memory for reuse while a network runs (glibc only).

glibc serves every allocation above 32 MiB with a fresh ``mmap`` and gives it back on free, so each
new full-size tensor of a 3D network costs the kernel a page fault and a zero-fill per 4 KiB page.
For SynthSeg that is about 9 million page faults and ~25 s of system time per scan on 2 cores.
Inside ``reuse_freed_memory()`` large blocks come from the heap instead, freed blocks are reused and
the heap is never trimmed (``M_TRIM_THRESHOLD`` -1: with the largest positive threshold, 2 GiB, glibc
still trimmed the free top between two networks, and the next one faulted the pages in again); on exit
the defaults are restored and the free memory is handed back to the system (``malloc_trim``), so a
long-lived process such as Slicer does not keep the peak. SynthSeg uses it around all its networks
and the QC. It matters most in VMs that report freed pages to the host (virtio-balloon free page
reporting): each page the kernel hands out again is then a host fault, ~10 us instead of ~0.3 us.

Elsewhere (macOS, Windows, musl) it does nothing. ``SEGSUITE_REUSE_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import sys
import threading

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# glibc's documented defaults, restored on exit
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024,
             _M_MMAP_MAX: 65536}
# a trim threshold of -1 disables trimming (mallopt(3))
_REUSE = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: -1, _M_TOP_PAD: 64 * 2 ** 20}

_lock = threading.Lock()
_depth = 0
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.gnu_get_libc_version  # only glibc has it (and mallopt's meaning)
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def available() -> bool:
    return _glibc() is not None and os.environ.get("SEGSUITE_REUSE_MEMORY", "1") != "0"


@contextlib.contextmanager
def reuse_freed_memory():
    """Serve large allocations from a reusable heap for the duration of the block (re-entrant)."""
    global _depth
    if not available():
        yield
        return
    libc = _glibc()
    with _lock:
        _depth += 1
        if _depth == 1:
            for parameter, value in _REUSE.items():
                libc.mallopt(parameter, value)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for parameter, value in _DEFAULTS.items():
                    libc.mallopt(parameter, value)
                libc.malloc_trim(0)


def outside_heap(shape, device="cpu"):
    """A float32 torch tensor for a large result that outlives the network passes (posteriors).

    On the CPU it gets its own anonymous memory map, so that it does not split the reusable heap:
    the networks' temporaries then find the same free space on every pass."""
    import numpy as np
    import torch

    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device)
    count = int(np.prod(shape))
    array = np.frombuffer(mmap.mmap(-1, max(count, 1) * 4), dtype=np.float32, count=count).reshape(shape)
    return torch.from_numpy(array)


def peak_virtual_memory_kb():
    """The process's peak virtual memory (VmPeak, kB) from /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
