"""Estimated total intracranial volume (eTIV) the way FreeSurfer reports it.

eTIV = 1948.106 cm3 / det(talairach transform) (Buckner et al. 2004 atlas scale factor):
the talairach transform maps the subject's scanner RAS to MNI305 space; a head larger than
the atlas has a determinant below 1.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..errors import InputError

ETIV_SCALE_FACTOR = 1948.106  # cm3; eTIV in mm3 = 1e3 * factor / det


def etiv_from_matrix(matrix: np.ndarray) -> float:
    """eTIV (mm3) from a subject-RAS -> MNI305-RAS affine (3x3, 3x4 or 4x4)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    determinant = float(np.linalg.det(matrix[:3, :3]))
    if not np.isfinite(determinant) or determinant <= 0:
        raise InputError(f"the talairach transform has determinant {determinant:g}; it cannot give an eTIV "
                         "(is it a valid subject-to-MNI305 affine?)")
    return 1e3 * ETIV_SCALE_FACTOR / determinant


def read_xfm(path: str | os.PathLike) -> np.ndarray:
    """The 4x4 linear transform of an MNI .xfm file (Linear_Transform = 3 rows of 4 numbers)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as error:
        raise InputError(f"cannot read the transform {path}: {error.strerror}") from error
    marker = text.find("Linear_Transform")
    if marker < 0:
        raise InputError(f"{path} is not an MNI .xfm file with a Linear_Transform")
    numbers = text[marker:].split("=", 1)[1].replace(";", " ").split()[:12]
    try:
        values = [float(v) for v in numbers]
    except ValueError:
        raise InputError(f"{path}: the Linear_Transform is not 12 numbers") from None
    if len(values) != 12:
        raise InputError(f"{path}: the Linear_Transform is not 12 numbers")
    matrix = np.eye(4)
    matrix[:3, :] = np.reshape(values, (3, 4))
    return matrix


def _lta_volume_vox2ras(lines: list[str], start: int) -> Optional[np.ndarray]:
    info = {}
    for line in lines[start:start + 12]:
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            info[key] = value
        if line.strip().startswith("dst volume info") and info:
            break
    try:
        if info.get("valid", "1").split()[0] == "0":
            return None
        dims = np.array([float(v) for v in info["dimensions"].split()[:3]])
        sizes = np.array([float(v) for v in info["voxelsize"].split()[:3]])
        axes = np.array([[float(v) for v in info[k].split()[:3]] for k in ("xras", "yras", "zras")]).T
        centre = np.array([float(v) for v in info["c_ras"].split()[:3]])
    except (KeyError, ValueError):
        return None
    vox2ras = np.eye(4)
    vox2ras[:3, :3] = axes * sizes
    vox2ras[:3, 3] = centre - vox2ras[:3, :3] @ (dims / 2)
    return vox2ras


def read_lta(path: str | os.PathLike) -> np.ndarray:
    """The RAS-to-RAS matrix of a FreeSurfer .lta file (vox2vox LTAs are converted)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise InputError(f"cannot read the transform {path}: {error.strerror}") from error
    kind = 1
    matrix = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("type") and "=" in stripped:
            kind = int(float(stripped.split("=", 1)[1].split()[0]))
        if stripped.startswith("1 4 4") and matrix is None:
            try:
                matrix = np.array([[float(v) for v in lines[index + 1 + row].split()[:4]] for row in range(4)])
            except (ValueError, IndexError):
                raise InputError(f"{path}: cannot read the 4x4 matrix") from None
    if matrix is None:
        raise InputError(f"{path} is not a FreeSurfer .lta file (no 4x4 matrix)")
    if kind == 0:  # LINEAR_VOX_TO_VOX: bring it to RAS with the source/destination geometries
        starts = [i for i, line in enumerate(lines) if line.strip().startswith(("src volume info", "dst volume info"))]
        if len(starts) == 2:
            source = _lta_volume_vox2ras(lines, starts[0] + 1)
            target = _lta_volume_vox2ras(lines, starts[1] + 1)
            if source is not None and target is not None:
                return target @ matrix @ np.linalg.inv(source)
        # without geometry the determinant of a vox2vox between equal voxel sizes is the same
    return matrix


def read_transform(path: str | os.PathLike) -> np.ndarray:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"talairach transform not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096)
    if "Linear_Transform" in head or path.endswith(".xfm") and "MNI Transform File" in head:
        return read_xfm(path)
    return read_lta(path)


def etiv_from_transform_file(path: str | os.PathLike) -> float:
    """eTIV (mm3) from a talairach.xfm or talairach.xfm.lta."""
    return etiv_from_matrix(read_transform(path))


def etiv_from_registration(data: np.ndarray, affine: np.ndarray, template=None) -> float:
    from .registration import etiv_by_registration

    return etiv_by_registration(data, affine, template=template)
