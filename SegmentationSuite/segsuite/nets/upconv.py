"""A fast exact convolution of an up-sampled tensor, for the U-Net decoders.

``conv3d_of_upsampled(x, weight)`` equals ``conv3d(upsample_nearest_x2(x), weight, padding=k//2)``
without building the up-sampled tensor: each of the 8 output phases (even/odd index per axis) sees
the low-resolution input through a smaller kernel (2x2x2 for k=3, 3x3x3 for k=5) whose weights are
sums of the original taps. That is 27/8 (k=3) or 125/27 (k=5) times fewer multiplications and one
full-resolution tensor less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _phase_matrices(kernel_size: int, device, dtype):
    """For phase a in {0, 1}: (low-resolution taps, matrix taps x kernel) and the first tap offset."""
    half = kernel_size // 2
    result = []
    for phase in (0, 1):
        # an up-sampled position 2i + phase + o reads low-resolution index i + floor((phase + o) / 2)
        offsets = [(phase + o) // 2 for o in range(-half, half + 1)]
        first, last = min(offsets), max(offsets)
        matrix = torch.zeros(last - first + 1, kernel_size, device=device, dtype=dtype)
        for tap, offset in enumerate(offsets):
            matrix[offset - first, tap] = 1
        result.append((matrix, first))
    return result


def phase_kernels(weight: torch.Tensor) -> dict:
    """{(a, b, c): (kernel, (first_a, first_b, first_c))} for the 8 output phases."""
    kernel_size = weight.shape[-1]
    phases = _phase_matrices(kernel_size, weight.device, weight.dtype)
    kernels = {}
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                (ma, fa), (mb, fb), (mc, fc) = phases[a], phases[b], phases[c]
                kernel = torch.einsum("ix,jy,kz,ocxyz->ocijk", ma, mb, mc, weight)
                kernels[(a, b, c)] = (kernel.contiguous(), (fa, fb, fc))
    return kernels


def row_window(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of axis 2 of ``x`` (N, C, X, Y, Z), zero rows where they fall outside
    (a view, still channels-last, when they all lie inside)."""
    lo, hi = min(max(start, 0), x.shape[2]), min(max(stop, 0), x.shape[2])
    if hi <= lo:  # no row inside
        lo = hi = 0
        start, stop = 0, stop - start
    inside = x[:, :, lo:hi]
    before, after = lo - start, stop - hi
    if before or after:
        inside = F.pad(inside, (0, 0, 0, 0, before, after))
    return inside


def conv3d_of_upsampled(x: torch.Tensor, weight: torch.Tensor, bias=None, kernels: dict | None = None,
                        out: torch.Tensor | None = None, accumulate: bool = False,
                        rows: tuple[int, int] | None = None) -> torch.Tensor:
    """conv3d(nearest_upsample_x2(x), weight, bias, padding='same') for odd cubic kernels.

    The 8 phase kernels run as ONE convolution with 8x the output channels over the padded input
    (no per-phase copies of the input); each phase's block is then shifted by its first offset and
    written (or added, if ``accumulate``) into every second voxel of ``out``. With ``rows=(a, b)``
    only the output rows 2a:2b of axis 2 are computed (``out`` then holds just those rows).
    """
    if kernels is None:
        kernels = phase_kernels(weight)
    n_out = weight.shape[0]
    phases = list(kernels.items())
    size = phases[0][1][0].shape[-1]
    low = min(min(first) for _, (_, first) in phases)
    high = max(max(first) for _, (_, first) in phases) + size - 1
    before, after = -low, high  # margins so that every phase's window lies inside the padded input
    if rows is None:
        padded = F.pad(x, (before, after) * 3)
    else:
        padded = F.pad(row_window(x, rows[0] - before, rows[1] + after), (before, after, before, after, 0, 0))
    n, _, d, h, w = x.shape
    if rows is not None:
        d = rows[1] - rows[0]
    stacked = torch.cat([kernel for _, (kernel, _) in phases])
    blocks = F.conv3d(padded, stacked)  # (n, 8 * n_out, d + high - low - size + 2, ...)
    if out is None:
        out = torch.empty((n, n_out, 2 * d, 2 * h, 2 * w), device=x.device, dtype=x.dtype,
                          memory_format=torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d)
                          else torch.contiguous_format)
        accumulate = False
    for number, ((a, b, c), (_, first)) in enumerate(phases):
        start = [f - low for f in first]
        phase = blocks[:, number * n_out:(number + 1) * n_out,
                       start[0]:start[0] + d, start[1]:start[1] + h, start[2]:start[2] + w]
        target = out[:, :, a::2, b::2, c::2]
        if accumulate:
            target.add_(phase)
        else:
            target.copy_(phase)
            if bias is not None:
                target.add_(bias.view(1, -1, 1, 1, 1))
    return out
