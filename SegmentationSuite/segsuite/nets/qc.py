"""SynthSeg's QC regressor (neurite ``conv_enc`` with residuals + two final convs) with Keras layer names.

Per level L: conv ``qc_conv_downarm_L_0`` + ReLU, conv ``qc_conv_downarm_L_1`` WITHOUT activation,
``qc_expand_down_merge_L`` (conv + ReLU of the level's input, to match the feature count), add,
ReLU, batch norm ``qc_bn_down_L``, max-pool 2 (Keras 'same' padding == ceil mode).
After the encoder: max-pool ``qc_maxpool_3``, ``qc_final_conv_0/1`` (conv + ReLU), spatial mean.

``forward`` is the plain layer-by-layer network on a one-hot (N, C, X, Y, Z) tensor. ``scores``
takes the label volume itself and computes the same thing faster (see ``scores``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fftconv import DFTConv3d, cached_fourier_conv

# 5x5x5 layers of the fast path that run as tiled Fourier convolutions: (method, tile size), window =
# tile + 4. "matmul": the transforms as matrix products (DFTConv3d); "fft": torch.fft (FFTConv3d),
# slower here. One layer at a time, 2 threads, AMD EPYC Zen 4, seconds (direct / torch.fft / matmul,
# tile): level 0, 24 -> 24 at 224^3: 10.4 / 10.7 / 3.6 (28); level 1, 24 -> 48+48 at 112^3:
# 3.9 / 3.2 / 1.7 (14); 48 -> 48: 4.0 / 1.75 / 1.2 (14); level 2, 48 -> 96+96 at 56^3: 1.9 / - / 0.5
# (14); 96 -> 96: 1.7 / - / 0.5 (14); level 3 at 28^3, first call (kernel spectrum included), 96 ->
# 192+192: 0.96 / - / 0.63 (4), 192 -> 192: 1.0 / - / 0.57 (4). Smaller tiles need smaller kernel
# spectra (57 MiB at level 1 for tile 14 vs 306 MiB for 28, the same speed; 90 MiB at level 3 for
# tile 4 vs 441 MiB for 10, whose spectra take longer to compute than they save on one scan).
FFT_TILES: dict = {"conv_downarm_0_1": ("matmul", 28),
                   "conv_downarm_1_0": ("matmul", 14), "expand_down_merge_1": ("matmul", 14),
                   "conv_downarm_1_1": ("matmul", 14),
                   "conv_downarm_2_0": ("matmul", 14), "expand_down_merge_2": ("matmul", 14),
                   "conv_downarm_2_1": ("matmul", 14),
                   "conv_downarm_3_0": ("matmul", 4), "expand_down_merge_3": ("matmul", 4),
                   "conv_downarm_3_1": ("matmul", 4)}


class KerasQCNet(nn.Module):
    def __init__(self, prefix: str = "qc", in_channels: int = 9, n_outputs: int = 9, n_levels: int = 4,
                 n_features: int = 24, feat_mult: int = 2, kernel_size: int = 5, n_conv_per_level: int = 2):
        super().__init__()
        self.prefix = prefix
        self.n_levels = n_levels
        self.n_conv = n_conv_per_level
        pad = kernel_size // 2
        self.layers = nn.ModuleDict()
        channels = in_channels
        self.expands = []
        for level in range(n_levels):
            width = int(round(n_features * feat_mult ** level))
            level_in = channels
            for conv in range(n_conv_per_level):
                self.layers[f"{prefix}_conv_downarm_{level}_{conv}"] = nn.Conv3d(channels, width, kernel_size, padding=pad)
                channels = width
            # neurite adds a matching conv only when both feature counts exceed 1 and differ
            expand = level_in > 1 and width > 1 and level_in != width
            self.expands.append(expand)
            if expand:
                self.layers[f"{prefix}_expand_down_merge_{level}"] = nn.Conv3d(level_in, width, kernel_size, padding=pad)
            self.layers[f"{prefix}_bn_down_{level}"] = nn.BatchNorm3d(channels, eps=1e-3)
        self.layers[f"{prefix}_final_conv_0"] = nn.Conv3d(channels, n_outputs, kernel_size, padding=pad)
        self.layers[f"{prefix}_final_conv_1"] = nn.Conv3d(n_outputs, n_outputs, kernel_size, padding=pad)
        self.eval()

    def keras_layers(self) -> dict[str, nn.Module]:
        return dict(self.layers.items())

    def _fast_conv(self, *names: str):
        """The layers ``prefix_name`` (one, or several of one input whose outputs are stacked) as
        the fast path runs them: a tiled Fourier convolution (kernel spectrum cached) when all are in
        ``FFT_TILES`` with one method and tile size, else the direct convolution (of one layer)."""
        layers = [self.layers[f"{self.prefix}_{name}"] for name in names]
        methods = {FFT_TILES.get(name) for name in names}
        if None in methods or len(methods) > 1:
            if len(layers) > 1:
                return None
            return layers[0]
        method, tile = methods.pop()
        return cached_fourier_conv(self.__dict__.setdefault("_fft_convs", {}), names, layers, tile, method)

    # ---- fast path: the label volume in, channels-last throughout -------------------------------
    def _one_hot_tables(self):
        """The level-0 convolutions of the one-hot input (``conv_downarm_0_0`` and
        ``expand_down_merge_0``, side by side) as lookup tables: row ``(a, b, code)`` holds the
        kernel columns of taps (a, b, c) for the labels encoded in ``code``, summed over a group of
        z taps (3 + 2 for a 5-tap kernel). Label ``C`` (one past the last) is the zero padding."""
        p = self.prefix
        weights = [self.layers[f"{p}_conv_downarm_0_0"].weight]
        if self.expands[0]:
            weights.append(self.layers[f"{p}_expand_down_merge_0"].weight)
        weight = torch.cat(weights, 0)  # (out, C, k, k, k)
        out, channels, k = weight.shape[0], weight.shape[1], weight.shape[2]
        base = channels + 1
        # (k, k, k, base, out): the kernel column of each tap and label, a zero row for the padding
        columns = torch.cat([weight.permute(2, 3, 4, 1, 0), weight.new_zeros((k, k, k, 1, out))], 3)
        groups = [(start, min(start + 3, k)) for start in range(0, k, 3)]
        tables = []
        for start, stop in groups:
            table = columns.new_zeros((k, k) + (base,) * (stop - start) + (out,))
            for offset, c in enumerate(range(start, stop)):
                shape = [k, k] + [1] * (stop - start) + [out]
                shape[2 + offset] = base
                table = table + columns[:, :, c].reshape(shape)
            tables.append(table.reshape(-1, out))
        return torch.cat(tables), groups, base

    def _level0_codes(self, labels: torch.Tensor):
        """What the look-ups of ``labels`` need, computed once per volume: the tables, and per
        z-group the labels of the group's taps as one base-``base`` number at every position of the
        padded volume (label ``base - 1`` is the zero padding)."""
        p = self.prefix
        table, groups, base = self._one_hot_tables()
        pad = self.layers[f"{p}_conv_downarm_0_0"].kernel_size[0] // 2
        padded = F.pad(labels.to(torch.int64), (pad,) * 6, value=base - 1)
        pad_taps = (2 * pad + 1) ** 2  # the (a, b) taps of one z-group
        codes, offsets, row = [], [], 0
        for start, stop in groups:
            code = torch.zeros_like(padded[:, :, : padded.shape[2] - (stop - start) + 1])
            for c in range(start, stop):
                code = code * base + padded[:, :, c - start: c - start + code.shape[2]]
            codes.append(code.to(torch.int32))
            offsets.append(row)
            row += pad_taps * base ** (stop - start)
        bias = torch.cat([self.layers[f"{p}_conv_downarm_0_0"].bias, self.layers[f"{p}_expand_down_merge_0"].bias])
        return table, groups, base, codes, offsets, bias

    def _lookup_into(self, prepared, region, h_out, r_out, slab: int = 8):
        """relu(conv_downarm_0_0(onehot)) into ``h_out`` and relu(expand_down_merge_0(onehot)) into
        ``r_out`` ((X, Y, Z, C) views) for the voxels of ``region`` [(lo, hi)] * 3, by summing table
        rows: a convolution of a one-hot input only ever multiplies kernel weights by 0 or 1."""
        table, groups, base, codes, offsets, bias = prepared
        k = self.layers[f"{self.prefix}_conv_downarm_0_0"].kernel_size[0]
        width0 = h_out.shape[-1]
        (x0, x1), (y0, y1), (z0, z1) = region
        ny, nz = y1 - y0, z1 - z0
        # the look-up rows of every voxel of a slab, (slab, Y, Z, group, a, b), written in one pass per
        # group from a strided view of the group's codes: [x, y, z, a, b] -> code[x + a, y + b, z + start]
        index = torch.empty((min(slab, x1 - x0), ny, nz, len(groups), k, k), dtype=torch.int32, device=table.device)
        tap_rows = torch.arange(k * k, dtype=torch.int32, device=table.device).view(k, k)
        for a in range(x0, x1, slab):
            b = min(a + slab, x1)
            rows = index[: b - a]
            for g, ((start, stop), code, offset) in enumerate(zip(groups, codes, offsets)):
                s0, s1, s2 = code.stride()
                view = code.as_strided((b - a, ny, nz, k, k), (s0, s1, s2, s0, s1),
                                       code.storage_offset() + a * s0 + y0 * s1 + (z0 + start) * s2)
                torch.add(view, tap_rows * base ** (stop - start) + offset, out=rows[:, :, :, g])
            summed = F.embedding_bag(rows.view(-1, len(groups) * k * k), table, mode="sum")  # (voxels, out)
            summed = summed.add_(bias).relu_().view(b - a, ny, nz, -1)
            h_out[a - x0: b - x0] = summed[..., :width0]
            r_out[a - x0: b - x0] = summed[..., width0:]
            del summed

    def _level0_pooled(self, labels: torch.Tensor, out, slab: int = 32):
        """Level 0 (look-ups, ``conv_downarm_0_1``, residual, ReLU, batch norm, max-pool) on the
        voxels ``out`` [(lo, hi)] * 3 (even lows): the pooled (1, C, ...) result, channels-last.

        Streamed along x in slabs of ``slab`` rows, so that no full-size tensor exists: a rolling
        window holds the look-up rows a slab's 5x5x5 convolution reads (2 more on each side, zeros
        outside the volume); it is computed without padding, so each row is looked up once."""
        p = self.prefix
        if not self.expands[0] or self.n_conv != 2:
            raise ValueError("the fast QC path needs level 0's matching convolution and two convolutions")
        conv = self.layers[f"{p}_conv_downarm_0_1"]
        halo = conv.kernel_size[0] // 2
        fourier = self._fast_conv("conv_downarm_0_1")
        fourier = fourier if isinstance(fourier, DFTConv3d) else None
        if fourier is not None:  # slabs of one tile row; the window's y/z reach whole tiles
            slab = fourier.tile
        slab += slab % 2  # even, so that every slab pools on the volume's 2x2x2 grid
        width = conv.out_channels
        size = labels.shape
        prepared = self._level0_codes(labels)
        (x0, x1), (y0, y1), (z0, z1) = out
        ny, nz = y1 - y0, z1 - z0
        window = (min(slab, x1 - x0), ny, nz)
        if fourier is not None:
            window = tuple(-(-n // fourier.tile) * fourier.tile for n in window)
        window = tuple(n + 2 * halo for n in window)
        # (1, C, X, Y, Z) channels-last, written through (X, Y, Z, C) views; a permuted (X, Y, Z, C)
        # tensor would have a batch stride of C, which made oneDNN's convolution 1.7x slower
        h_conv = torch.empty((1, width) + window, device=labels.device, memory_format=torch.channels_last_3d).zero_()
        h_window = h_conv[0].permute(1, 2, 3, 0)
        r_window = torch.zeros_like(h_window)
        # the window's y/z part inside the volume (outside it stays zero: the conv's zero padding)
        ys, zs = (max(y0 - halo, 0), min(y1 + halo, size[1])), (max(z0 - halo, 0), min(z1 + halo, size[2]))
        yw, zw = slice(ys[0] - y0 + halo, ys[1] - y0 + halo), slice(zs[0] - z0 + halo, zs[1] - z0 + halo)
        pooled = torch.empty((1, width) + tuple(-(-(hi - lo) // 2) for lo, hi in out), device=labels.device,
                             memory_format=torch.channels_last_3d)
        if fourier is not None:  # the convolution's output, one slab, reused
            h_slab = torch.empty((1, width, slab, ny, nz), device=labels.device, memory_format=torch.channels_last_3d)
        for a in range(x0, x1, slab):  # window row 0 is volume row a - halo
            b = min(a + slab, x1)
            rows = b - a + 2 * halo
            keep = 2 * halo if a > x0 else 0  # rows the previous (full) window already looked up, moved down
            for window_rows in (h_window, r_window):  # (a clone: the rows overlap when slab < keep)
                window_rows[:keep] = window_rows[slab: slab + keep].clone()
            first, last = max(a - halo + keep, 0), min(b + halo, size[0])
            h_window[max(last - (a - halo), keep): rows].zero_()  # rows past the volume's end
            if last > first:
                self._lookup_into(prepared, [(first, last), ys, zs],
                                  h_window[first - (a - halo): last - (a - halo), yw, zw],
                                  r_window[first - (a - halo): last - (a - halo), yw, zw])
            if fourier is not None:
                h = h_slab[:, :, : b - a]
                fourier.valid(h_window, h[0].permute(1, 2, 3, 0))
            else:
                h = F.conv3d(h_conv[:, :, :rows], conv.weight, conv.bias)  # (1, C, b - a, ...), unpadded
            residual = r_window[halo: halo + b - a, halo: halo + ny, halo: halo + nz].permute(3, 0, 1, 2)[None]
            h = h.add_(residual).relu_()
            del residual
            pooled[:, :, (a - x0) // 2: -(-(b - x0) // 2)] = self._bn_after_pool(f"{p}_bn_down_0", h)
            del h
        return pooled

    def _bn_after_pool(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """batch_norm then max-pool 2: pooled first when every scale is positive (the affine map
        is then monotone and commutes with the max), on the 8x smaller tensor."""
        bn = self.layers[name]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        shape = (1, -1, 1, 1, 1)
        if bool((scale > 0).all()):
            x = F.max_pool3d(x, 2, ceil_mode=True)
            return x.mul_(scale.view(shape)).add_(shift.view(shape))
        x = x.mul_(scale.view(shape)).add_(shift.view(shape))
        return F.max_pool3d(x, 2, ceil_mode=True)

    # Outside the brain the QC window is background (group 0). Wherever a layer's receptive field
    # holds background only, its output is what the same layer gives on an all-background volume,
    # which varies only near the volume's faces (zero padding). Levels 0 and 1 (most of the cost)
    # therefore compute their 5x5x5 convolutions on the box that the labels' bounding box reaches,
    # and copy the rest from a small all-background volume of BACKGROUND_SIZE^3: its first and
    # last BACKGROUND_SIZE / 2 voxels per axis reproduce the big volume's faces (the face effects
    # reach 4 voxels at level 0, 6 at level 1: both within the half; pooling stays aligned when the
    # sizes are even), any voxel between them its constant interior.
    BACKGROUND_SIZE = 32
    BOXED_LEVELS = 2
    MAX_BOX_FRACTION = 0.5

    def _label_box(self, labels: torch.Tensor):
        """[(lo, hi)] per axis of the non-background labels, or None when skipping cannot apply
        (odd or small sizes) or would not pay (no background margin)."""
        if any(n % 2 or n < 2 * self.BACKGROUND_SIZE for n in labels.shape):
            return None
        box = []
        for axis in range(3):
            present = (labels != 0).any(dim=tuple(a for a in range(3) if a != axis))
            where = torch.nonzero(present).flatten()
            if where.numel() == 0:
                return None
            box.append((int(where[0]), int(where[-1]) + 1))
        covered = 1.0
        for (lo, hi), n in zip(box, labels.shape):
            covered *= (hi - lo) / n
        # the fills and pastes cost more than the box saves when it covers most of the window
        # (whole QC pass, box over 60 % of 224^3, 2-core Xeon: 30.2 s boxed vs 21.4 s plain)
        return box if covered <= self.MAX_BOX_FRACTION else None

    @staticmethod
    def _pooled_box(box, reach, size):
        """The box of a level's output on the pooled grid (reach: how far its convs spread the input box)."""
        return [(max((lo - reach) // 2, 0), min(-(-(hi + reach) // 2), -(-n // 2))) for (lo, hi), n in zip(box, size)]

    @staticmethod
    def _grow(box, margin, size):
        return [(max(lo - margin, 0), min(hi + margin, n)) for (lo, hi), n in zip(box, size)]

    def _background_fill(self, small: torch.Tensor, size) -> torch.Tensor:
        """The big volume's background response of ``size`` from the small one's (1, C, S, S, S):
        faces copied, the interior from the small volume's centre."""
        band = small.shape[2] // 2
        index = []
        for n in size:
            v = torch.arange(n, device=small.device)
            index.append(torch.where(v < band, v, torch.where(v >= n - band, v - n + 2 * band, band)))
        cl = small[0].permute(1, 2, 3, 0)  # (S, S, S, C)
        filled = cl[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]  # (X, Y, Z, C)
        return filled[None].permute(0, 4, 1, 2, 3)  # channels-last (1, C, X, Y, Z), batch stride X*Y*Z*C

    @staticmethod
    def _paste(out, result, box, inner):
        """out[box] = the box's part of ``result``, computed on the region ``inner`` (box + margin)."""
        out[(slice(None), slice(None)) + tuple(slice(lo, hi) for lo, hi in box)] = \
            result[(slice(None), slice(None)) + tuple(slice(lo - i, hi - i) for (lo, hi), (i, _) in zip(box, inner))]
        return out

    def _conv_on_box(self, conv, x, key, box, record, background):
        """conv(x) (a 'same' 5x5x5 layer) computed on ``box`` only, the rest from the background
        response; plain conv(x) without a box. ``record`` collects the outputs by ``key``."""
        if box is None or background is None:
            out = conv(x)
        else:
            size = x.shape[2:]
            out = self._background_fill(background[key], size)
            inner = self._grow(box, 2, size)  # the input the box's outputs read
            result = conv(x[(slice(None), slice(None)) + tuple(slice(lo, hi) for lo, hi in inner)])
            self._paste(out, result, box, inner)
            del result
        if record is not None:
            record[key] = out.clone()
        return out

    def scores(self, labels: torch.Tensor) -> torch.Tensor:
        """The network's output (n_outputs,) for the one-hot encoding of ``labels`` (an integer
        (X, Y, Z) volume of channel indices), without building the one-hot tensor: level 0's two
        convolutions of the one-hot input are table look-ups (``_level0_pooled``), the 5x5x5 layers
        of levels 0-3 are tiled Fourier convolutions (``FFT_TILES``), levels 0 and 1 convolve only
        where the labels are not all background (see ``BACKGROUND_SIZE``), every other convolution
        runs on channels-last tensors (oneDNN's fast layout), the residual sums, ReLUs and batch
        norms work in place, and the batch norms run after the max-pools."""
        box = self._label_box(labels)
        background = None
        if box is not None:
            background = {}
            self._scores(torch.zeros((self.BACKGROUND_SIZE,) * 3, dtype=labels.dtype, device=labels.device),
                         None, background)
        return self._scores(labels, box, None, background)

    def _scores(self, labels, box, record=None, background=None):
        p = self.prefix
        x = None
        size = labels.shape
        for level in range(self.n_levels):
            level_box = box if level < self.BOXED_LEVELS else None
            if level == 0:
                reach = 2 * self.n_conv
                if level_box is None:
                    x = self._level0_pooled(labels, [(0, n) for n in size])
                else:  # the region whose outputs can differ from the background's, widened to even bounds
                    out = [(lo // 2 * 2, min(-(-hi // 2) * 2, n)) for (lo, hi), n in zip(self._grow(level_box, reach, size), size)]
                    x = self._background_fill(background["pooled_0"], tuple(-(-n // 2) for n in size))
                    x[(slice(None), slice(None)) + tuple(slice(lo // 2, hi // 2) for lo, hi in out)] = \
                        self._level0_pooled(labels, out)
                if record is not None:
                    record["pooled_0"] = x.clone()
                if box is not None:
                    box = self._pooled_box(box, reach, size)
                size = x.shape[2:]
                continue
            x = x.contiguous(memory_format=torch.channels_last_3d)
            h, residual, first = x, None, 0
            merged = self._fast_conv(f"conv_downarm_{level}_0", f"expand_down_merge_{level}") \
                if self.expands[level] and self.n_conv > 1 else None
            if merged is not None:  # one input spectrum for the level's first conv and its expand
                both = self._conv_on_box(merged, x, f"merged_{level}", level_box and self._grow(level_box, 2, size),
                                         record, background)
                width = self.layers[f"{p}_conv_downarm_{level}_0"].out_channels
                h, residual, first = both[:, :width].relu_(), both[:, width:].relu_(), 1
                del both
            reach = 2 * first
            for conv in range(first, self.n_conv):
                reach += 2
                h = self._conv_on_box(self._fast_conv(f"conv_downarm_{level}_{conv}"), h, f"conv_{level}_{conv}",
                                      level_box and self._grow(level_box, reach, size), record, background)
                if conv < self.n_conv - 1:
                    h = h.relu_()
            if residual is None:
                if self.expands[level]:
                    residual = self._conv_on_box(self._fast_conv(f"expand_down_merge_{level}"), x, f"expand_{level}",
                                                 level_box and self._grow(level_box, 2, size), record, background).relu_()
                else:
                    residual = x
            del x
            h = h.add_(residual).relu_()
            del residual
            x = self._bn_after_pool(f"{p}_bn_down_{level}", h)
            del h
            # the box of this level's output, on the pooled grid (reach: how far its convs spread it)
            if box is not None:
                box = self._pooled_box(box, reach, size)
            size = x.shape[2:]
        x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.layers[f"{p}_final_conv_0"](x).relu_()
        x = self.layers[f"{p}_final_conv_1"](x).relu_()
        return x.mean(dim=(2, 3, 4))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.prefix
        for level in range(self.n_levels):
            level_in = x
            for conv in range(self.n_conv):
                x = self.layers[f"{p}_conv_downarm_{level}_{conv}"](x)
                if conv < self.n_conv - 1:
                    x = F.relu(x, inplace=True)
            if self.expands[level]:
                residual = F.relu(self.layers[f"{p}_expand_down_merge_{level}"](level_in), inplace=True)
            else:
                residual = level_in
            del level_in
            x = residual.add_(x) if self.expands[level] else residual + x
            del residual
            x = self.layers[f"{p}_bn_down_{level}"](F.relu(x, inplace=True))
            x = F.max_pool3d(x, 2, ceil_mode=True)  # levels 0..2 pool inside the encoder, then qc_maxpool_3
        x = F.relu(self.layers[f"{p}_final_conv_0"](x), inplace=True)
        x = F.relu(self.layers[f"{p}_final_conv_1"](x), inplace=True)
        return x.mean(dim=(2, 3, 4))
