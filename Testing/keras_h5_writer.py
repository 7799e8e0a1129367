"""Write weights in the Keras legacy-HDF5 layout of the real SynthSeg/ScLimbic files (numpy and h5py
only, so that fixture generators running in a TensorFlow environment without torch can use it)."""

from __future__ import annotations

import h5py
import numpy as np


def write_keras_weights(path, content: dict) -> None:
    """content: layer name -> {variable name: array}, written in that order as float32."""
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [name.encode() for name in content]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.15.0"
        for name, variables in content.items():
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{var}:0".encode() for var in variables]
            for var, value in variables.items():
                group.create_dataset(f"{name}/{var}:0", data=np.asarray(value, dtype=np.float32))
