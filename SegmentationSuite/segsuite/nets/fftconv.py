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

    def _stacked_weight_if_changed(self):
        """The layers' weights stacked along the outputs when the cached spectrum is missing or
        stale (new or reloaded weights), else None."""
        # inference tensors (a net built under torch.inference_mode) keep no version counter:
        # their storage stands in, so a reload into new tensors is still seen
        versions = [conv.weight.data_ptr() if conv.weight.is_inference() else conv.weight._version
                    for conv in self.convs]
        if self._spectrum is not None and self._versions == versions:
            return None
        self._versions = versions
        return torch.cat([conv.weight.detach() for conv in self.convs])

    def _bias(self):
        if all(conv.bias is not None for conv in self.convs):
            return torch.cat([conv.bias.detach() for conv in self.convs])
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._stacked_weight_if_changed()
        if weight is not None:
            self._spectrum = kernel_spectrum(weight, self.tile + self.kernel - 1)
        return fft_conv3d(x, self._spectrum, self._bias(), self.kernel, self.tile)


# ---- the same convolution with the transforms as matrix products ------------------------------
# torch.fft runs a 32-point transform at a few GFLOP/s on CPU; the same DFT written as a dense
# matrix product does ~4x the operations at sgemm speed (40-75 GFLOP/s here, bandwidth-bound). The
# transforms are real matrices acting on (point, re|im) pairs, laid out so that each stage's output
# is the next stage's input without a permute: z (real -> (re|im, f)), y ((y, re|im) -> (re|im, y')),
# x ((x, re|im) -> (re|im, x')); the product per frequency runs on the re and im planes; the inverse
# stages give only the tile's valid points.

