"""Image geometry operations with the conventions of surfa, the library mri_sclimbic_seg uses.

ScLimbic's reference script conforms its input with surfa (reorient, resize, centred
pad/crop) and maps the result back with surfa's own interpolators. Parity with it needs the
same conventions, so they are written out here with numpy:

- an image's geometry is its 4x4 voxel-to-world affine plus its voxel size (taken from the
  file header, as surfa does, which may differ from the affine's column norms by rounding);
- a geometry's "centre" is the world position of voxel coordinate shape/2 (not (shape-1)/2);
- interpolation maps target voxels to source voxels with a float32 affine; "linear" takes
  floor-based trilinear weights, repeats the last voxel on the upper edge and fills outside;
  "nearest" rounds half away from zero and fills outside [0, n).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError


def orientation_of(affine: np.ndarray) -> str:
    """Orientation letters of the voxel axes, by the dominant world direction of each column."""
    letters = ""
    for column in np.asarray(affine, dtype=np.float64)[:3, :3].T:
        sag, cor, axi = np.abs(column)
        if sag > cor and sag > axi:
            letters += "R" if column[0] > 0 else "L"
        elif cor > axi:
            letters += "A" if column[1] > 0 else "P"
        else:
            letters += "S" if column[2] > 0 else "I"
    return letters


def reorient_to_ras(data: np.ndarray, affine: np.ndarray, voxel_size: Sequence[float]):
    """Permute and flip voxel axes (no resampling) so that they run along R, A and S.

    ``data`` may carry trailing frame axes. Returns (data, affine, voxel_size) - a view
    where possible.
    """
    affine = np.asarray(affine, dtype=np.float64)
    letters = orientation_of(affine)
    world_axis = ["RLAPSI".index(c) // 2 for c in letters]
    if sorted(world_axis) != [0, 1, 2]:
        raise InputError(f"the image axes are too oblique to tell apart (orientation {letters}); "
                         "reslice it to a standard orientation first (e.g. mri_convert --conform)")
    source_axis_for = [world_axis.index(target) for target in range(3)]
    extra = list(range(3, data.ndim))
    data = np.transpose(data, source_axis_for + extra)
    permute = np.zeros((4, 4))
    permute[3, 3] = 1
    for target, source in enumerate(source_axis_for):
        permute[source, target] = 1
    affine = affine @ permute
    voxel_size = np.asarray(voxel_size, dtype=np.float64)[source_axis_for]
    for axis in range(3):
        if affine[axis, axis] < 0:  # column `axis` now points along world axis `axis`
            data = np.flip(data, axis=axis)
            flip = np.eye(4)
            flip[axis, axis] = -1
            flip[axis, 3] = data.shape[axis] - 1
            affine = affine @ flip
    return data, affine, voxel_size


def decompose(affine: np.ndarray, shape: Sequence[int]):
    """(voxel size, rotation, centre, shear) of a voxel-to-world affine, as surfa defines them."""
    affine = np.asarray(affine, dtype=np.float64)
    centre = (affine @ np.append(np.asarray(shape, dtype=np.float64) / 2, 1))[:3]
    q, r = np.linalg.qr(affine[:3, :3])
    scale = np.abs(np.diag(r))
    signs = np.diag(np.diag(r) / scale)
    rotation = q @ signs
    normalised = (signs @ r) / scale[:, None]
    shear = np.array([normalised[0, 1], normalised[0, 2], normalised[1, 2]])
    return scale, rotation, centre, shear


def compose(shape: Sequence[int], voxel_size, rotation, centre, shear=(0.0, 0.0, 0.0)) -> np.ndarray:
    shear_matrix = np.eye(3)
    shear_matrix[0, 1], shear_matrix[0, 2], shear_matrix[1, 2] = shear
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(rotation) @ (np.diag(np.asarray(voxel_size, dtype=np.float64)) @ shear_matrix)
    offset = affine @ np.append(np.asarray(shape, dtype=np.float64) / 2, 1)
    affine[:3, 3] = np.asarray(centre) - offset[:3]
    return affine


def resized_geometry(shape: Sequence[int], affine: np.ndarray, voxel_size, new_voxel_size):
    """Target (shape, affine) when reslicing to ``new_voxel_size`` about the same centre."""
    _, rotation, centre, shear = decompose(affine, shape)
    voxel_size = np.asarray(voxel_size, dtype=np.float64)
    new_voxel_size = np.broadcast_to(np.asarray(new_voxel_size, dtype=np.float64), (3,)).copy()
    new_shape = tuple(int(n) for n in np.ceil(voxel_size * np.asarray(shape[:3]) / new_voxel_size))
    return new_shape, compose(new_shape, new_voxel_size, rotation, centre, shear)


def same_voxel_size(a, b, tolerance: float = 1e-5) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=tolerance, rtol=0))


def centred_pad_crop(data: np.ndarray, affine: np.ndarray, shape: Sequence[int]):
    """Zero-pad and/or crop the first three axes to ``shape`` about the centre (surfa's reshape).

    When a size difference is odd the extra voxel is padded at the end, or cropped from the end.
    """
    old = np.asarray(data.shape[:3])
    delta = (np.asarray(shape[:3]) - old) / 2
    low = np.floor(delta).astype(int)
    high = np.ceil(delta).astype(int)
    pad_before, pad_after = np.clip(low, 0, None), np.clip(high, 0, None)
    crop_before, crop_after = np.clip(-high, 0, None), np.clip(-low, 0, None)
    out = np.zeros(tuple(int(s) for s in shape[:3]) + data.shape[3:], dtype=data.dtype)
    source = tuple(slice(int(b), int(n - a)) for b, a, n in zip(crop_before, crop_after, old))
    target = tuple(slice(int(p), int(p + (n - b - a))) for p, b, a, n in zip(pad_before, crop_before, crop_after, old))
    out[target] = data[source]
    start = (crop_before - pad_before).astype(np.float64)
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, 3] = (affine @ np.append(start, 1))[:3]
    return out, new_affine


def crop_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, 3] = (new_affine @ np.append(np.asarray(start, dtype=np.float64), 1))[:3]
    return new_affine


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices around the nonzero voxels plus ``margin`` (within the array); all of it if empty."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(0, int(present[0]) - margin), min(mask.shape[axis], int(present[-1]) + 1 + margin)))
    return tuple(box)


# ----------------------------------------------------------------------------------------------
# interpolation


def _axis_aligned(vox2vox: np.ndarray, tolerance: float = 1e-6):
    """For a target->source map that moves each target axis onto one source axis, the list
    (source axis for target axis j); None when the map mixes axes."""
    linear = vox2vox[:3, :3]
    mapping = []
    for source_axis in range(3):
        row = np.abs(linear[source_axis])
        big = np.flatnonzero(row > tolerance)
        if len(big) != 1:
            return None
        mapping.append(int(big[0]))
    if sorted(mapping) != [0, 1, 2]:
        return None
    return [mapping.index(j) for j in range(3)]


def _source_coordinates(scale: float, offset: float, count: int) -> np.ndarray:
    # surfa evaluates m*x + t in float32
    return np.float32(scale) * np.arange(count, dtype=np.float32) + np.float32(offset)


def interpolate(source: np.ndarray, vox2vox: np.ndarray, target_shape: Sequence[int],
                method: str = "linear", fill=0) -> np.ndarray:
    """Resample ``source`` (3D plus optional trailing frames) onto ``target_shape``.

    ``vox2vox`` maps target voxel coordinates to source voxel coordinates.
    """
    if method not in ("linear", "nearest"):
        raise ValueError(f"unknown interpolation {method!r}")
    vox2vox = np.asarray(vox2vox, dtype=np.float64)
    target_shape = tuple(int(n) for n in target_shape[:3])
    mapping = _axis_aligned(vox2vox)
    if mapping is None:
        return _interpolate_general(source, vox2vox, target_shape, method, fill)
    matrix = vox2vox.astype(np.float32)
    # bring the source axes into target order, then resample one axis at a time
    data = np.transpose(source, mapping + list(range(3, source.ndim)))
    out_dtype = data.dtype if method == "nearest" else np.float32
    for target_axis, source_axis in enumerate(mapping):
        coords = _source_coordinates(matrix[source_axis, target_axis], matrix[source_axis, 3], target_shape[target_axis])
        data = _resample_axis(data, target_axis, coords, method, fill, out_dtype)
    return np.ascontiguousarray(data)


def _resample_axis(data: np.ndarray, axis: int, coords: np.ndarray, method: str, fill, dtype) -> np.ndarray:
    size = data.shape[axis]
    if method == "nearest":
        valid = (coords >= 0) & (coords < size)
        index = np.floor(np.where(valid, coords, 0).astype(np.float64) + 0.5).astype(np.int64)
        index = np.minimum(index, size - 1)
        out = np.take(data, index, axis=axis).astype(dtype, copy=False)
        if not valid.all():
            shape = [1] * data.ndim
            shape[axis] = len(coords)
            out = np.where(valid.reshape(shape), out, np.asarray(fill, dtype=dtype))
        return out
    low = np.floor(coords).astype(np.int64)
    valid = (low >= 0) & (low <= size - 1)
    low = np.clip(low, 0, size - 1)
    high = np.where(low < size - 1, low + 1, low)
    fraction = (coords - low.astype(np.float32)).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = len(coords)
    fraction = fraction.reshape(shape)
    lower = np.take(data, low, axis=axis).astype(np.float32, copy=False)
    upper = np.take(data, high, axis=axis).astype(np.float32, copy=False)
    out = (np.float32(1) - fraction) * lower + fraction * upper
    if not valid.all():
        out = np.where(valid.reshape(shape), out, np.float32(fill))
    return out.astype(dtype, copy=False)


def _interpolate_general(source, vox2vox, target_shape, method, fill):
    """Any affine target->source map, one target slab at a time to bound memory."""
    matrix = vox2vox.astype(np.float32)
    frames = source.shape[3:]
    out_dtype = source.dtype if method == "nearest" else np.float32
    out = np.empty(target_shape + frames, dtype=out_dtype)
    size = np.array(source.shape[:3])
    grid_y, grid_z = np.meshgrid(np.arange(target_shape[1], dtype=np.float32),
                                 np.arange(target_shape[2], dtype=np.float32), indexing="ij")
    for x in range(target_shape[0]):
        coords = [matrix[i, 0] * np.float32(x) + matrix[i, 1] * grid_y + matrix[i, 2] * grid_z + matrix[i, 3]
                  for i in range(3)]
        if method == "nearest":
            valid = np.ones(grid_y.shape, dtype=bool)
            index = []
            for i in range(3):
                valid &= (coords[i] >= 0) & (coords[i] < size[i])
                index.append(np.minimum(np.floor(np.where(valid, coords[i], 0) + 0.5).astype(np.int64), size[i] - 1))
            values = source[index[0], index[1], index[2]].astype(out_dtype, copy=False)
        else:
            valid = np.ones(grid_y.shape, dtype=bool)
            lows, highs, fracs = [], [], []
            for i in range(3):
                low = np.floor(coords[i]).astype(np.int64)
                valid &= (low >= 0) & (low <= size[i] - 1)
                low = np.clip(low, 0, size[i] - 1)
                lows.append(low)
                highs.append(np.where(low < size[i] - 1, low + 1, low))
                fracs.append((coords[i] - low).astype(np.float32))
            values = np.zeros(grid_y.shape + frames, dtype=np.float32)
            for corner in range(8):
                pick = [highs[i] if corner >> i & 1 else lows[i] for i in range(3)]
                weight = np.ones(grid_y.shape, dtype=np.float32)
                for i in range(3):
                    weight = weight * (fracs[i] if corner >> i & 1 else np.float32(1) - fracs[i])
                values += weight.reshape(weight.shape + (1,) * len(frames)) * source[pick[0], pick[1], pick[2]]
        mask = valid.reshape(valid.shape + (1,) * len(frames))
        out[x] = np.where(mask, values, np.asarray(fill, dtype=out_dtype))
    return out


def resample(source: np.ndarray, source_affine: np.ndarray, target_shape: Sequence[int],
             target_affine: np.ndarray, method: str = "linear", fill=0) -> np.ndarray:
    """Resample ``source`` (on ``source_affine``) onto the grid (target_shape, target_affine)."""
    vox2vox = np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    return interpolate(source, vox2vox, target_shape, method=method, fill=fill)
