"""eTIV without FreeSurfer: affine registration of the T1 to an MNI template (SimpleITK).

FreeSurfer computes eTIV from the talairach transform of talairach_avi (subject -> MNI305):
eTIV = 1948.106e3 / det(subject -> MNI305). Here a 12-parameter affine maps the subject
onto the ICBM152 2009a template instead, and

    det(subject -> MNI305) = det(subject -> template) / det(MNI305 -> template).

det(MNI305 -> template) is measured, not assumed: fsaverage *is* MNI305 space (its
talairach.xfm is the identity, so FreeSurfer's eTIV for it is exactly 1948106 mm3), and
registering fsaverage's brain.mgz to the template with this same procedure gives 1.0503.
(FreeSurfer's published MNI305 -> MNI152 matrix has determinant 0.9958; with it the estimate
for fsaverage would be 5.2 % low: the 2009a nonlinear template is larger than MNI152-linear.)
The template is brain only, so the metric is evaluated inside the template brain (dilated
by one voxel): the subject's skull, if present, does not pull the fit.
"""

from __future__ import annotations

import contextlib

import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, ModelError, SegSuiteError
from .etiv import ETIV_SCALE_FACTOR

TEMPLATE_ID = "mni-icbm152-2009a"
TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_ENV = "SEGSUITE_MNI_TEMPLATE"
WORKING_MM = 3.0  # registration resolution
PLAUSIBLE_ETIV = (0.9e6, 2.4e6)  # mm3; outside it the registration most likely failed

# det(MNI305 -> ICBM152 2009a template), measured with fsaverage (see the module notes)
MNI305_TO_TEMPLATE_DET = 1.0503


def resolve_template(template=None) -> Path:
    """The template T1: explicit path (file or folder), $SEGSUITE_MNI_TEMPLATE, or the model manager."""
    if template is None:
        template = os.environ.get(TEMPLATE_ENV)
    if template is None:
        try:
            from ..models import ensure

            template = ensure(TEMPLATE_ID)
        except (ImportError, KeyError, SegSuiteError) as error:
            raise ModelError(
                f"eTIV by registration needs the ICBM152 2009a template ({TEMPLATE_FILE}) and it is not installed "
                f"({error}); give it with --etiv-template PATH (or ${TEMPLATE_ENV}), or give a talairach "
                "transform with --tal") from error
    path = Path(template)
    if path.is_dir():
        path = path / TEMPLATE_FILE
    if not path.is_file():
        raise ModelError(f"MNI template not found: {path}; give the ICBM152 2009a T1 ({TEMPLATE_FILE}) "
                         "or its folder with --etiv-template, or a talairach transform with --tal")
    return path


def _to_sitk(data: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def _block_average(image, target_mm: float):
    """Shrink by whole voxels to about ``target_mm`` (block averages: fast and alias-free enough)."""
    import SimpleITK as sitk

    factors = [max(1, int(round(target_mm / spacing))) for spacing in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


@contextlib.contextmanager
def _one_itk_thread():
    """ITK's threads sum the metric in an order that varies between runs (eTIV then differs in the
    7th digit between identical runs); on one thread the result is bit-identical, and at 3 mm no slower."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def register_to_template(data: np.ndarray, affine: np.ndarray, template=None, threads: Optional[int] = None):
    """The 3x3 linear part (RAS) of the template -> subject affine found by registration.

    It runs on one thread whatever ``threads`` says, so identical inputs give identical bits."""
    with _one_itk_thread():
        return _register(data, affine, template)


def _register(data: np.ndarray, affine: np.ndarray, template=None):
    import nibabel as nib
    import SimpleITK as sitk

    if float(np.max(data)) <= float(np.min(data)):
        raise InputError("cannot register a blank image for eTIV")
    template_path = resolve_template(template)
    template_image = nib.load(template_path)
    fixed_array = np.asarray(template_image.dataobj, dtype=np.float32)
    fixed = _block_average(_to_sitk(fixed_array, template_image.affine), WORKING_MM)
    moving = _block_average(_to_sitk(data, affine), WORKING_MM)
    # the metric counts only template voxels in or near the brain (the template has no skull)
    mask = sitk.BinaryDilate(fixed > 0, [1, 1, 1])

    # a similarity fit (rotation, translation, one scale) first, then the full affine from there
    similarity = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity3DTransform(),
                                                   sitk.CenteredTransformInitializerFilter.MOMENTS)
    _run_registration(fixed, moving, mask, similarity, [4, 2, 1], [6.0, 3.0, 1.5])
    affine_transform = sitk.AffineTransform(3)
    affine_transform.SetCenter(similarity.GetCenter())
    affine_transform.SetMatrix(similarity.GetMatrix())
    affine_transform.SetTranslation(similarity.GetTranslation())
    _run_registration(fixed, moving, mask, affine_transform, [1], [1.5])
    linear_lps = np.asarray(affine_transform.GetMatrix()).reshape(3, 3)
    flip = np.diag([-1.0, -1.0, 1.0])
    return flip @ linear_lps @ flip


def _run_registration(fixed, moving, mask, transform, shrink, sigmas) -> None:
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=1)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=100,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(sigmas)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.SetNumberOfThreads(1)
    method.Execute(fixed, moving)


def etiv_by_registration(data: np.ndarray, affine: np.ndarray, template=None, threads: Optional[int] = None) -> float:
    """eTIV (mm3) from an affine registration to the MNI template (see the module notes)."""
    template_to_subject = register_to_template(data, affine, template, threads)
    det_subject_to_152 = 1.0 / float(np.linalg.det(template_to_subject))
    det_subject_to_305 = det_subject_to_152 / MNI305_TO_TEMPLATE_DET
    if not np.isfinite(det_subject_to_305) or det_subject_to_305 <= 0:
        raise InputError("the registration to the MNI template failed (degenerate transform); give --tal instead")
    etiv = 1e3 * ETIV_SCALE_FACTOR / det_subject_to_305
    if not PLAUSIBLE_ETIV[0] <= etiv <= PLAUSIBLE_ETIV[1]:
        warnings.warn(f"eTIV by registration is {etiv / 1e6:.2f} L, outside the adult range "
                      f"{PLAUSIBLE_ETIV[0] / 1e6:.1f}-{PLAUSIBLE_ETIV[1] / 1e6:.1f} L: the registration probably "
                      "failed (whole-head images with much neck are the usual cause); give a talairach "
                      "transform with --tal or a brain-extracted image", stacklevel=2)
    return etiv
