"""One subject's structural preprocessing from its T1w and its segmentation (DESIGN.md, preprocessing).

N4 inside the head, brain mask and brain-extracted image from the segmentation, greedy affine +
deformable registration of the brain to the template, the T1w and GM/WM/CSF maps resampled to the
template, Jacobian-modulated and smoothed maps, MRIQC's inu_* and tpm_overlap_*, and the ITK
transforms both ways. ``write_preprocessed`` names the files as sMRIPrep does.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import InputError
from ..image import as_volume, squeeze_to_3d
from ..morphometry import tissues
from ..morphometry.quality import head_and_air_masks
from ..progress import ensure_callback, sub_progress
from ..result import SegmentationResult
from . import itk, quality, vbm
from .bias import n4_bias_correction
from .registration import Registration, register
from .templates import Template

DEFAULT_FWHM = 8.0
REGISTRATION_SPACING = 2.0


@dataclass
class Preprocessed:
    """What the preprocessing made for one subject (native arrays on the T1w grid, template arrays on
    the template grid)."""

    template: str
    native_affine: np.ndarray
    template_affine: np.ndarray
    corrected: np.ndarray                 # N4-corrected T1w (desc-preproc_T1w)
    bias_field: np.ndarray
    brain_mask: np.ndarray                # on the T1w grid
    brain: np.ndarray                     # brain-extracted corrected T1w
    registration: Registration
    template_t1: np.ndarray               # the corrected T1w in template space
    template_mask: np.ndarray
    probseg: dict[str, np.ndarray]        # tissue -> map in template space
    modulated: dict[str, np.ndarray]
    smoothed: dict[str, np.ndarray]
    fwhm: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)


def tissue_maps_of(result: SegmentationResult) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """GM/WM/CSF maps of a segmentation (from its posteriors when it has them) and their grid."""
    if result.posteriors is not None:
        maps, _ = tissues.tissue_maps_from_posteriors(result.posteriors, result.posterior_labels)
        return maps, np.asarray(result.posteriors_affine, dtype=np.float64)
    maps, _ = tissues.tissue_maps_from_labels(result.labels)
    return maps, np.asarray(result.affine, dtype=np.float64)


def _on_grid(data: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage

    if tuple(data.shape) == tuple(shape) and np.allclose(affine, target_affine, atol=1e-4):
        return data
    mapping = np.linalg.inv(affine) @ target_affine
    return ndimage.affine_transform(np.asarray(data, dtype=np.float32), mapping[:3, :3], mapping[:3, 3],
                                    output_shape=tuple(shape), order=order, mode="constant", cval=0.0)


def check_label_map(labels: np.ndarray) -> None:
    """Refuse an intensity image given as the segmentation: a label map's values are few and sparse
    (SAMSEG: 43 of 0-259; aparc+aseg: ~110 of 0-2035), an image's cover most of 1..max."""
    values = tissues.distinct_labels(labels)
    values = values[values > 0]
    if values.size > 100 and values.size > 0.8 * values.max():
        raise InputError(f"the segmentation holds {values.size} distinct values covering most of 1..{int(values.max())}: "
                         "it looks like an intensity image; give its label map to --seg (aseg, SAMSEG seg.mgz, "
                         "SynthSeg's --o)")


