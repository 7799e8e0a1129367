"""Test helpers: write PyTorch layers to a Keras legacy-HDF5 weights file (the layout of the real files)."""

from __future__ import annotations

import numpy as np
import torch

from keras_h5_writer import write_keras_weights


def keras_variables(module) -> dict[str, np.ndarray]:
    if isinstance(module, torch.nn.Conv3d):
        variables = {"kernel": module.weight.detach().numpy().transpose(2, 3, 4, 1, 0)}
        if module.bias is not None:
            variables["bias"] = module.bias.detach().numpy()
        return variables
    return {"gamma": module.weight.detach().numpy(), "beta": module.bias.detach().numpy(),
            "moving_mean": module.running_mean.numpy(), "moving_variance": module.running_var.numpy()}


def write_keras_h5(path, layers: dict, overrides: dict | None = None) -> None:
    """layers: Keras name -> module; overrides: name -> {variable: array} replacing or adding layers."""
    content = {name: keras_variables(module) for name, module in layers.items()}
    for name, variables in (overrides or {}).items():
        content[name] = variables
    write_keras_weights(path, content)


def randomise_batch_norm(module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        if isinstance(sub, torch.nn.BatchNorm3d):
            n = sub.num_features
            sub.weight.data = 0.8 + 0.4 * torch.rand(n, generator=generator)
            sub.bias.data = 0.2 * torch.rand(n, generator=generator) - 0.1
            sub.running_mean.data = 0.2 * torch.rand(n, generator=generator) - 0.1
            sub.running_var.data = 0.5 + torch.rand(n, generator=generator)


def write_random_synthseg_model(folder, winning_channel: int | None = None):
    """A synthseg_2.0.h5 with random weights (seed 0) in the Keras layout, in ``folder``.

    ``winning_channel``: its output bias is raised so that it wins nearly everywhere (random weights
    alone label everything background, which leaves nothing to measure downstream)."""
    from segsuite.nets.unet import KerasUNet

    torch.manual_seed(0)
    layers = KerasUNet("unet", 1, 33).keras_layers()
    if winning_channel is not None:
        with torch.no_grad():
            layers["unet_likelihood"].bias[winning_channel] += 50.0
    write_keras_h5(folder / "synthseg_2.0.h5", layers)
    return folder


def unpack_fixture_synthseg(folder):
    """The shared fixture's SynthSeg 2.0 weights (full-size network, deterministic random weights)
    unpacked into ``folder``, which is returned (skips without ../shared)."""
    import gzip
    import shutil

    from conftest import shared_path

    packed = shared_path("fixtures", "synthseg", "models", "synthseg_2.0.h5.gz")
    with gzip.open(packed, "rb") as reader, open(folder / "synthseg_2.0.h5", "wb") as writer:
        shutil.copyfileobj(reader, writer)
    return folder
