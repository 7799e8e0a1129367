"""File checksums, shared by the model manager, the engines' provenance and SAMSEG's subject mode."""

from __future__ import annotations

import hashlib
import os


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, as a hex string (read in chunks: model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