def preprocess_subject(image, result: SegmentationResult, template: Template, fwhm: float = DEFAULT_FWHM,
                       threads: int = 2, registration_spacing: Optional[float] = REGISTRATION_SPACING,
                       tissue_channels: bool = True, progress=None) -> Preprocessed:
    """Preprocess one T1w (path, Volume, nibabel image or (array, affine)) with its segmentation.
    ``tissue_channels``: the GM/WM maps and the template's priors drive the deformable step beside
    the T1w (a template overlap 0.06 higher for 25 % more registration time: docs/preprocess.md)."""
    import SimpleITK as sitk

    report = ensure_callback(progress)
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:
        clock.append(time.perf_counter())
        seconds[stage] = round(clock[-1] - clock[-2], 3)

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    volume = as_volume(image)
    data = np.asarray(squeeze_to_3d(np.asarray(volume.data), "the T1w image"), dtype=np.float32)
    affine = np.asarray(volume.affine, dtype=np.float64)
    check_label_map(np.asarray(result.labels))
    maps, maps_affine = tissue_maps_of(result)
    dseg = tissues.dseg_from_maps(maps)
    brain_on_seg = tissues.brain_mask_from_dseg(dseg)
    if not brain_on_seg.any():
        raise InputError("the segmentation has no brain voxel (every voxel is background); check --seg")
    brain_mask = _on_grid(brain_on_seg.astype(np.float32), maps_affine, data.shape, affine, order=0) > 0.5
    if not brain_mask.any():
        raise InputError("the segmentation does not overlap the T1w image: give the segmentation made from this scan")
    head, _ = head_and_air_masks(data, brain_mask)
    lap("masks")

    report(0.02, "N4 bias-field correction")
    bias = n4_bias_correction(data, affine, head)
    brain = bias.corrected * brain_mask
    lap("n4")

    report(0.15, "registration to " + template.name)
    fixed = itk.to_sitk(template.t1, template.affine)
    channels = [(itk.to_sitk(template.priors[tissue], template.affine), itk.to_sitk(maps[tissue], maps_affine))
                for tissue in ("GM", "WM") if tissue_channels and tissue in template.priors]
    registration = register(itk.to_sitk(brain, affine), fixed, spacing=registration_spacing, threads=threads,
                            extra_channels=channels, progress=sub_progress(report, 0.15, 0.8))
    lap("registration")

    report(0.8, "resampling to " + template.name)
    sampler = vbm.TemplateSampler(registration.forward(), fixed)
    template_t1 = sampler(bias.corrected, affine)
    template_mask = sampler(brain_mask, affine, nearest=True) > 0
    probseg = {tissue: sampler(maps[tissue], maps_affine) for tissue in tissues.TISSUES}
    del sampler
    lap("resampling")

    report(0.9, "modulation")
    jacobian = vbm.on_template_grid(registration.jacobian(), registration.warp, fixed)
    modulated = {tissue: vbm.modulate(probseg[tissue], jacobian) for tissue in tissues.TISSUES}
    lap("modulation")

    report(0.93, "smoothing")
    smoothed = {tissue: vbm.smooth(modulated[tissue], template.affine, fwhm) for tissue in tissues.TISSUES}
    lap("smoothing")

    report(0.96, "quality metrics")
    metrics = quality.inu_metrics(bias.field, brain_mask)
    seg_grid = itk.to_sitk(np.zeros(maps["GM"].shape, dtype=np.uint8), maps_affine, dtype=np.uint8)
    inverse = registration.inverse()
    priors_in_subject = {tissue: itk.from_sitk(sitk.Resample(itk.to_sitk(prior, template.affine), seg_grid, inverse,
                                                             sitk.sitkLinear, 0.0, sitk.sitkFloat32))
                         for tissue, prior in template.priors.items()}
    metrics.update(quality.tpm_overlaps(maps, priors_in_subject))
    voxel = float(abs(np.linalg.det(maps_affine[:3, :3])))
    template_voxel = float(abs(np.linalg.det(template.affine[:3, :3])))
    for tissue in tissues.TISSUES:
        metrics[f"native_{tissue}_mm3"] = float(maps[tissue].sum(dtype=np.float64) * voxel)
        metrics[f"modulated_{tissue}_mm3"] = float(modulated[tissue].sum(dtype=np.float64) * template_voxel)
    metrics["jacobian_min"] = float(jacobian[template_mask].min()) if template_mask.any() else float("nan")
    lap("quality")
    report(1.0, "preprocessed")
    return Preprocessed(
        template=template.name, native_affine=affine, template_affine=np.asarray(template.affine, dtype=np.float64),
        corrected=bias.corrected, bias_field=bias.field, brain_mask=brain_mask, brain=brain, registration=registration,
        template_t1=template_t1, template_mask=template_mask, probseg=probseg, modulated=modulated, smoothed=smoothed,
        fwhm=float(fwhm), metrics=metrics, seconds=seconds,
        provenance={"template": template.name, "template_files": template.source, "template_resolution": template.resolution,
                    "registration": "picsl-greedy (affine 12 dof NCC, deformable NCC" + (" on T1w + GM/WM maps)" if channels else " on T1w)"), "registration_spacing_mm": registration_spacing,
                    "bias_correction": "SimpleITK N4", "fwhm_mm": float(fwhm),
                    "segmentation": result.provenance.get("segmentation", result.provenance.get("model", ""))},
    )


