"""Read the weights of Keras .h5 files (legacy HDF5 layout) and load them into PyTorch layers by name.

Layout: ``/<layer>/<layer>/<var>:0`` datasets with root attribute ``layer_names`` and a
``weight_names`` attribute per layer group, optionally under a ``model_weights/`` group
(files saved with the whole model). Only h5py is needed; TensorFlow is not.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..errors import ModelError

KerasWeights = dict[str, dict[str, np.ndarray]]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str | os.PathLike) -> KerasWeights:
    """All layer weights of a Keras .h5 file: {layer name: {variable name: array}}."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ModelError(f"{path} is not a readable Keras .h5 weights file ({error}); "
                         "download it again or verify it with `segsuite models verify`") from error
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" in root.attrs:
            layer_names = [_text(name) for name in root.attrs["layer_names"]]
        else:
            layer_names = list(root.keys())
        weights: KerasWeights = {}
        for layer in layer_names:
            group = root[layer]
            names = [_text(n) for n in group.attrs.get("weight_names", [])]
            if not names:
                continue
            variables = {}
            for full_name in names:
                variable = full_name.split("/")[-1].split(":")[0]
                variables[variable] = np.asarray(group[full_name])
            weights[layer] = variables
    return weights


def _assign(target: torch.Tensor, value: np.ndarray, layer: str, variable: str) -> None:
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if tuple(tensor.shape) != tuple(target.shape):
        raise ModelError(f"layer {layer!r} variable {variable!r}: the weights file has shape "
                         f"{tuple(tensor.shape)} but the network expects {tuple(target.shape)}; "
                         "is this the right model file for this mode?")
    with torch.no_grad():
        target.copy_(tensor)


def load_layer(module: nn.Module, variables: Mapping[str, np.ndarray], layer: str) -> None:
    """Copy one Keras layer's variables into a Conv3d or BatchNorm3d."""
    if isinstance(module, nn.Conv3d):
        if "kernel" not in variables:
            raise ModelError(f"layer {layer!r} has no kernel in the weights file")
        kernel = np.asarray(variables["kernel"])
        if kernel.ndim != 5:
            raise ModelError(f"layer {layer!r}: expected a 3D convolution kernel, got shape {kernel.shape}")
        # Keras (kd, kh, kw, in, out) -> PyTorch (out, in, kd, kh, kw)
        _assign(module.weight, kernel.transpose(4, 3, 0, 1, 2), layer, "kernel")
        if module.bias is not None:
            if "bias" not in variables:
                raise ModelError(f"layer {layer!r} has no bias in the weights file")
            _assign(module.bias, variables["bias"], layer, "bias")
    elif isinstance(module, nn.BatchNorm3d):
        wanted = {"gamma": module.weight, "beta": module.bias,
                  "moving_mean": module.running_mean, "moving_variance": module.running_var}
        for name, target in wanted.items():
            if name not in variables:
                raise ModelError(f"batch-norm layer {layer!r} has no {name} in the weights file")
            _assign(target, variables[name], layer, name)
    else:
        raise TypeError(f"cannot load Keras weights into {type(module).__name__}")


def load_keras_weights(layers: Mapping[str, nn.Module], weights: KerasWeights,
                       prefixes: Optional[Iterable[str]] = None, source: str = "the weights file") -> None:
    """Load every layer in ``layers`` (Keras name -> module) from ``weights``.

    Missing layers, mis-shaped variables and - among the layers whose name starts with one of
    ``prefixes`` (all layers if None) - unused layers are errors that name the layer.
    """
    missing = [name for name in layers if name not in weights]
    if missing:
        raise ModelError(f"{source} lacks layer(s) {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}; it is not the model this mode needs")
    prefixes = tuple(prefixes) if prefixes is not None else None
    relevant = [name for name in weights
                if prefixes is None or any(name.startswith(prefix + "_") for prefix in prefixes)]
    extra = [name for name in relevant if name not in layers]
    if extra:
        raise ModelError(f"{source} has layer(s) this network does not use: {', '.join(extra[:5])}"
                         f"{' ...' if len(extra) > 5 else ''}; it is not the model this mode needs")
    for name, module in layers.items():
        load_layer(module, weights[name], name)
