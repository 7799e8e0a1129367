"""A label volume saved as .mgz with FreeSurfer's colour table embedded (mri_synthseg --addctab).

The MGH format ends with the scan parameters (TR, flip angle, TE, TI, FoV); optional tags follow.
Tag 1 (TAG_OLD_COLORTABLE) has no length field and holds a colour table in FreeSurfer's binary
version 2: the int32 -2, the number of entries (largest index + 1), the length and bytes of a file
name, the number of entries written, then per entry its index, name length (NUL included), name,
R, G, B and transparency (255 - alpha; 0 for FreeSurferColorLUT.txt's opaque colours). Every
integer is big-endian int32. Freeview, FreeSurfer's tools and surfa read it as the volume's labels.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Optional

import numpy as np

from .labels import LabelTable, freesurfer_lut

TAG_OLD_COLORTABLE = 1
CTAB_BINARY_VERSION = -2
LUT_NAME = "FreeSurferColorLUT.txt"


def colortable_bytes(table: LabelTable, name: str = LUT_NAME) -> bytes:
    """The binary (version 2) colour table FreeSurfer embeds after an MGH volume's tag."""
    encoded = name.encode("utf-8") + b"\0"
    labels = sorted(table, key=lambda label: label.value)
    parts = [struct.pack(">iii", CTAB_BINARY_VERSION, labels[-1].value + 1, len(encoded)), encoded,
             struct.pack(">i", len(labels))]
    for label in labels:
        text = label.name.encode("utf-8") + b"\0"
        parts += [struct.pack(">ii", label.value, len(text)), text, struct.pack(">iiii", *label.color, 0)]
    return b"".join(parts)


def mgz_bytes(labels: np.ndarray, affine: np.ndarray, table: Optional[LabelTable] = None, compress: bool = True) -> bytes:
    """The MGH bytes (gzipped: .mgz) of an int32 label volume with ``table`` (default FreeSurferColorLUT) embedded."""
    import nibabel as nib

    volume = nib.MGHImage(np.asarray(labels, dtype=np.int32), np.asarray(affine, dtype=np.float64)).to_bytes()
    tag = struct.pack(">i", TAG_OLD_COLORTABLE) + colortable_bytes(table if table is not None else freesurfer_lut())
    return gzip.compress(volume + tag, compresslevel=6, mtime=0) if compress else volume + tag


def save_labels_with_colortable(transaction, path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray,
                                table: Optional[LabelTable] = None) -> None:
    """Stage ``path`` (.mgz or .mgh) in ``transaction``: the labels with the colour table embedded."""
    from .image import image_suffix, write_error

    data = mgz_bytes(labels, affine, table, compress=image_suffix(path) == ".mgz")
    temp = transaction.temp_path(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
    except OSError as error:
        raise write_error(error, path) from None
