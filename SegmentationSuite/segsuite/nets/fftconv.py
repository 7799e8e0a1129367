"""Tiled FFT convolution (overlap-save) for 'same'-padded 3D convolutions with odd kernels.

A k^3 convolution of a large volume costs 2 k^3 Cin Cout flops per voxel directly (250 Cin Cout for
k = 5). In the Fourier domain it is, per frequency, one (tiles x Cin) @ (Cin x Cout) complex
matrix product, about 8 Cin Cout flops per frequency, plus the forward and inverse FFTs, which
grow only with Cin + Cout. Overlap-save: the output is cut into T^3 tiles; each tile needs the
(T + k - 1)^3 window of the zero-padded input starting at its corner; the circular
cross-correlation of that window with the kernel (zero-padded to the window size F) is exact on
the tile's T^3 first voxels, where no wrap-around happens.

Tensors are channels-last throughout: windows are gathered as (F, F, F, tiles, C), so that the
FFT over the three leading dimensions leaves each frequency's (tiles, C) block contiguous for the
batched matrix product, and the inverse FFT hands back (T, T, T, tiles, Cout) blocks that are
scattered straight into the (X, Y, Z, C) storage of a channels-last output.
"""

from __future__ import annotations

import torch
from torch import nn


def kernel_spectrum(weight: torch.Tensor, window: int) -> torch.Tensor:
    """(Fx * Fy * Fz', 2 Cin, 2 Cout) real: per frequency of a ``window``^3 real FFT, the
    conjugated spectrum W = A + iB of each kernel (conjugation turns the FFT's convolution into
    conv3d's cross-correlation) as the real block matrix that multiplies interleaved (re, im)
    rows: [[A, B], [-B, A]] with rows (cin, re|im) and columns (cout, re|im). A real batched
    matrix product runs several times faster than a complex one.

    The spectrum of a k^3 kernel needs only k of each axis' ``window`` inputs: three small DFT
    matrix products (k x window each) instead of FFTs of a mostly zero ``window``^3 block."""
    cout, cin, k = weight.shape[0], weight.shape[1], weight.shape[2]
    taps = torch.arange(k, dtype=torch.float64)
    def dft(n):  # (k, n) conj(exp(-2 pi i tap f / window))
        return torch.polar(torch.ones(k, n, dtype=torch.float64),
                           2 * torch.pi * taps[:, None] * torch.arange(n, dtype=torch.float64) / window)
    full, half = dft(window).to(torch.complex64), dft(window // 2 + 1).to(torch.complex64)
    spectrum = torch.einsum("oiabc,cz->abzio", weight.to(torch.complex64), half)
    spectrum = torch.einsum("abzio,by->ayzio", spectrum, full)
    spectrum = torch.einsum("ayzio,ax->xyzio", spectrum, full).reshape(-1, cin, cout)  # (f, Cin, Cout)
    block = weight.new_empty((spectrum.shape[0], cin, 2, cout, 2))
    block[:, :, 0, :, 0] = spectrum.real
    block[:, :, 0, :, 1] = spectrum.imag
    block[:, :, 1, :, 0] = -spectrum.imag
    block[:, :, 1, :, 1] = spectrum.real
    return block.view(spectrum.shape[0], 2 * cin, 2 * cout)


def fft_conv3d(x: torch.Tensor, spectrum: torch.Tensor, bias: torch.Tensor | None, kernel: int,
               tile: int, out: torch.Tensor | None = None, max_batch_bytes: int = 96 << 20) -> torch.Tensor:
    """conv3d(x, weight, bias, padding=kernel // 2) for a (1, Cin, X, Y, Z) ``x`` (channels-last
    storage is the fast case), with ``spectrum = kernel_spectrum(weight, tile + kernel - 1)``.
    Returns a channels-last (1, Cout, X, Y, Z) tensor (``out`` if given). Tiles are processed a
    slab of x-rows at a time, about ``max_batch_bytes`` of complex spectrum per slab (small
    enough for the batch to stay in a large L3 cache)."""
    _, cin, size_x, size_y, size_z = x.shape
    cout = spectrum.shape[2] // 2
    window = tile + kernel - 1
    pad = kernel // 2
    counts = [-(-n // tile) for n in (size_x, size_y, size_z)]
    if out is None:
        out = torch.empty((1, cout, size_x, size_y, size_z), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last_3d)
    out_view = out[0].permute(1, 2, 3, 0)  # (X, Y, Z, Cout)
    source = x[0].permute(1, 2, 3, 0)  # (X, Y, Z, Cin) view
    per_row = counts[1] * counts[2]
    frequencies = spectrum.shape[0]
    rows_per_batch = max(1, min(counts[0], max_batch_bytes // (frequencies * per_row * max(cin, cout) * 8)))
    # one zero-padded slab of input rows at a time, (rows * T + k - 1, Y', Z', Cin), reused
    slab = source.new_zeros((rows_per_batch * tile + kernel - 1, counts[1] * tile + kernel - 1,
                             counts[2] * tile + kernel - 1, cin))
    half = window // 2 + 1
    for row0 in range(0, counts[0], rows_per_batch):
        row1 = min(row0 + rows_per_batch, counts[0])
        n_tiles = (row1 - row0) * per_row
        lo, hi = row0 * tile - pad, min(row1 * tile + pad, size_x)  # input rows of the slab's windows
        slab[: max(0, -lo)] = 0
        slab[max(0, -lo): hi - lo, pad: pad + size_y, pad: pad + size_z] = source[max(0, lo): hi]
        slab[hi - lo:] = 0
        windows = slab[: (row1 - row0) * tile + kernel - 1].unfold(0, window, tile).unfold(1, window, tile)
        windows = windows.unfold(2, window, tile)  # (rows, ny, nz, Cin, F, F, F) view
        batch = windows.reshape(n_tiles, cin, window, window, window)
        freq = torch.fft.rfftn(batch, dim=(2, 3, 4))
        del batch
        # per frequency, the (tiles, Cin) block with (re, im) interleaved, times the real block kernel
        freq = torch.view_as_real(freq.view(n_tiles, cin, frequencies).permute(2, 0, 1).contiguous())
        product = torch.bmm(freq.view(frequencies, n_tiles, 2 * cin), spectrum)  # (f, tiles, 2 Cout)
        del freq
        product = torch.view_as_complex(product.view(frequencies, n_tiles, cout, 2)).permute(1, 2, 0)
        result = torch.fft.irfftn(product.reshape(n_tiles, cout, window, window, half), s=(window,) * 3,
                                  dim=(2, 3, 4))
        del product
        # (rows, ny, nz, Cout, T, T, T) -> (rows, T, ny, T, nz, T, Cout): the tiles in place
        valid = result[..., :tile, :tile, :tile].view(row1 - row0, counts[1], counts[2], cout, tile, tile, tile)
        valid = valid.permute(0, 4, 1, 5, 2, 6, 3).reshape((row1 - row0) * tile, counts[1] * tile,
                                                             counts[2] * tile, cout)
        x0, x1 = row0 * tile, min(row1 * tile, size_x)
        out_view[x0:x1] = valid[: x1 - x0, :size_y, :size_z]
        del result, valid
    if bias is not None:
        out_view.add_(bias)
    return out


class FFTConv3d(nn.Module):
    """'Same'-padded ``nn.Conv3d`` layers (stride 1, odd cubic kernel) of one input run as one tiled
    FFT convolution with tile size ``tile``: their output channels side by side (the input's
    spectrum is computed once for all). The kernel spectrum is computed on first use and again
    whenever a weight changes."""

    def __init__(self, convs, tile: int):
        super().__init__()
        self.convs = [convs] if isinstance(convs, nn.Conv3d) else list(convs)
        k = self.convs[0].kernel_size[0]
        for conv in self.convs:
            if conv.kernel_size != (k, k, k) or k % 2 == 0 or conv.stride != (1, 1, 1) or conv.groups != 1 \
                    or conv.padding != (k // 2,) * 3 or conv.dilation != (1, 1, 1) or conv.in_channels != self.convs[0].in_channels:
                raise ValueError("FFTConv3d needs stride-1, 'same'-padded odd cubic kernels of one input")
        self.tile, self.kernel = tile, k
        self._spectrum, self._versions = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        versions = [conv.weight._version for conv in self.convs]
        if self._spectrum is None or self._versions != versions:  # new or reloaded weights
            weight = torch.cat([conv.weight.detach() for conv in self.convs])
            self._spectrum = kernel_spectrum(weight, self.tile + self.kernel - 1)
            self._versions = versions
        bias = None
        if all(conv.bias is not None for conv in self.convs):
            bias = torch.cat([conv.bias.detach() for conv in self.convs])
        return fft_conv3d(x, self._spectrum, bias, self.kernel, self.tile)
