"""N4 bias-field correction (SimpleITK's N4BiasFieldCorrectionImageFilter) inside a head mask.

Settings follow what sMRIPrep/fMRIPrep give ANTs' N4: the fit on the image shrunk 4x, a B-spline
mesh of about 200 mm, 4 levels of 50 iterations, convergence 1e-7; the field is then evaluated at
full resolution, so ``corrected = image / field``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from . import itk

SHRINK = 4
ITERATIONS = (50, 50, 50, 50)
SPLINE_DISTANCE_MM = 200.0
SPLINE_ORDER = 3
CONVERGENCE = 1e-7


@dataclass
class BiasCorrection:
    corrected: np.ndarray  # float32, same grid as the input
    field: np.ndarray      # float32 multiplicative field (input = corrected * field)


def n4_bias_correction(image: np.ndarray, affine: np.ndarray, mask: np.ndarray, shrink: int = SHRINK,
                       iterations=ITERATIONS, spline_distance: float = SPLINE_DISTANCE_MM) -> BiasCorrection:
    """N4 on ``image`` (X, Y, Z) fitted inside ``mask`` (the head); voxels <= 0 are left out of the fit."""
    import SimpleITK as sitk

    data = np.asarray(image, dtype=np.float32)
    fit_mask = np.asarray(mask, dtype=bool) & (data > 0)
    if fit_mask.sum() < 1000:
        raise InputError("the head mask holds fewer than 1000 voxels with positive intensity: N4 needs the scan "
                         "itself (not a label map or an all-zero image)")
    full = itk.to_sitk(data, affine)
    full_mask = itk.to_sitk(fit_mask, affine, dtype=np.uint8)
    shrink_factors = [max(1, min(int(shrink), n // 16)) for n in full.GetSize()]
    small = sitk.Shrink(full, shrink_factors)
    small_mask = sitk.Shrink(full_mask, shrink_factors)
    extent = np.asarray(full.GetSize()) * np.asarray(full.GetSpacing())
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.SetConvergenceThreshold(CONVERGENCE)
    n4.SetSplineOrder(SPLINE_ORDER)
    # ANTs' "-b [200]": mesh elements = extent / distance, control points = elements + order
    n4.SetNumberOfControlPoints([int(np.ceil(e / spline_distance)) + SPLINE_ORDER for e in extent])
    n4.Execute(small, small_mask)
    log_field = itk.from_sitk(n4.GetLogBiasFieldAsImage(full)).astype(np.float32)
    field = np.exp(log_field)
    return BiasCorrection(corrected=(data / field).astype(np.float32), field=field.astype(np.float32))
