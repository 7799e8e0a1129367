"""segsuite preprocess: N4, brain extraction, registration to MNI152, template-space and VBM maps."""

from __future__ import annotations

import argparse
import os

NAME = "preprocess"
REGISTRATION_CHOICES = ("t1w+tissues", "t1w")
HELP = "N4 bias correction, brain mask, registration to MNI152 and modulated/smoothed GM/WM/CSF maps (VBM)"
DESCRIPTION = """Structural-MRI minimum preprocessing of one T1w, driven by its segmentation.

The segmentation is --seg (any FreeSurfer-labelled map: aseg, SAMSEG seg.mgz, SynthSeg's --o), or
SynthSeg's --post posteriors (with or without --seg), or, with neither, SynthSeg run here.
Outputs in --o use sMRIPrep's names (docs/preprocess.md has the table): <prefix>_desc-preproc_T1w,
_desc-brain_mask, _desc-brain_T1w, _space-<template>_desc-preproc_T1w, _space-<template>_label-GM_probseg
(and WM, CSF), their _desc-modulated and _desc-modulatedfwhm<F> versions,
_from-T1w_to-<template>_mode-image_xfm.h5 and its inverse, and _desc-preproc_qc.json (MRIQC's inu_*
and tpm_overlap_*). The template is MNI152NLin2009cAsym when TemplateFlow has it locally, else
MNI152NLin2009aSym (nilearn's copy); the file names say which was used.
"""


def non_negative_mm(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give millimetres, e.g. 8") from None
    if not value >= 0 or value > 50:
        raise argparse.ArgumentTypeError(f"give a value from 0 to 50 mm, got {text}")
    return value


def add_arguments(parser) -> None:
    from ..preprocess.templates import TEMPLATES

    parser.add_argument("--i", dest="image", metavar="T1W", required=True, help="the T1-weighted scan")
    parser.add_argument("--seg", metavar="LABELS", help="its segmentation (FreeSurfer label values)")
    parser.add_argument("--post", metavar="POSTERIORS", help="SynthSeg posteriors of this scan (4D)")
    parser.add_argument("--o", dest="output", metavar="OUTDIR", required=True, help="output folder")
    parser.add_argument("--prefix", help="file name prefix (default: the image name without extension and _T1w)")
    parser.add_argument("--template", choices=TEMPLATES,
                        help="template space (default: MNI152NLin2009cAsym if TemplateFlow has it locally, "
                             "else MNI152NLin2009aSym)")
    parser.add_argument("--resolution", type=float, choices=(1.0, 2.0), default=1.0,
                        help="template-space output grid in mm (default 1)")
    parser.add_argument("--fwhm", type=non_negative_mm, default=8.0,
                        help="Gaussian FWHM in mm of the smoothed modulated maps (default 8; 0: none)")
    parser.add_argument("--registration", choices=REGISTRATION_CHOICES, default="t1w+tissues",
                        help="what drives the deformable registration: the T1w with the GM/WM maps against the "
                             "template's priors (default: higher template overlap) or the T1w alone (about 25 %% "
                             "faster; docs/preprocess.md)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def default_prefix(image: str) -> str:
    from ..image import strip_image_suffix

    name = os.path.basename(strip_image_suffix(image))
    return name[:-len("_T1w")] if name.endswith("_T1w") else name


def result_from_posteriors(post: str, subject: str):
    """A result whose labels are the posteriors' most probable label (SynthSeg --post without --seg)."""
    import numpy as np

    from ..errors import InputError
    from ..image import load_volume
    from ..result import SegmentationResult
    from ..synthseg import labels as synthseg_labels
    from ..synthseg.engine import label_table_for

    volume = load_volume(post)
    posteriors = np.asarray(volume.data, dtype=np.float32)
    known = {len(synthseg_labels.LABELS_V2): synthseg_labels.LABELS_V2, len(synthseg_labels.LABELS_V1): synthseg_labels.LABELS_V1}
    channels = posteriors.shape[-1] if posteriors.ndim == 4 else 0
    if channels not in known:
        raise InputError(f"{post} has shape {posteriors.shape}: expected SynthSeg posteriors with 33 (2.0) or "
                         "32 (1.0) channels in the 4th dimension")
    values = np.asarray(known[channels], dtype=np.int32)
    labels = values[np.argmax(posteriors, axis=-1)]
    return SegmentationResult(labels=labels, affine=volume.affine, label_table=label_table_for([int(v) for v in np.unique(labels)]),
                              posteriors=posteriors, posterior_labels=[int(v) for v in values],
                              posteriors_affine=volume.affine, subject=subject,
                              provenance={"engine": "files", "posteriors": post})


def run(args) -> int:
    from ..cli import print_written, progress_for
    from ..errors import UsageError
    from ..image import check_outputs
    from ..preflight import check_input_images
    from ..preprocess import load_template, output_paths, preprocess_subject, write_preprocessed
    from ..preprocess.templates import template_files

    if args.threads < 1:
        raise UsageError("--threads must be at least 1")
    prefix = args.prefix or default_prefix(args.image)
    inputs = [p for p in (args.image, args.seg, args.post) if p]
    space, _ = template_files(args.template)  # which template, before any work (the names carry it)
    check_outputs(list(output_paths(args.output, prefix, space, args.fwhm).values()), args.overwrite, inputs=inputs)
    check_input_images(inputs)
    template = load_template(space, resolution=args.resolution)
    progress, close = progress_for(args, "preprocess")
    try:
        if args.seg:
            from ..morphometry.files import result_from_files

            result = result_from_files(args.seg, args.post, subject=prefix)
        elif args.post:
            result = result_from_posteriors(args.post, prefix)
        else:
            from ..synthseg import SynthSegEngine

            progress(0.0, "SynthSeg")
            result = SynthSegEngine(posteriors=True, threads=args.threads).segment(args.image, subject=prefix)
        preprocessed = preprocess_subject(args.image, result, template, fwhm=args.fwhm, threads=args.threads,
                                          tissue_channels=args.registration == "t1w+tissues", progress=progress)
        written = write_preprocessed(preprocessed, args.output, prefix, overwrite=args.overwrite, inputs=inputs)
    finally:
        close()
    print_written(written)
    metrics = preprocessed.metrics
    print(f"{space}: inu_range {metrics['inu_range']:.3f}, tpm_overlap_gm {metrics.get('tpm_overlap_gm', float('nan')):.3f}, "
          f"tpm_overlap_wm {metrics.get('tpm_overlap_wm', float('nan')):.3f}; "
          f"{sum(preprocessed.seconds.values()):.1f} s")
    return 0