def fwhm_entity(fwhm: float) -> str:
    """The desc- value of smoothed modulated maps: modulatedfwhm8, modulatedfwhm6p5."""
    text = f"{fwhm:g}".replace(".", "p")
    return f"modulatedfwhm{text}"


def output_paths(folder: str, prefix: str, template: str, fwhm: float = DEFAULT_FWHM) -> dict[str, str]:
    """Output file of each product, with sMRIPrep's names (docs/preprocess.md has the table)."""
    join = lambda name: os.path.join(folder, f"{prefix}_{name}")  # noqa: E731
    space = f"space-{template}"
    paths = {
        "preproc": join("desc-preproc_T1w.nii.gz"),
        "brain_mask": join("desc-brain_mask.nii.gz"),
        "brain": join("desc-brain_T1w.nii.gz"),
        "template_preproc": join(f"{space}_desc-preproc_T1w.nii.gz"),
        "template_mask": join(f"{space}_desc-brain_mask.nii.gz"),
        "forward_xfm": join(f"from-T1w_to-{template}_mode-image_xfm.h5"),
        "inverse_xfm": join(f"from-{template}_to-T1w_mode-image_xfm.h5"),
        "metrics": join("desc-preproc_qc.json"),
    }
    for tissue in tissues.TISSUES:
        paths[f"probseg_{tissue}"] = join(f"{space}_label-{tissue}_probseg.nii.gz")
        paths[f"modulated_{tissue}"] = join(f"{space}_label-{tissue}_desc-modulated_probseg.nii.gz")
        if fwhm > 0:
            paths[f"smoothed_{tissue}"] = join(f"{space}_label-{tissue}_desc-{fwhm_entity(fwhm)}_probseg.nii.gz")
    return paths


def write_preprocessed(preprocessed: Preprocessed, folder: str, prefix: str, overwrite: bool = False,
                       inputs=(), brain_mask: bool = True) -> list[str]:
    """Write every output atomically (all or nothing); returns the paths written. ``brain_mask``
    False leaves out the native desc-brain_mask (in a cohort run the engine wrote its own)."""
    import SimpleITK as sitk

    from ..image import output_transaction, write_error

    paths = output_paths(folder, prefix, preprocessed.template, preprocessed.fwhm)
    if not brain_mask:
        del paths["brain_mask"]
    native, standard = preprocessed.native_affine, preprocessed.template_affine
    with output_transaction(overwrite=overwrite, inputs=inputs) as transaction:
        transaction.save_image(paths["preproc"], preprocessed.corrected, native)
        if brain_mask:
            transaction.save_image(paths["brain_mask"], preprocessed.brain_mask.astype(np.uint8), native)
        transaction.save_image(paths["brain"], preprocessed.brain, native)
        transaction.save_image(paths["template_preproc"], preprocessed.template_t1, standard)
        transaction.save_image(paths["template_mask"], preprocessed.template_mask.astype(np.uint8), standard)
        for tissue in tissues.TISSUES:
            transaction.save_image(paths[f"probseg_{tissue}"], preprocessed.probseg[tissue], standard)
            transaction.save_image(paths[f"modulated_{tissue}"], preprocessed.modulated[tissue], standard)
            if f"smoothed_{tissue}" in paths:
                transaction.save_image(paths[f"smoothed_{tissue}"], preprocessed.smoothed[tissue], standard)
        for key, transform in (("forward_xfm", preprocessed.registration.forward()),
                               ("inverse_xfm", preprocessed.registration.inverse())):
            temp = transaction.temp_path(paths[key])
            try:
                sitk.WriteTransform(transform, temp)
            except RuntimeError as error:
                raise write_error(OSError(str(error)), paths[key]) from None
        record = {"metrics": preprocessed.metrics, "seconds": preprocessed.seconds, "provenance": preprocessed.provenance}
        transaction.write_text(paths["metrics"], json.dumps(record, indent=2, default=str) + "\n")
    return list(paths.values())
