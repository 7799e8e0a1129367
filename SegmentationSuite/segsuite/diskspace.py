"""Pre-flight free space: the expected size of every output against what its file system has free.

Sizes come from the input's header alone (no model, no network), so a disk that is too small is
found before any work. The estimates are deliberately on the high side:

- an image is voxels x bytes per voxel (x channels) on the grid it is written on, plus 1 KiB of
  header; every file is rounded up to the file system's block size;
- gzip-compressed images (.nii.gz, .mgz): floating-point maps (posteriors, resampled images,
  tissue probabilities) are budgeted at their uncompressed size (noise-like floats barely
  compress; deflate never grows data by more than 0.1 %); integer label maps and masks at a
  quarter of it (measured: a FreeSurfer aseg.mgz compresses 31x, the int32 parcellation of
  SynthSeg with random weights, which is noisier than a real one, 11x);
- tables, CSV, TSV, JSON and stats files at 16 KiB each (a shared CSV 2 KiB more per further
  subject; a SynthSeg --vol row is about 1.5 KiB).

Outputs are grouped by file system (``st_dev`` of the nearest existing folder, which is where the
temporaries are staged too), and each group's need is compared with ``shutil.disk_usage``.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Iterable, Optional, Sequence

from .errors import SegSuiteError

HEADER_BYTES = 1024
TEXT_BYTES = 16 * 1024
ROW_BYTES = 2 * 1024
PICTURE_BYTES = 1024 * 1024       # a QC mosaic or report picture
LABEL_GZIP_FRACTION = 0.25
COMPRESSED_SUFFIXES = (".gz", ".mgz")


def input_grid(path: str | os.PathLike) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(spatial shape, voxel sizes in mm) from the image header; reads no voxels."""
    import nibabel as nib

    header = nib.load(os.fspath(path)).header
    shape = tuple(int(n) for n in header.get_data_shape()[:3])
    shape += (1,) * (3 - len(shape))
    zooms = tuple(abs(float(z)) or 1.0 for z in header.get_zooms()[:3])
    zooms += (1.0,) * (3 - len(zooms))
    return shape, zooms


def voxel_count(shape: Sequence[int]) -> int:
    return int(math.prod(int(n) for n in shape))


def one_mm_voxels(shape: Sequence[int], zooms: Sequence[float]) -> int:
    """Voxels of the 1 mm grid that covers the same field of view."""
    return voxel_count(math.ceil(n * z - 1e-6) for n, z in zip(shape, zooms))


def image_bytes(path: str | os.PathLike, voxels: int, itemsize: int, integer: bool = True, channels: int = 1) -> int:
    """Expected bytes of an image file (see the module docstring for the compression budget)."""
    raw = int(voxels) * int(itemsize) * int(channels)
    if os.fspath(path).lower().endswith(COMPRESSED_SUFFIXES) and integer:
        raw = math.ceil(raw * LABEL_GZIP_FRACTION)
    return raw + HEADER_BYTES


def text_bytes(rows: int = 1) -> int:
    return TEXT_BYTES + ROW_BYTES * max(0, int(rows) - 1)


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _existing_folder(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


class SpacePlan:
    """The outputs a run will write, with their expected sizes; ``check`` compares them to free space."""

    def __init__(self):
        self.items: list[tuple[str, str, int]] = []   # (the user's path, where the bytes land, bytes)

    def add(self, path: str | os.PathLike, nbytes: int, staged_in: Optional[str | os.PathLike] = None) -> None:
        """``staged_in``: a path inside the folder the file is written to first, when not beside ``path``."""
        path = os.fspath(path)
        self.items.append((path, os.fspath(staged_in) if staged_in else path, int(nbytes)))

    def add_image(self, path, voxels: int, itemsize: int, integer: bool = True, channels: int = 1,
                  staged_in=None) -> None:
        self.add(path, image_bytes(path, voxels, itemsize, integer, channels), staged_in)

    def add_text(self, path, rows: int = 1, staged_in=None) -> None:
        self.add(path, text_bytes(rows), staged_in)

    def needs(self) -> dict[int, tuple[str, str, int]]:
        """{st_dev: (first user path there, its nearest existing folder, bytes needed)}."""
        groups: dict[int, tuple[str, str, int]] = {}
        blocks: dict[int, int] = {}
        for path, location, nbytes in self.items:
            folder = _existing_folder(location)
            try:
                device = os.stat(folder).st_dev
            except OSError:
                continue  # reported by the writability check
            if device not in blocks:
                try:
                    blocks[device] = max(1, os.statvfs(folder).f_frsize)
                except (AttributeError, OSError):  # Windows has no statvfs
                    blocks[device] = 4096
            block = blocks[device]
            rounded = -(-nbytes // block) * block
            first, where, total = groups.get(device, (path, folder, 0))
            groups[device] = (first, where, total + rounded)
        return groups

    def check(self) -> None:
        for path, folder, need in self.needs().values():
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                continue
            if need > free:
                raise SegSuiteError(
                    f"not enough free space for {path}: the outputs need about {format_bytes(need)} there, "
                    f"{format_bytes(free)} free; free some space or choose another folder")


def check_free_space(entries: Iterable[tuple[str | os.PathLike, int]]) -> None:
    """Shorthand: ``(path, bytes)`` pairs staged beside their paths."""
    plan = SpacePlan()
    for path, nbytes in entries:
        plan.add(path, nbytes)
    plan.check()
