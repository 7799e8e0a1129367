"""Fast exact convolutions for the U-Net decoders and the single-channel first layer.

``conv3d_of_upsampled(x, weight)`` equals ``conv3d(upsample_nearest_x2(x), weight, padding=k//2)``
without building the up-sampled tensor: each of the 8 output phases (even/odd index per axis) sees
the low-resolution input through a smaller kernel (2x2x2 for k=3, 3x3x3 for k=5) whose weights are
sums of the original taps. That is 27/8 (k=3) or 125/27 (k=5) times fewer multiplications and one
full-resolution tensor less. ``conv3d_single_channel`` does a 1-input-channel convolution as one
matrix product per slab (oneDNN is slow for a single input channel).
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


def conv3d_of_upsampled(x: torch.Tensor, weight: torch.Tensor, bias=None, kernels: dict | None = None,
                        out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
    """conv3d(nearest_upsample_x2(x), weight, bias, padding='same') for odd cubic kernels.

    With ``out`` given, the result is written (or added, if ``accumulate``) into it.
    """
    if kernels is None:
        kernels = phase_kernels(weight)
    n, _, d, h, w = x.shape
    half = weight.shape[-1] // 2
    pad = (half + 1) // 2  # enough low-resolution margin for every phase
    padded = F.pad(x, (pad,) * 6)
    if out is None:
        out = torch.empty((n, weight.shape[0], 2 * d, 2 * h, 2 * w), device=x.device, dtype=x.dtype,
                          memory_format=torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d)
                          else torch.contiguous_format)
        accumulate = False
    for (a, b, c), (kernel, first) in kernels.items():
        size = kernel.shape[2:]
        region = padded[:, :,
                        pad + first[0]: pad + first[0] + d + size[0] - 1,
                        pad + first[1]: pad + first[1] + h + size[1] - 1,
                        pad + first[2]: pad + first[2] + w + size[2] - 1]
        phase = F.conv3d(region, kernel, bias if not accumulate else None)
        target = out[:, :, a::2, b::2, c::2]
        if accumulate:
            target.add_(phase)
        else:
            target.copy_(phase)
        del phase
    return out


def conv3d_single_channel(x: torch.Tensor, weight: torch.Tensor, bias=None, slab: int = 16) -> torch.Tensor:
    """conv3d with one input channel and 'same' zero padding, as slab-wise matrix products.

    Returns a channels-last tensor (N, O, D, H, W)."""
    n, channels, d, h, w = x.shape
    if channels != 1:
        raise ValueError("conv3d_single_channel needs one input channel")
    k = weight.shape[-1]
    half = k // 2
    padded = F.pad(x[:, 0], (half,) * 6)  # (N, D+2h, H+2h, W+2h)
    taps = weight.reshape(weight.shape[0], k ** 3).t().contiguous()  # (k^3, O)
    out = torch.empty((n, d, h, w, weight.shape[0]), device=x.device, dtype=x.dtype)
    for batch in range(n):
        for start in range(0, d, slab):
            stop = min(start + slab, d)
            columns = torch.stack([padded[batch, start + i: stop + i, j: j + h, l: l + w]
                                   for i in range(k) for j in range(k) for l in range(k)], dim=-1)
            result = out[batch, start:stop]
            torch.matmul(columns, taps, out=result)
            if bias is not None:
                result.add_(bias)
    return out.permute(0, 4, 1, 2, 3)
