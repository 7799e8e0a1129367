"""A brain mask from a SAMSEG segmentation that fMRIPrep can use.

fMRIPrep (niworkflows ``refine_aseg``) turns an aseg into a brain mask by taking every
non-zero label, closing with a ball of radius 4 voxels and filling holes. SAMSEG also labels
tissue outside the brain (skull, soft tissue, eye fluid, extra-cerebral CSF), so that mask
swallows the head. Here the non-brain labels are removed first, then the same closing and
hole filling is applied. The labels removed are a documented, overridable choice.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import numpy as np

from ..errors import InputError, UsageError
from ..image import Volume, as_volume, load_volume, squeeze_to_3d, voxel_sizes
from ..labels import check_label_map, freesurfer_lut
from ..progress import ProgressCallback, ensure_callback
from ..result import SegmentationResult

# Which labels count as "not brain" is a choice; these are the documented presets.
PRESETS: dict[str, tuple[int, ...]] = {
    # The community patch for fMRIPrep: extra-cerebral CSF, skull, soft tissue, eye fluid.
    "fmriprep": (24, 165, 258, 259),
    # FreeSurfer's samseg2recon brain mask: keeps CSF (24).
    "samseg2recon": (165, 258, 259),
    # Nothing removed: exactly what unpatched fMRIPrep does with a raw SAMSEG seg (for comparison).
    "none": (),
}
DEFAULT_PRESET = "fmriprep"
DEFAULT_EXCLUDED_LABELS: tuple[int, ...] = PRESETS[DEFAULT_PRESET]

# Removed labels the closing may bring back into the mask: sulcal CSF belongs in a brain mask
# (recon-all's aseg has none there, and refine_aseg's closing exists to include the sulci).
# Voxels of every other removed label are taken out of the mask again after the closing.
DEFAULT_CLOSING_MAY_INCLUDE: tuple[int, ...] = (24,)

# refine_aseg's structuring element radius (voxels, whatever the voxel size).
REFINE_ASEG_BALL_RADIUS = 4

# Labels every brain segmentation of SAMSEG/aseg type contains; used to recognise one.
_CORE_BRAIN_LABELS = (2, 3, 41, 42)


def ball(radius: int) -> np.ndarray:
    """The voxels with x^2 + y^2 + z^2 <= radius^2 (same as skimage.morphology.ball)."""
    offsets = np.arange(-radius, radius + 1)
    squared = offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    return squared <= radius * radius


def refine_aseg_mask(foreground: np.ndarray, radius: int = REFINE_ASEG_BALL_RADIUS) -> np.ndarray:
    """niworkflows refine_aseg on a binary mask: closing with ball(radius), then hole filling.

    Matches refine_aseg exactly, borders included: skimage's binary_closing dilates with the
    outside of the array taken as background and erodes with it taken as foreground (so a
    mask touching the edge is not eaten away there), and binary_fill_holes is called with the
    ball as its structure (background connectivity). Returns a bool array.
    """
    from scipy import ndimage

    foreground = np.asarray(foreground, dtype=bool)
    if foreground.ndim != 3:
        raise InputError(f"a 3D mask is needed, got shape {foreground.shape}")
    result = np.zeros(foreground.shape, dtype=bool)
    if not foreground.any():
        return result
    structure = ball(radius)
    # Work inside the bounding box with a 2*radius margin (clipped at the array's own edges):
    # beyond radius from the mask the closing is empty, so this is exact and much faster.
    margin = 2 * radius + 1
    nonzero = np.nonzero(foreground)
    box = tuple(slice(max(int(axis.min()) - margin, 0), min(int(axis.max()) + margin + 1, size))
                for axis, size in zip(nonzero, foreground.shape))
    cropped = foreground[box]
    dilated = ndimage.binary_dilation(cropped, structure=structure, border_value=0)
    # The crop's own edges lie more than radius beyond the dilated mask, so border_value=1 only
    # matters at the original array's edges, as in skimage.
    closed = ndimage.binary_erosion(dilated, structure=structure, border_value=1)
    result[box] = ndimage.binary_fill_holes(closed, structure=structure)
    return result


def resolve_excluded_labels(exclude_labels: Optional[Iterable[int]] = None,
                            preset: Optional[str] = None) -> tuple[tuple[int, ...], str]:
    """The label values to remove and a short description of where they came from."""
    if preset is not None:
        key = str(preset).lower()
        if key not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        preset_labels = PRESETS[key]
        if exclude_labels is not None and sorted(set(int(v) for v in exclude_labels)) != sorted(preset_labels):
            raise UsageError(f"give either a preset ({preset}) or a list of labels to exclude, not both")
        return tuple(preset_labels), key
    if exclude_labels is None:
        return DEFAULT_EXCLUDED_LABELS, DEFAULT_PRESET
    values = []
    for value in exclude_labels:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"label values must be integers, got {value!r}") from None
        if number <= 0:
            raise UsageError(f"label {number} cannot be excluded: 0 is background and labels are positive")
        if number not in values:
            values.append(number)
    matching = [name for name, labels in PRESETS.items() if sorted(labels) == sorted(values)]
    return tuple(values), (matching[0] if matching else "custom")


def describe_labels(values: Sequence[int]) -> str:
    """'24 CSF, 165 Skull, ...' for messages, provenance and --help."""
    lut = freesurfer_lut()
    if not values:
        return "(none)"
    return ", ".join(f"{value} {lut.name(value) if value in lut else 'unnamed'}" for value in values)


def load_segmentation(source) -> Volume:
    """Load a label map (path, (array, affine), Volume, nibabel image) and check it is one.

    Raises InputError for intensity images (a T1 given by mistake), non-integer values,
    negative values and images without any brain label.
    """
    if isinstance(source, (str, os.PathLike)):
        volume = load_volume(source, dtype=None)
    else:
        volume = as_volume(source)
    name = volume.path or "the segmentation"
    data = squeeze_to_3d(np.asanyarray(volume.data), what=name)
    labels = _integer_labels(data, name)
    return Volume(data=labels, affine=volume.affine, path=volume.path, header=volume.header)


def _integer_labels(data: np.ndarray, name: str) -> np.ndarray:
    labels = check_label_map(data, name, "SAMSEG's seg.mgz")
    values = np.unique(labels)
    if not np.isin(values, _CORE_BRAIN_LABELS).any():
        raise InputError(
            f"{name} contains none of the cerebral labels {', '.join(map(str, _CORE_BRAIN_LABELS))} "
            f"(values present: {_short_list(values)}); give a SAMSEG or FreeSurfer aseg-type segmentation")
    return labels


def _short_list(values: np.ndarray, limit: int = 12) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return shown + (f", ... ({values.size} values)" if values.size > limit else "")


class SamsegBrainMask:
    """Brain mask and cleaned aseg from a SAMSEG segmentation (no network, no model).

        engine = SamsegBrainMask()                          # removes 24, 165, 258, 259
        engine = SamsegBrainMask(preset="samseg2recon")     # keeps CSF (24)
        engine = SamsegBrainMask(exclude_labels=[165, 258])
        result = engine.segment("samseg/seg.mgz")
        result.labels                 # the segmentation with the excluded labels set to 0
        result.images["brain_mask"]   # uint8 mask, refine_aseg semantics

    ``model``, ``device`` and ``threads`` are accepted for the common engine shape; this
    filter runs on the CPU and needs no model.
    """

    def __init__(self, model=None, device: Optional[str] = "auto", threads: Optional[int] = None,
                 exclude_labels: Optional[Iterable[int]] = None, preset: Optional[str] = None,
                 ball_radius: int = REFINE_ASEG_BALL_RADIUS,
                 closing_may_include: Iterable[int] = DEFAULT_CLOSING_MAY_INCLUDE):
        if model is not None:
            raise UsageError("the SAMSEG label filter uses no model; leave model unset")
        self.excluded_labels, self.preset = resolve_excluded_labels(exclude_labels, preset)
        if int(ball_radius) < 0:
            raise UsageError(f"ball radius must be >= 0, got {ball_radius}")
        self.ball_radius = int(ball_radius)
        self.closing_may_include = tuple(int(v) for v in closing_may_include)
        # Labels that are never in the mask, even where the closing would add them.
        self.never_in_mask = tuple(v for v in self.excluded_labels if v not in self.closing_may_include)

    def segment(self, source, progress: Optional[ProgressCallback] = None) -> SegmentationResult:
        report = ensure_callback(progress)
        report(0.0, "reading the segmentation")
        volume = load_segmentation(source)
        labels = volume.data
        report(0.2, f"removing labels {describe_labels(self.excluded_labels)}")
        removed = np.isin(labels, self.excluded_labels) if self.excluded_labels else np.zeros(labels.shape, bool)
        cleaned = np.where(removed, 0, labels).astype(np.int32)
        if not cleaned.any():
            raise InputError(
                f"no brain label is left after removing {describe_labels(self.excluded_labels)}: "
                "check the input is a SAMSEG segmentation and the label list")
        report(0.3, f"closing with a ball of radius {self.ball_radius} and filling holes")
        mask = refine_aseg_mask(cleaned > 0, self.ball_radius)
        # The closing reaches across thin skull or soft tissue in deep concavities; take those back out.
        reclaimed = mask & np.isin(labels, self.never_in_mask) if self.never_in_mask else np.zeros(mask.shape, bool)
        mask &= ~reclaimed
        report(0.95, "measuring volumes")
        voxel_volume = float(np.prod(voxel_sizes(volume.affine)))
        lut = freesurfer_lut()
        kept_values, counts = np.unique(cleaned[cleaned > 0], return_counts=True)
        table = lut.subset([0] + [int(v) for v in kept_values])
        volumes = {table.name(int(v)): float(c) * voxel_volume for v, c in zip(kept_values, counts)}
        removed_counts = {int(v): int(np.count_nonzero(labels == v)) for v in self.excluded_labels}
        measures = {
            "BrainMask": float(np.count_nonzero(mask)) * voxel_volume,
            "BrainLabels": float(np.count_nonzero(cleaned)) * voxel_volume,
            "RemovedLabels": float(np.count_nonzero(removed)) * voxel_volume,
            "RemovedAfterClosing": float(np.count_nonzero(reclaimed)) * voxel_volume,
        }
        provenance = {
            "engine": "samseg-filter",
            "method": (f"labels {list(self.excluded_labels)} set to 0; mask = every remaining label > 0, "
                       f"binary closing with a ball of radius {self.ball_radius} voxels, hole filling "
                       "(niworkflows refine_aseg semantics), then voxels of labels "
                       f"{list(self.never_in_mask)} removed again"),
            "preset": self.preset,
            "excluded_labels": list(self.excluded_labels),
            "excluded_label_names": {str(v): (lut.name(v) if v in lut else "") for v in self.excluded_labels},
            "excluded_voxels": {str(v): n for v, n in removed_counts.items()},
            "never_in_mask": list(self.never_in_mask),
            "removed_after_closing_voxels": int(np.count_nonzero(reclaimed)),
            "ball_radius": self.ball_radius,
            "source": volume.path or "",
        }
        report(1.0, "done")
        return SegmentationResult(
            labels=cleaned, affine=volume.affine, label_table=table, volumes=volumes, measures=measures,
            images={"brain_mask": mask.astype(np.uint8)},
            units={"volumes": "mm3", "measures": "mm3"}, provenance=provenance,
            subject=_subject_name(volume.path))


def _subject_name(path: Optional[str]) -> str:
    if not path:
        return ""
    from ..image import strip_image_suffix

    base = os.path.basename(strip_image_suffix(path))
    if base in ("seg", "aseg", "aseg.samseg-original"):
        # SAMSEG names every output seg.mgz: the folder says which case it is.
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if parent == "mri":
            parent = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
        return parent or base
    return base