def dft_stages(window: int, tile: int, kernel: int) -> tuple:
    """The six float32 stage matrices for overlap-save with the flipped kernel: a circular
    convolution of a ``window``-point window is exact on its last ``tile`` points (k - 1 onwards)."""
    n = torch.arange(window, dtype=torch.float64)
    half = torch.arange(window // 2 + 1, dtype=torch.float64)

    def complex_block(angle, scale, rows_re_im_first, columns_re_im_first):
        # e^{i angle} * scale applied to (re, im) pairs as a real matrix [out re|im, out, in re|im, in]
        c, s = torch.cos(angle) * scale, torch.sin(angle) * scale
        block = torch.zeros((2, angle.shape[0], 2, angle.shape[1]), dtype=torch.float64)
        block[0, :, 0], block[0, :, 1], block[1, :, 0], block[1, :, 1] = c, -s, s, c
        if not rows_re_im_first:
            block = block.permute(1, 0, 2, 3)
        if not columns_re_im_first:
            block = block.permute(0, 1, 3, 2)
        return block.reshape(2 * angle.shape[0], 2 * angle.shape[1])

    forward = -2 * torch.pi * n[:, None] * n[None, :] / window
    angle_z = -2 * torch.pi * half[:, None] * n[None, :] / window
    forward_z = torch.cat([torch.cos(angle_z), torch.sin(angle_z)])  # rows (re|im, f)
    # y and x use one matrix: (point, re|im) rows in, (re|im, point') rows out
    forward_y = forward_x = complex_block(forward, 1.0, True, False)
    valid = torch.arange(kernel - 1, kernel - 1 + tile, dtype=torch.float64)
    inverse = 2 * torch.pi * valid[:, None] * n[None, :] / window
    # and back: (re|im, point') rows in, (point, re|im) rows out, only the tile's valid points
    inverse_x = inverse_y = complex_block(inverse, 1 / window, False, True)
    # real output along z: the Hermitian half counts twice except f = 0 and the Nyquist frequency
    weight = torch.full((window // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = 1
    if window % 2 == 0:
        weight[-1] = 1
    angle = 2 * torch.pi * valid[:, None] * half[None, :] / window
    inverse_z = torch.cat([torch.cos(angle) * weight, -torch.sin(angle) * weight], 1) / window  # cols (re|im, f)
    return tuple(m.to(torch.float32).contiguous() for m in (forward_z, forward_y, forward_x, inverse_x, inverse_y, inverse_z))


def dft_kernel_spectrum(weight: torch.Tensor, window: int) -> tuple:
    """The flipped kernel's spectrum on a ``window``^3 grid as (re, im), each (Fx * Fy * Fz', Cin,
    Cout) float32, frequencies ordered (x, y, z) as ``dft_conv3d_valid``'s product needs them."""
    cout, cin, k = weight.shape[0], weight.shape[1], weight.shape[2]
    flipped_taps = (k - 1 - torch.arange(k, dtype=torch.float64))[:, None]

    def dft(n):  # (k, n): e^{-2 pi i f (k - 1 - tap) / window}
        angle = -2 * torch.pi * flipped_taps * torch.arange(n, dtype=torch.float64) / window
        return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)

    full, half = dft(window), dft(window // 2 + 1)
    spectrum = torch.einsum("oiabc,cz->abzio", weight.detach().to(torch.complex64), half)
    spectrum = torch.einsum("abzio,by->ayzio", spectrum, full)
    spectrum = torch.einsum("ayzio,ax->xyzio", spectrum, full).reshape(-1, cin, cout)
    return spectrum.real.contiguous(), spectrum.imag.contiguous()


def dft_conv3d_valid(source: torch.Tensor, spectrum: tuple, stages: tuple, kernel: int, tile: int,
                     out: torch.Tensor, max_batch_bytes: int = 96 << 20) -> torch.Tensor:
    """``out`` ((X, Y, Z, Cout) view) = conv3d of ``source`` without padding: ``source`` is an
    (X', Y', Z', Cin) view (channels-last storage) reaching at least ceil(n / tile) * tile +
    kernel - 1 along each axis (what lies past n + kernel - 1 only feeds discarded outputs).
    Tiles run a batch of y-rows at a time, about ``max_batch_bytes`` per transformed tensor."""
    real, imag = spectrum
    forward_z, forward_y, forward_x, inverse_x, inverse_y, inverse_z = stages
    window = tile + kernel - 1
    half = window // 2 + 1
    cin, cout = real.shape[1], real.shape[2]
    counts = [-(-n // tile) for n in out.shape[:3]]
    if any(have < count * tile + kernel - 1 for have, count in zip(source.shape[:3], counts)) or source.shape[3] != cin:
        raise ValueError("dft_conv3d_valid: the source window is smaller than the tiles need")
    strides = source.stride()
    rows_per_batch = max(1, min(counts[1], max_batch_bytes // (window ** 3 * max(cin, cout) * 4 * counts[2])))
    for tx in range(counts[0]):
        for ty in range(0, counts[1], rows_per_batch):
            rows = min(rows_per_batch, counts[1] - ty)
            tiles = rows * counts[2]
            windows = source.as_strided(
                (window, window, window, rows, counts[2], cin),
                (strides[0], strides[1], strides[2], tile * strides[1], tile * strides[2], strides[3]),
                source.storage_offset() + tx * tile * strides[0] + ty * tile * strides[1])
            columns = tiles * cin
            a = torch.matmul(forward_z, windows.reshape(window * window, window, columns))
            a = torch.matmul(forward_y, a.view(window, 2 * window, half * columns))
            a = torch.matmul(forward_x, a.view(2 * window, window * half * columns)).view(2, -1, tiles, cin)
            product = a.new_empty((2, a.shape[1], tiles, cout))
            torch.bmm(a[0], real, out=product[0]).baddbmm_(a[1], imag, alpha=-1)
            torch.bmm(a[0], imag, out=product[1]).baddbmm_(a[1], real)
            del a
            columns = tiles * cout
            o = torch.matmul(inverse_x, product.view(2 * window, window * half * columns))
            del product
            o = torch.matmul(inverse_y, o.view(tile, 2 * window, half * columns))
            o = torch.matmul(inverse_z, o.view(tile * tile, 2 * half, columns))  # (x, y, z, tiles, Cout)
            o = o.view(tile, tile, tile, rows, counts[2], cout).permute(0, 3, 1, 4, 2, 5)
            o = o.reshape(tile, rows * tile, counts[2] * tile, cout)
            x0, y0 = tx * tile, ty * tile
            x1, y1 = min(x0 + tile, out.shape[0]), min(y0 + rows * tile, out.shape[1])
            out[x0:x1, y0:y1] = o[: x1 - x0, : y1 - y0, : out.shape[2]]
            del o
    return out


class DFTConv3d(FFTConv3d):
    """``FFTConv3d`` with the transforms as matrix products (``dft_conv3d_valid``); ``valid``
    convolves an already padded window."""

    def _prepared(self):
        weight = self._stacked_weight_if_changed()
        if weight is not None:
            window = self.tile + self.kernel - 1
            self._spectrum = dft_kernel_spectrum(weight, window)
            self._stages = dft_stages(window, self.tile, self.kernel)
        return self._spectrum, self._stages

    def valid(self, source: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (X, Y, Z, Cout) view = the layers on the padded (X', Y', Z', Cin) ``source`` view."""
        spectrum, stages = self._prepared()
        dft_conv3d_valid(source, spectrum, stages, self.kernel, self.tile, out)
        b = self._bias()
        return out.add_(b) if b is not None else out

    def forward(self, x: torch.Tensor, pad_rows: bool = True) -> torch.Tensor:
        """The layers' 'same' convolution of a (1, Cin, X, Y, Z) ``x``; with ``pad_rows`` False,
        unpadded along axis 2 (``x`` is a window of rows that brings its own halo)."""
        _, cin, size_x, size_y, size_z = x.shape
        k, tile = self.kernel, self.tile
        pad = k // 2
        row_pad = pad if pad_rows else 0
        rows = size_x + 2 * row_pad - (k - 1)
        spectrum, stages = self._prepared()
        cout = spectrum[0].shape[2]
        out = torch.empty((1, cout, rows, size_y, size_z), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last_3d)
        out_view, source = out[0].permute(1, 2, 3, 0), x[0].permute(1, 2, 3, 0)
        # one zero-padded x-row of tiles at a time, reused
        slab = source.new_zeros((tile + k - 1, -(-size_y // tile) * tile + k - 1, -(-size_z // tile) * tile + k - 1, cin))
        for x0 in range(0, rows, tile):
            lo, hi = x0 - row_pad, min(x0 - row_pad + tile + k - 1, size_x)  # the input rows of its windows
            slab[: max(0, -lo)] = 0
            slab[max(0, -lo): hi - lo, pad: pad + size_y, pad: pad + size_z] = source[max(0, lo): hi]
            slab[hi - lo:] = 0
            dft_conv3d_valid(slab, spectrum, stages, k, tile, out_view[x0: x0 + tile])
        b = self._bias()
        return out.add_(b.view(1, -1, 1, 1, 1)) if b is not None else out


def cached_fourier_conv(cache: dict, key, layers, tile: int, method: str = "matmul") -> FFTConv3d:
    """The tiled Fourier convolution of ``layers`` held in ``cache`` under ``key`` (a plain dict
    of its owner's: not a submodule, so no state_dict entry), made anew when its layers, tile or
    method ("matmul": DFTConv3d, "fft": FFTConv3d) differ."""
    kind = DFTConv3d if method == "matmul" else FFTConv3d
    held = cache.get(key)
    if held is None or type(held) is not kind or held.convs != list(layers) or held.tile != tile:
        held = cache[key] = kind(layers, tile)
    return held
