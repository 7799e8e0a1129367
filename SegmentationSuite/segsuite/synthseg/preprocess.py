"""SynthSeg input preparation: checks, resampling to 1 mm, RAS alignment, crop, rescale, padding.

Follows SynthSeg's predict_synthseg.preprocess and ext/lab2im (resample_volume, align_volume_to_ref,
crop_volume, rescale_volume, pad_volume) step by step, so that the network sees the same input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from ..image import as_volume, check_finite, load_volume, voxel_sizes

TARGET_RESOLUTION = 1.0
RESOLUTION_TOLERANCE = 0.05
N_LEVELS = 5  # the U-Nets pool 4 times; SynthSeg pads to multiples of 2**5 anyway
DEFAULT_MIN_PAD = 128


def ceil_to_multiple(value: int, multiple: int = 2 ** N_LEVELS) -> int:
    return int(math.ceil(int(value) / multiple) * multiple)


@dataclass
class Alignment:
    """Axis permutation and flips that bring an array to RAS index order (axis 0 = R-L)."""

    axes: tuple[int, int, int]       # new axis i is old axis axes[i]
    flips: tuple[bool, bool, bool]   # flip new axis i after the permutation

    def apply(self, array: np.ndarray) -> np.ndarray:
        extra = tuple(range(3, array.ndim))
        out = np.transpose(array, self.axes + extra)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=axis)
        return out

    def undo(self, array: np.ndarray) -> np.ndarray:
        out = array
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=axis)
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        return np.transpose(out, inverse + tuple(range(3, array.ndim)))


def ras_axes(affine: np.ndarray) -> np.ndarray:
    """For each world axis (R, A, S), the array axis that runs along it (lab2im get_ras_axes)."""
    inverse = np.linalg.inv(affine)
    axes = np.argmax(np.abs(inverse[:3, :3]), axis=0)
    for axis in range(3):
        if axis not in axes:  # oblique ties: give the missing axis to the last duplicate
            values, counts = np.unique(axes, return_counts=True)
            duplicate = values[np.argmax(counts)]
            axes[np.where(axes == duplicate)[0][-1]] = axis
    return axes


def ras_alignment(affine: np.ndarray) -> Alignment:
    axes = ras_axes(affine)
    permuted = np.asarray(affine)[:3, :3][:, axes]
    flips = tuple(bool(permuted[i, i] < 0) for i in range(3))
    return Alignment(tuple(int(a) for a in axes), flips)


def resample_to_1mm(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliasing blur then trilinear resampling to 1 mm voxels (lab2im resample_volume)."""
    from scipy.ndimage import gaussian_filter

    pixdim = voxel_sizes(affine)
    factor = pixdim / TARGET_RESOLUTION
    sigmas = 0.25 / factor
    sigmas[factor > 1] = 0  # no blur when up-sampling
    volume = gaussian_filter(data, sigmas) if np.any(sigmas > 0) else data
    start = -(factor - 1) / (2 * factor)
    step = 1.0 / factor
    stop = start + step * np.ceil(np.array(volume.shape) * factor)
    for axis in range(3):
        # same sample positions as lab2im (np.arange with a float step), clamped to the grid
        positions = np.arange(start[axis], stop[axis], step[axis])
        volume = _linear_along_axis(volume, np.clip(positions, 0, volume.shape[axis] - 1), axis)
    new_affine = np.array(affine, dtype=np.float64, copy=True)
    new_affine[:3, :3] = new_affine[:3, :3] / factor
    new_affine[:3, 3] = new_affine[:3, 3] - new_affine[:3, :3] @ (0.5 * (factor - 1))
    return volume, new_affine


