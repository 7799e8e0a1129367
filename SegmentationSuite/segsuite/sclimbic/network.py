"""The ScLimbic U-Net with a cheaper decoder: up-sampling fused into the following convolution.

A 3x3x3 convolution of a 2x nearest-up-sampled tensor equals, for each of the 8 output
phases (even/odd index per axis), a 2x2x2 convolution of the low-resolution tensor with
kernel taps summed accordingly - and zero padding maps onto zero padding. That is 64 instead
of 216 multiply-adds per low-resolution voxel and channel pair, and the up-sampled tensor
(48 channels at 160^3, 786 MB) is never built. Results equal the plain network to float
rounding (the summed taps change the order of additions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nets.unet import KerasUNet

# per axis and output phase: which of the 3 kernel taps fall on low-res offsets (first, second)
_PHASE_TAPS = torch.tensor([
    [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],  # even outputs: low-res offsets -1 and 0
    [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # odd outputs: low-res offsets 0 and +1
])


def phase_kernels(weight: torch.Tensor) -> list[torch.Tensor]:
    """The 8 2x2x2 kernels (phase order a, b, c) for a 3x3x3 ``weight`` (out, in, 3, 3, 3)."""
    taps = _PHASE_TAPS.to(weight)
    kernels = []
    for a in range(2):
        for b in range(2):
            for c in range(2):
                kernels.append(torch.einsum("ip,jq,kr,oxpqr->oxijk", taps[a], taps[b], taps[c], weight).contiguous())
    return kernels


def conv_of_upsampled(x: torch.Tensor, kernels: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``out += conv3d(upsample_nearest_2x(x), weight, padding=1)`` with the phase kernels of weight."""
    size = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1, 1, 1))
    index = 0
    for a in range(2):
        for b in range(2):
            for c in range(2):
                window = padded[:, :, a:a + size[0] + 1, b:b + size[1] + 1, c:c + size[2] + 1]
                out[:, :, a::2, b::2, c::2] += F.conv3d(window, kernels[index])
                index += 1
    return out


class ScLimbicUNet(KerasUNet):
    """KerasUNet (same layers and weights) whose decoder fuses up-sampling into the merge conv."""

    def __init__(self, n_labels: int, n_levels: int = 3, n_features: int = 24):
        super().__init__("unet", 1, n_labels, n_levels=n_levels, n_features=n_features)
        self._phase_cache: dict[str, list[torch.Tensor]] = {}

    def _up_kernels(self, name: str, n_skip: int) -> list[torch.Tensor]:
        conv = self.layers[name]
        key = f"{name}:{conv.weight.data_ptr()}:{conv.weight.device}:{conv.weight._version}"
        if key not in self._phase_cache:
            self._phase_cache = {k: v for k, v in self._phase_cache.items() if not k.startswith(name + ":")}
            self._phase_cache[key] = phase_kernels(conv.weight.detach()[:, n_skip:])
        return self._phase_cache[key]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        p = self.prefix
        skips = []
        for level in range(self.n_levels):
            for conv in range(self.n_conv):
                x = self._conv_elu(f"{p}_conv_downarm_{level}_{conv}", x)
            skips.append(x)
            x = self._bn(f"{p}_bn_down_{level}", x)
            if level < self.n_levels - 1:
                x = F.max_pool3d(x, 2, ceil_mode=True)
        skips.pop()
        for step in range(self.n_levels - 1):
            index = self.n_levels + step
            skip = skips.pop()
            name = f"{p}_conv_uparm_{index}_0"
            conv = self.layers[name]
            n_skip = skip.shape[1]
            if any(2 * low != high for low, high in zip(x.shape[2:], skip.shape[2:])):
                # odd sizes (never at 160^3): the plain path handles the cropping semantics
                up = F.interpolate(x, scale_factor=2, mode="nearest")
                x = self._merge_conv_elu(name, skip, up)
            else:
                out = F.conv3d(skip, conv.weight[:, :n_skip], conv.bias, padding=conv.padding)
                x = F.elu(conv_of_upsampled(x, self._up_kernels(name, n_skip), out), inplace=True)
            del skip
            for conv_index in range(1, self.n_conv):
                x = self._conv_elu(f"{p}_conv_uparm_{index}_{conv_index}", x)
            x = self._bn(f"{p}_bn_up_{step}", x)
        return self.layers[f"{p}_likelihood"](x)
