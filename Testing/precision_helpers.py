"""Read PyTorch's TF32 switches the same way on torch versions with and without the precision API."""

from __future__ import annotations

import torch


def uses_precision_api() -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv is not None and hasattr(conv, "fp32_precision")


def tf32_state() -> tuple:
    """(convolutions, matrix products): 'ieee'/'tf32'/'none' strings, or the legacy allow_tf32 flags."""
    if uses_precision_api():
        return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def ieee_state() -> tuple:
    return ("ieee", "ieee") if uses_precision_api() else (False, False)


def set_tf32_state(state: tuple) -> None:
    if uses_precision_api():
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = state
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = state


def record_tf32_state_in_networks(monkeypatch) -> list:
    """Make every KerasUNet pass append the TF32 switches it ran under to the returned list."""
    from segsuite.nets.unet import KerasUNet

    seen = []
    original = KerasUNet.features

    def recording_features(self, x):
        seen.append(tf32_state())
        return original(self, x)

    monkeypatch.setattr(KerasUNet, "features", recording_features)
    return seen
