"""Pre-flight checks run before any model is loaded or downloaded: inputs readable and complete.

A truncated or non-image input is found here in well under a second, instead of after the
model download and the network (the output locations are checked by segsuite.image.check_outputs).
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Sequence

from .errors import InputError

_CHUNK = 1 << 20


def _stored_bytes(path: str) -> int:
    """Bytes of the (decompressed) file; a damaged or truncated gzip stream raises InputError."""
    if not path.lower().endswith((".gz", ".mgz")):
        return os.path.getsize(path)
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    return total
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{path} is truncated or damaged ({type(error).__name__}: {error}); "
                         "copy or export it again") from None


def check_input_image(path: str | os.PathLike) -> None:
    """The file exists, is an image nibabel reads, and holds all of the voxels its header declares."""
    import nibabel as nib
    import numpy as np

    from .image import check_image_path, unreadable_image

    path = os.fspath(path)
    check_image_path(path)
    try:
        image = nib.load(path)
        header = image.header
        offset = int(header.get_data_offset())
        needed = offset + int(np.prod(image.shape)) * np.dtype(header.get_data_dtype()).itemsize
    except Exception as error:  # nibabel raises many types for unreadable files
        raise unreadable_image(path, error) from None
    stored = _stored_bytes(path)
    if stored < needed:
        raise InputError(f"{path} is truncated: it holds {stored} bytes but its header needs {needed}; "
                         "copy or export it again")


def check_input_images(paths: Sequence[str | os.PathLike]) -> None:
    for path in paths:
        check_input_image(path)
