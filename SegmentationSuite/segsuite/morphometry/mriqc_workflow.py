"""What MRIQC's anatomical workflow (24.0.2, mriqc/workflows/anatomical/base.py) does around its metric
functions, so that the ``mriqc_*`` columns are the numbers MRIQC reports, not only its functions' values:

* the rotation mask (the RotationMask interface): voxels <= 0 of the input image, opened with the 3-D
  18-neighbour structure after a one-voxel border padding that counts as empty, only the two largest
  (face-connected) components kept, none at all when under 500 voxels; efc leaves it out, fber leaves it
  out of the air;
* the image the metrics are measured on (StructuralQC's ``in_noinu``): the N4-corrected image (input
  divided by the N4 bias field), scaled by the Harmonize interface so that the median over the eroded
  (18-neighbour structure) core of the WM map (>= 0.9) is 1000, stored as float32;
* ``inu_range`` (|95th - 5th percentile|) and ``inu_med`` (median) of the N4 bias field over the
  segmentation's brain voxels;
* ``fwhm_x/y/z`` and ``fwhm_avg``: AFNI 3dFWHMx's classic estimate as MRIQC runs it (``-combine
  -detrend -ShowMeClassicFWHM``, one volume, so no detrending) on the input image within the brain
  mask, in mm as AFNI prints it (6 significant digits), then divided by the voxel sizes (MRIQC's
  StructuralQC): in voxels, along the RAS axes of the conformed image.

The bias field is SimpleITK's N4 (ITK's N4BiasFieldCorrectionImageFilter, the algorithm ANTs'
N4BiasFieldCorrection runs; MRIQC runs ANTs'), fitted on the image shrunk 4 times, 4 levels of at most
50 iterations, within the brain mask.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .quality import bounding_box

ROTATION_MASK_MIN_VOXELS = 500
HARMONIZED_WM_MEDIAN = 1000.0
N4_SHRINK = 4
N4_ITERATIONS = (50, 50, 50, 50)
N4_CONVERGENCE = 1e-3
SIGMA_TO_FWHM = 2.35482  # sqrt(8 ln 2) as AFNI writes it (mri_fwhm.c)


def rotation_mask(image: np.ndarray) -> np.ndarray:
    """The empty voxels a rotation (or a zero-filled field of view) left in the image (bool)."""
    from scipy import ndimage

    empty = np.pad(np.asarray(image) <= 0, 1, mode="constant", constant_values=True)
    opened = ndimage.binary_opening(empty, structure=ndimage.generate_binary_structure(3, 2))
    components, count = ndimage.label(opened)
    if count > 2:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        # the two largest; among equal sizes the higher component number first, as a descending sort of
        # (size, number) pairs orders them
        order = sorted(zip(sizes.tolist(), range(sizes.size)), reverse=True)
        keep = np.zeros(sizes.size, dtype=bool)
        keep[[number for _, number in order[:2]]] = True
        keep[0] = False
        opened = keep[components]
    mask = opened[1:-1, 1:-1, 1:-1]
    if int(np.count_nonzero(mask)) < ROTATION_MASK_MIN_VOXELS:
        return np.zeros_like(mask)
    return mask


def n4_bias_field(image: np.ndarray, mask: np.ndarray, affine: Optional[np.ndarray] = None) -> np.ndarray:
    """The multiplicative N4 bias field (float32, > 0) of ``image`` fitted within ``mask``."""
    import SimpleITK as sitk

    data = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    fitted = np.asarray(mask, dtype=bool) & (data > 0)  # N4 works on log intensities
    if not fitted.any():
        return np.ones_like(data)
    floor = float(data[data > 0].min()) if (data > 0).any() else 1.0
    full = sitk.GetImageFromArray(np.maximum(data, floor))
    if affine is not None:  # physical spacing: the B-spline mesh covers the head in millimetres
        full.SetSpacing([float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[::-1]])
    full_mask = sitk.GetImageFromArray(fitted.astype(np.uint8))
    full_mask.CopyInformation(full)
    shrink = [min(N4_SHRINK, max(1, size // 8)) for size in full.GetSize()]
    small, small_mask = sitk.Shrink(full, shrink), sitk.Shrink(full_mask, shrink)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    n4.SetConvergenceThreshold(N4_CONVERGENCE)
    n4.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(full))
    return np.exp(log_field).astype(np.float32)


def harmonize(corrected: np.ndarray, wm_map: np.ndarray) -> np.ndarray:
    """MRIQC's Harmonize: the image scaled so that its median over the eroded WM core is 1000 (float32)."""
    from scipy import ndimage

    core = np.asarray(wm_map) >= 0.9
    box = bounding_box(core, pad=1)  # erosion reaches one voxel; outside the box nothing is WM
    eroded = np.zeros_like(core)
    eroded[box] = ndimage.binary_erosion(core[box], structure=ndimage.generate_binary_structure(3, 2))
    data = np.asarray(corrected, dtype=np.float64)
    if not eroded.any():
        return data.astype(np.float32)
    return (data * (HARMONIZED_WM_MEDIAN / np.median(data[eroded]))).astype(np.float32)


