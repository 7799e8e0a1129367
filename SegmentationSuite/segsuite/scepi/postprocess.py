"""Postprocessing with the Spinal Cord Toolbox's options and order: -thr, -largest, -fill-holes, -remove-small.

Every function takes and returns a new array (inputs are not modified).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import UsageError


def binarize(data: np.ndarray, threshold: float) -> np.ndarray:
    """SCT's -thr: 1 where data > threshold, else 0."""
    return (np.asarray(data) > threshold).astype(np.uint8)


def keep_largest_object(labels: np.ndarray) -> np.ndarray:
    """SCT's -largest: keep the largest face-connected foreground object (all classes together)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    foreground = labels > 0.001 if labels.dtype.kind == "f" else labels > 0  # SCT drops values < 0.001 first
    components, count = ndimage.label(foreground)
    if count <= 1:
        return np.where(foreground, labels, 0).astype(labels.dtype)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return np.where(components == int(sizes.argmax()), labels, 0).astype(labels.dtype)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """SCT's -fill-holes: fill enclosed background (3x3x3 structure), per class, lowest value first."""
    from scipy import ndimage

    labels = np.asarray(labels)
    values = [v for v in np.unique(labels) if v != 0]
    if labels.dtype.kind == "f" and not np.all(np.isin(values, np.round(values))):
        raise UsageError("-fill-holes needs a binary or label segmentation: binarize a soft output with -thr first")
    out = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in values:
        filled = ndimage.binary_fill_holes(labels == value, structure=structure)
        out[filled & (out == 0)] = value
    return out


@dataclass(frozen=True)
class MinimumSize:
    """A -remove-small setting: one size, or one per class, in mm3 or voxels."""

    sizes: tuple[float, ...]
    unit: str  # "mm3" or "vox"

    def voxels(self, voxel_volume_mm3: float, count: int) -> list[float]:
        """The minimum size in voxels for each of ``count`` classes."""
        if len(self.sizes) == 1:
            sizes = list(self.sizes) * count
        elif len(self.sizes) == count:
            sizes = list(self.sizes)
        else:
            raise UsageError(f"-remove-small has {len(self.sizes)} values but the model has {count} classes: "
                             "give one value, or one per class")
        if self.unit == "mm3":
            return [float(np.round(size / voxel_volume_mm3)) for size in sizes]
        return sizes


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(mm3|vox)?\s*$", re.IGNORECASE)


def parse_remove_small(values: Optional[Sequence[str] | str]) -> Optional[MinimumSize]:
    """'10mm3', '5vox', '3' (voxels), or a list of them (one per class, all in the same unit)."""
    if values is None:
        return None
    if isinstance(values, (str, int, float)):
        values = [values]
    sizes, units = [], set()
    for value in values:
        match = _SIZE.match(str(value))
        if not match:
            raise UsageError(f"-remove-small value {value!r} is not a size: use e.g. 10mm3 or 5vox "
                             "(one value, or one per class)")
        sizes.append(float(match.group(1)))
        units.add((match.group(2) or "vox").lower())
    if not sizes:
        raise UsageError("-remove-small needs a size, e.g. 10mm3 or 5vox")
    if len(units) > 1:
        raise UsageError("-remove-small values must all use the same unit (mm3 or vox)")
    return MinimumSize(tuple(sizes), units.pop())


def remove_small_objects(labels: np.ndarray, voxel_sizes: Sequence[float], minimum: MinimumSize,
                         class_values: Optional[Sequence[int]] = None) -> np.ndarray:
    """SCT's -remove-small: drop objects (18-connected) smaller than the minimum, per class."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if class_values is None:
        class_values = [int(v) for v in np.unique(labels) if v != 0] or [1]
    voxel_volume = float(np.prod(voxel_sizes))
    minimum_voxels = minimum.voxels(voxel_volume, len(class_values))
    structure = ndimage.generate_binary_structure(3, 2)
    out = labels.copy()
    for value, size_min in zip(class_values, minimum_voxels):
        components, count = ndimage.label(labels == value, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())
        small = np.flatnonzero(sizes < size_min)
        small = small[small != 0]
        if small.size:
            out[np.isin(components, small)] = 0
    return out


@dataclass(frozen=True)
class PostprocessOptions:
    threshold: Optional[float] = None
    keep_largest: bool = False
    fill_holes: bool = False
    remove_small: Optional[MinimumSize] = None

    @property
    def any(self) -> bool:
        return bool(self.threshold) or self.keep_largest or self.fill_holes or self.remove_small is not None


def postprocess(labels: np.ndarray, voxel_sizes: Sequence[float], options: PostprocessOptions,
                class_values: Optional[Sequence[int]] = None) -> np.ndarray:
    """Apply the options in SCT's order (threshold is applied by the engine to the soft output)."""
    if options.keep_largest:
        labels = keep_largest_object(labels)
    if options.fill_holes:
        labels = fill_holes(labels)
    if options.remove_small is not None:
        labels = remove_small_objects(labels, voxel_sizes, options.remove_small, class_values)
    return labels