def _linear_along_axis(volume: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    # Trilinear interpolation on a regular grid is separable: interpolate one axis at a time.
    size = volume.shape[axis]
    if size == 1:
        return np.repeat(volume, len(positions), axis=axis)
    lower = np.minimum(np.floor(positions).astype(np.int64), size - 2)
    weight = positions - lower
    shape = [1] * volume.ndim
    shape[axis] = len(positions)
    weight = weight.reshape(shape)
    below = np.take(volume, lower, axis=axis)
    above = np.take(volume, lower + 1, axis=axis)
    return below * (1 - weight) + above * weight


def rescale_intensities(data: np.ndarray, ct: bool = False) -> np.ndarray:
    """Optional CT clipping to [0, 80], then percentiles 0.5/99.5 (all voxels) mapped to [0, 1]."""
    if ct:
        data = np.clip(data, 0, 80)
    low, high = np.percentile(data, [0.5, 99.5])
    if low == high:
        return np.zeros_like(data)
    data = np.clip(data, low, high)
    return (data - low) / (high - low)


def centre_crop_indices(shape: Sequence[int], crop: Sequence[int]) -> np.ndarray:
    """[min0, min1, min2, max0, max1, max2] of a centred crop (sizes rounded up to multiples of 32)."""
    crop_shape = [ceil_to_multiple(c) for c in crop]
    lower = np.maximum([int((s - c) / 2) for s, c in zip(shape, crop_shape)], 0)
    upper = np.minimum(lower + np.array(crop_shape), np.array(shape))
    return np.concatenate([lower, upper]).astype(np.int64)


def pad_shape_for(shape: Sequence[int], min_pad: Sequence[int]) -> np.ndarray:
    return np.maximum([ceil_to_multiple(s) for s in shape], [ceil_to_multiple(m) for m in min_pad])


def pad_volume(data: np.ndarray, target: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad to ``target`` (floor of the margin before, ceil after); returns (padded, pad_idx)."""
    shape = np.array(data.shape[:3])
    target = np.array(target)
    before = np.maximum(np.floor((target - shape) / 2).astype(np.int64), 0)
    after = np.maximum(np.ceil((target - shape) / 2).astype(np.int64), 0)
    pad_idx = np.concatenate([before, before + shape])
    if np.any(target > shape):
        padded = np.zeros(tuple(shape + before + after), dtype=data.dtype)
        padded[before[0]:before[0] + shape[0], before[1]:before[1] + shape[1], before[2]:before[2] + shape[2]] = data
        return padded, pad_idx
    return data, np.concatenate([np.zeros(3, dtype=np.int64), shape])


@dataclass
class Prepared:
    """The network input and everything needed to map the outputs back."""

    image: np.ndarray                 # padded, RAS-aligned, rescaled, float32
    affine: np.ndarray                # affine of the (resampled) grid in the input's orientation
    resolution: np.ndarray            # voxel size used for volumes
    aligned_shape: tuple[int, int, int]
    alignment: Alignment
    pad_idx: np.ndarray
    crop_idx: Optional[np.ndarray]
    resampled: Optional[np.ndarray]   # the 1 mm image when resampling happened, else None
    input_shape: tuple[int, int, int]
    input_affine: np.ndarray


def check_layout(dtype, shape, what: str) -> None:
    """SynthSeg's checks of the voxel type and the shape (one 3D volume), from the header alone."""
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{what} has voxel type {dtype}; a real-valued image is needed")
    squeezed = tuple(n for n in shape if n != 1)
    if len(squeezed) == 4:
        raise InputError(f"{what} has {squeezed[-1]} volumes/channels (shape {tuple(shape)}); SynthSeg "
                         "segments one 3D volume: extract or average them first (e.g. mri_concat --mean)")
    if len(squeezed) != 3:
        raise InputError(f"{what} is {len(squeezed)}D (shape {tuple(shape)}); SynthSeg needs a 3D volume")
    if min(squeezed) < 4:
        raise InputError(f"{what} has only {min(squeezed)} slices along one axis (shape {squeezed}); "
                         "SynthSeg needs a 3D volume")


def check_affine(affine: np.ndarray, what: str) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{what} has an invalid (singular or non-finite) voxel-to-world matrix; fix its header")


def check_header(path) -> None:
    """SynthSeg's input checks that need only the header: readable, one 3D volume, a valid affine."""
    from ..image import read_header

    header = read_header(path)
    check_layout(header.dtype, header.shape, header.path)
    check_affine(header.affine, header.path)


def load_source(source) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(data float64, affine, voxel size, description) with SynthSeg's input checks."""
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        volume = load_volume(source, dtype=np.float64)
        what = str(volume.path)
    else:
        volume = as_volume(source)
        what = "the input image"
    data = np.asarray(volume.data)
    check_layout(data.dtype, data.shape, what)
    data = np.squeeze(data).astype(np.float64, copy=False)
    check_finite(data, what)
    if not np.any(data):
        raise InputError(f"{what} is empty (all voxels are 0); check that the right file was given")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{what} is constant ({float(data.max())}); there is nothing to segment")
    affine = np.asarray(volume.affine, dtype=np.float64)
    check_affine(affine, what)
    resolution = voxel_sizes(affine)
    header = getattr(volume, "header", None)
    if header is not None and hasattr(header, "get_zooms"):
        zooms = np.array(header.get_zooms()[:3])
        if zooms.shape == (3,) and np.all(zooms > 0):
            resolution = zooms  # SynthSeg reads the voxel size from the header (float32 for NIfTI)
    return data, affine, resolution, what


def autocrop_indices(data: np.ndarray) -> Optional[np.ndarray]:
    """mri_synthseg --autocrop (FreeSurfer 8): the bounding box of the rescaled image's nonzero voxels plus
    one voxel, grown to multiples of 32 around it and kept inside the image; None for an all-zero image."""
    spans = []
    for axis in range(3):
        present = np.flatnonzero(np.any(data > 0, axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        spans.append((int(present[0]), int(present[-1])))
    lower = np.array([low for low, _ in spans])
    extent = np.array([high - low + 2 for low, high in spans])
    shape = np.array([ceil_to_multiple(e) for e in extent])
    start = np.maximum(lower - (shape - extent) // 2, 0)
    stop = np.minimum(start + shape, np.array(data.shape[:3]))
    return np.concatenate([start, stop])


def prepare(source, crop: Optional[Sequence[int]] = None, ct: bool = False, autocrop: bool = False) -> Prepared:
    data, affine, resolution, _ = load_source(source)
    input_shape = tuple(int(s) for s in data.shape)
    input_affine = affine.copy()
    resampled = None
    if np.any((resolution > TARGET_RESOLUTION + RESOLUTION_TOLERANCE) |
              (resolution < TARGET_RESOLUTION - RESOLUTION_TOLERANCE)):
        data, affine = resample_to_1mm(data, affine)
        resolution = np.full(3, TARGET_RESOLUTION)
        resampled = data
    alignment = ras_alignment(affine)
    data = alignment.apply(data)
    aligned_shape = tuple(int(s) for s in data.shape)
    crop_idx = None
    if crop is not None:
        crop = _three(crop)
        crop_idx = centre_crop_indices(aligned_shape, crop)
        data = data[crop_idx[0]:crop_idx[3], crop_idx[1]:crop_idx[4], crop_idx[2]:crop_idx[5]]
        min_pad = crop
    else:
        min_pad = [DEFAULT_MIN_PAD] * 3
    data = rescale_intensities(data, ct=ct).astype(np.float32)
    if autocrop and crop_idx is None:  # after the rescaling, as the reference does
        crop_idx = autocrop_indices(data)
        if crop_idx is not None:
            data = data[crop_idx[0]:crop_idx[3], crop_idx[1]:crop_idx[4], crop_idx[2]:crop_idx[5]]
    image, pad_idx = pad_volume(data, pad_shape_for(data.shape, min_pad))
    return Prepared(image=np.ascontiguousarray(image), affine=affine, resolution=np.asarray(resolution),
                    aligned_shape=aligned_shape, alignment=alignment, pad_idx=pad_idx, crop_idx=crop_idx,
                    resampled=resampled, input_shape=input_shape, input_affine=input_affine)


def _three(values) -> list[int]:
    values = [int(v) for v in (values if isinstance(values, (list, tuple, np.ndarray)) else [values])]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or any(v <= 0 for v in values):
        raise InputError(f"crop must be one or three positive sizes, got {values}")
    return values