def inu_metrics(bias: np.ndarray, brain_mask: np.ndarray) -> dict[str, float]:
    """MRIQC's inu_range and inu_med of the bias field over the brain."""
    values = np.asarray(bias, dtype=np.float64)[np.asarray(brain_mask) > 0]
    if values.size == 0:
        return {"inu_range": float("nan"), "inu_med": float("nan")}
    return {"inu_range": float(abs(np.percentile(values, 95.0) - np.percentile(values, 5.0))),
            "inu_med": float(np.median(values))}


def fwhm_classic(image: np.ndarray, mask: np.ndarray, voxel_sizes) -> list[float]:
    """AFNI 3dFWHMx's classic FWHM (mm) along each array axis: from the variance V of the masked voxels
    and the variance D of their first differences (pairs with both voxels in the mask),
    FWHM = 2.35482 * sqrt(-1 / (4 ln(1 - D / (2 V)))) * voxel size; -1 where it cannot be estimated."""
    data = np.asarray(image, dtype=np.float32)
    inside = np.asarray(mask) > 0
    count = int(np.count_nonzero(inside))
    values = data[inside].astype(np.float64)
    total, squares = float(values.sum()), float(np.dot(values, values))
    if count < 9 or squares <= 0:
        return [-1.0, -1.0, -1.0]
    variance = (squares - total * total / count) / (count - 1.0)
    if variance <= 0:
        return [-1.0, -1.0, -1.0]
    estimates = []
    for axis, size in enumerate(voxel_sizes):
        upper = [slice(None)] * 3
        lower = [slice(None)] * 3
        upper[axis], lower[axis] = slice(1, None), slice(None, -1)
        pairs = inside[tuple(upper)] & inside[tuple(lower)]
        n = int(np.count_nonzero(pairs))
        if n < 6:
            estimates.append(-1.0)
            continue
        differences = data[tuple(upper)][pairs].astype(np.float64) - data[tuple(lower)][pairs]
        spread = (float(np.dot(differences, differences)) - float(differences.sum()) ** 2 / n) / (n - 1.0)
        argument = 1.0 - 0.5 * spread / variance
        estimates.append(SIGMA_TO_FWHM * math.sqrt(-1.0 / (4.0 * math.log(argument))) * float(size)
                         if 0.0 < argument < 1.0 else -1.0)
    return estimates


def fwhm_metrics(image: np.ndarray, brain_mask: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """MRIQC's fwhm_x, fwhm_y, fwhm_z (voxels along the RAS axes) and fwhm_avg."""
    import nibabel as nib

    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    millimetres = [float(f"{value:.6g}") for value in fwhm_classic(image, brain_mask, sizes)]  # AFNI's %g
    # array axis -> RAS axis (MRIQC measures on the image conformed to RAS; flips change nothing)
    ras_axis = nib.orientations.io_orientation(np.asarray(affine))[:, 0].astype(int)
    voxels = [0.0, 0.0, 0.0]
    for axis, target in enumerate(ras_axis):
        voxels[target] = millimetres[axis] / float(sizes[axis])
    return {"fwhm_x": voxels[0], "fwhm_y": voxels[1], "fwhm_z": voxels[2], "fwhm_avg": float(np.average(voxels))}
