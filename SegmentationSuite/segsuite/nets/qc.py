"""SynthSeg's QC regressor (neurite ``conv_enc`` with residuals + two final convs) with Keras layer names.

Per level L: conv ``qc_conv_downarm_L_0`` + ReLU, conv ``qc_conv_downarm_L_1`` WITHOUT activation,
``qc_expand_down_merge_L`` (conv + ReLU of the level's input, to match the feature count), add,
ReLU, batch norm ``qc_bn_down_L``, max-pool 2 (Keras 'same' padding == ceil mode).
After the encoder: max-pool ``qc_maxpool_3``, ``qc_final_conv_0/1`` (conv + ReLU), spatial mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
