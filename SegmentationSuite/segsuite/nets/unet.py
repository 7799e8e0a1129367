"""The neurite/Keras U-Net family (SynthSeg, ScLimbic) as a PyTorch module with Keras layer names.

Per encoder level: ``n_conv`` conv+ELU, batch norm, max-pool 2 (not at the deepest level).
Per decoder level: nearest up-sampling x2, concatenation [skip, up] where the skip is the
encoder's last conv output BEFORE its batch norm, ``n_conv`` conv+ELU, batch norm.
Then a 1x1x1 ``likelihood`` conv and a softmax over channels.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .fftconv import DFTConv3d, cached_fourier_conv
from .upconv import conv3d_of_upsampled, phase_kernels, row_window


def _row_padding(conv: nn.Conv3d) -> tuple:
    """The conv's padding without the padding of axis 2 (a window of rows brings its own halo)."""
    return (0,) + tuple(conv.padding[1:])


class KerasUNet(nn.Module):
    def __init__(self, prefix: str, in_channels: int, n_labels: int, n_levels: int = 5,
                 n_features: int = 24, feat_mult: int = 2, kernel_size: int = 3, n_conv_per_level: int = 2,
                 n_skip_levels: Optional[int] = None, batch_norm: bool = True, softmax: bool = True,
                 fourier_tiles: Optional[dict] = None):
        """n_skip_levels: how many decoder levels (counted from the deepest) concatenate their skip
        connection; None means all (SynthSeg's l2l net uses 2 of 4). fourier_tiles: {layer name:
        tile} of plain convolutions that run as tiled Fourier convolutions (``DFTConv3d``)."""
        super().__init__()
        self.prefix = prefix
        self.fourier_tiles = dict(fourier_tiles or {})
        self.n_levels = n_levels
        self.n_conv = n_conv_per_level
        self.batch_norm = batch_norm
        self.softmax = softmax
        n_decoder = n_levels - 1
        self.n_skip_levels = n_decoder if n_skip_levels is None else n_skip_levels
        self.layers = nn.ModuleDict()
        pad = kernel_size // 2
        width = [int(round(n_features * feat_mult ** level)) for level in range(n_levels)]

        channels = in_channels
        for level in range(n_levels):
            for conv in range(n_conv_per_level):
                self.layers[f"{prefix}_conv_downarm_{level}_{conv}"] = nn.Conv3d(channels, width[level], kernel_size, padding=pad)
                channels = width[level]
            if batch_norm:
                self.layers[f"{prefix}_bn_down_{level}"] = nn.BatchNorm3d(channels, eps=1e-3)
        for step in range(n_decoder):
            level = n_levels - 2 - step
            index = n_levels + step
            if step < self.n_skip_levels:
                channels += width[level]
            for conv in range(n_conv_per_level):
                self.layers[f"{prefix}_conv_uparm_{index}_{conv}"] = nn.Conv3d(channels, width[level], kernel_size, padding=pad)
                channels = width[level]
            if batch_norm:
                self.layers[f"{prefix}_bn_up_{step}"] = nn.BatchNorm3d(channels, eps=1e-3)
        self.layers[f"{prefix}_likelihood"] = nn.Conv3d(channels, n_labels, 1)
        self.eval()

    def keras_layers(self) -> dict[str, nn.Module]:
        return dict(self.layers.items())

    def _fourier(self, name: str) -> Optional[DFTConv3d]:
        tile = self.fourier_tiles.get(name)
        if tile is None:
            return None
        return cached_fourier_conv(self.__dict__.setdefault("_fourier_convs", {}), name, [self.layers[name]], tile)

    def _conv_elu(self, name: str, x: torch.Tensor, rows: bool = False) -> torch.Tensor:
        """elu(conv(x)); with ``rows`` unpadded along axis 2 (x is a window of rows with its halo)."""
        fourier = self._fourier(name) if x.device.type == "cpu" else None
        if fourier is not None:
            return F.elu(fourier(x, pad_rows=not rows), inplace=True)
        conv = self.layers[name]
        weight = conv.weight
        padding = _row_padding(conv) if rows else conv.padding
        if x.shape[1] == 1 and x.device.type == "cpu":
            # oneDNN handles one input channel poorly; a zero second channel halves the time
            weight = torch.cat([weight, torch.zeros_like(weight)], 1)
            x = torch.cat([x, torch.zeros_like(x)], 1).contiguous(memory_format=torch.channels_last_3d)
            if torch.backends.mkldnn.is_available():
                # called directly: for so few channels in a slab, PyTorch's heuristic picks its
                # slow reference kernel instead (7x slower on a 36-row slab of 224 x 192)
                out = torch.mkldnn_convolution(x, weight, conv.bias, padding, conv.stride, conv.dilation, 1)
                return F.elu(out, inplace=True)
        return F.elu(F.conv3d(x, weight, conv.bias, padding=padding), inplace=True)

    def _merge_conv_elu(self, name: str, skip: Optional[torch.Tensor], low: torch.Tensor) -> torch.Tensor:
        # conv(cat([skip, upsample(low)])) without building the concatenated or the up-sampled
        # tensor: the kernel splits along its input channels, and the up-sampled half is computed
        # from the low-resolution tensor phase by phase (nets/upconv.py). Exact up to round-off.
        conv = self.layers[name]
        if skip is None:
            return F.elu(conv3d_of_upsampled(low, conv.weight, conv.bias), inplace=True)
        n_skip = skip.shape[1]
        out = F.conv3d(skip, conv.weight[:, :n_skip], conv.bias, padding=conv.padding)
        conv3d_of_upsampled(low, conv.weight[:, n_skip:], out=out, accumulate=True)
        return F.elu(out, inplace=True)

    def _bn_scale_shift(self, name: str):
        bn = self.layers[name]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return scale, bn.bias - bn.running_mean * scale

    def _bn(self, name: str, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if not self.batch_norm:
            return x
        if not inplace:
            return self.layers[name](x)
        # the same affine map as BatchNorm3d in inference, without a second full-size tensor
        scale, shift = self._bn_scale_shift(name)
        return x.mul_(scale.view(1, -1, 1, 1, 1)).add_(shift.view(1, -1, 1, 1, 1))

    def _bn_then_pool(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """max_pool(batch_norm(x)) without normalising the full-resolution tensor: with every
        channel's scale positive the affine map is monotone (so is its float rounding), so it
        commutes with the max and runs on the 8x smaller pooled tensor, with the same values."""
        if self.batch_norm and not bool((self._bn_scale_shift(name)[0] > 0).all()):
            return F.max_pool3d(self._bn(name, x), 2, ceil_mode=True)
        return self._bn(name, F.max_pool3d(x, 2, ceil_mode=True))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[f"{self.prefix}_likelihood"](self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder level's output (the input of the 1x1x1 likelihood conv)."""
        if x.device.type == "cpu":
            # oneDNN's 3D convolutions are about 2-3x faster on channels-last tensors
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x, skips = self._encode(x, range(self.n_levels))
        return self._decode(x, skips, range(self.n_levels - 1))

    def _encode(self, x: torch.Tensor, levels) -> tuple[torch.Tensor, list]:
        """The encoder's ``levels`` (through the deepest): the deepest output and the skips of
        the others, shallowest first."""
        p = self.prefix
        skips = []
        for level in levels:
            for conv in range(self.n_conv):
                x = self._conv_elu(f"{p}_conv_downarm_{level}_{conv}", x)
            skips.append(x)
            if level < self.n_levels - 1:
                x = self._bn_then_pool(f"{p}_bn_down_{level}", x)
            else:
                x = self._bn(f"{p}_bn_down_{level}", x)
        skips.pop()  # the deepest level's output is x itself, not a skip
        return x, skips

    def _decode(self, x: torch.Tensor, skips: list, steps) -> torch.Tensor:
        """The decoder's ``steps`` (from the deepest), each taking the last of ``skips``."""
        p = self.prefix
        for step in steps:
            index = self.n_levels + step
            skip = skips.pop()
            x = self._merge_conv_elu(f"{p}_conv_uparm_{index}_0", skip if step < self.n_skip_levels else None, x)
            del skip
            for conv in range(1, self.n_conv):
                x = self._conv_elu(f"{p}_conv_uparm_{index}_{conv}", x)
            x = self._bn(f"{p}_bn_up_{step}", x, inplace=True)
        return x

    def feature_slabs(self, x: torch.Tensor, slab: int = 32) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``features(x)`` as (start, stop, rows start:stop of axis 2), in order, slab by slab.

        Level 0 runs ``slab`` rows at a time in both the encoder and the last decoder level, each
        slab computing its halo rows again, so that of all full-resolution tensors only the skip
        connection exists at full size: the rest of level 0 (several times the skip's size) stays
        in slab-sized buffers that every slab reuses. On a VM whose host takes freed pages back,
        each new page is a host fault: 0.4-3 s per GiB measured on a 2-vCPU Zen 5."""
        if self.n_levels < 2:
            yield 0, x.shape[2], self.features(x)
            return
        size = x.shape[2]
        slab = max(slab + slab % 2, 2)  # even, so that the slabs pool on the volume's 2x2x2 grid
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        last = self.n_levels - 2  # the decoder step that returns to level 0
        skip, x = self._encoder_level0(x, slab, keep_skip=last < self.n_skip_levels)
        x, skips = self._encode(x, range(1, self.n_levels))
        x = self._decode(x, skips, range(last))
        yield from self._decoder_level0(skip, x, size, slab)

    @staticmethod
    def _zero_outside(x: torch.Tensor, start: int, size: int) -> torch.Tensor:
        """Zero the rows of a window (row 0 = volume row ``start``) that lie outside 0:size: the
        next convolution's zero padding."""
        if start < 0:
            x[:, :, :-start] = 0
        if start + x.shape[2] > size:
            x[:, :, max(size - start, 0):] = 0
        return x

    def _encoder_level0(self, x: torch.Tensor, slab: int, keep_skip: bool = True):
        """Level 0 of the encoder, slab by slab: (its output, the skip connection, or None without
        ``keep_skip``; the pooled batch-normed input of level 1)."""
        p = self.prefix
        size = x.shape[2]
        names = [f"{p}_conv_downarm_0_{conv}" for conv in range(self.n_conv)]
        halo = self.layers[names[0]].padding[0]
        width = self.layers[names[-1]].out_channels
        layout = dict(memory_format=torch.channels_last_3d) if x.device.type == "cpu" else {}
        skip = torch.empty((1, width) + tuple(x.shape[2:]), device=x.device, **layout) if keep_skip else None
        pooled = torch.empty((1, width) + tuple(-(-n // 2) for n in x.shape[2:]), device=x.device, **layout)
        for start in range(0, size, slab):
            stop = min(start + slab, size)
            first = start - self.n_conv * halo  # the window's first row
            h = row_window(x, first, stop + self.n_conv * halo)
            for number, name in enumerate(names):
                h = self._conv_elu(name, h, rows=True)
                first += halo
                if number < len(names) - 1:
                    h = self._zero_outside(h, first, size)
            if skip is not None:
                skip[:, :, start:stop] = h
            pooled[:, :, start // 2: -(-stop // 2)] = self._bn_then_pool(f"{p}_bn_down_0", h)
            del h
        return skip, pooled

    def _decoder_level0(self, skip: Optional[torch.Tensor], low: torch.Tensor, size: int, slab: int):
        """The last decoder level (merge, convs, batch norm) slab by slab, from the skip and the
        level-1 output ``low``: yields (start, stop, features of rows start:stop)."""
        p = self.prefix
        index = 2 * self.n_levels - 2
        merge = self.layers[f"{p}_conv_uparm_{index}_0"]
        halo = merge.padding[0]
        n_skip = 0 if skip is None else skip.shape[1]
        up_weight = merge.weight[:, n_skip:]
        kernels = phase_kernels(up_weight)
        reach = (self.n_conv - 1) * halo  # how far the convs after the merge spread
        for start in range(0, size, slab):
            stop = min(start + slab, size)
            # the merge's rows that the later convs read, widened to even bounds (the up-sampling's grid)
            first, last = (start - reach) // 2 * 2, -(-(stop + reach) // 2) * 2
            rows = (first // 2, last // 2)
            if skip is None:
                h = conv3d_of_upsampled(low, up_weight, merge.bias, kernels, rows=rows)
            else:
                h = F.conv3d(row_window(skip, first - halo, last + halo), merge.weight[:, :n_skip], merge.bias,
                             padding=_row_padding(merge))
                conv3d_of_upsampled(low, up_weight, kernels=kernels, out=h, accumulate=True, rows=rows)
            h = F.elu(h[:, :, start - reach - first: h.shape[2] - (last - stop - reach)], inplace=True)
            first = start - reach
            for conv in range(1, self.n_conv):
                h = self._zero_outside(h, first, size)
                h = self._conv_elu(f"{p}_conv_uparm_{index}_{conv}", h, rows=True)
                first += halo
            yield start, stop, self._bn(f"{p}_bn_up_{self.n_levels - 2}", h, inplace=True)
            del h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.logits(x)
        return torch.softmax(x, dim=1) if self.softmax else x
