"""segsuite synthseg: SynthSeg 2.0 brain segmentation with mri_synthseg's options."""

from __future__ import annotations

import os
import sys

import numpy as np

NAME = "synthseg"
HELP = "SynthSeg 2.0 whole-brain segmentation of any contrast and resolution (mri_synthseg's options)"
DESCRIPTION = """SynthSeg 2.0 (Billot et al.) in PyTorch, with the original weights.

--i takes an image, a folder of images or a .txt list of paths; --o (and --post, --resample) must be
of the same kind. For an image or folder input --vol/--qc write one CSV for all subjects; for a .txt
list they are .txt lists of CSV paths. Outputs are on a 1 mm grid aligned with the input (use
--keepgeom for labels on the input's own grid).
"""


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--i", dest="input", metavar="PATH", help="image, folder of images, or .txt list of images")
    parser.add_argument("-o", "--o", dest="output", metavar="PATH", help="segmentation output(s): file/folder/.txt like --i")
    parser.add_argument("--parc", action="store_true", help="parcellate the cortex (Desikan-Killiany labels)")
    parser.add_argument("--robust", action="store_true", help="robust model for low-quality scans (implies --fast)")
    parser.add_argument("--fast", action="store_true", help="skip the flip averaging and the per-structure cleaning")
    parser.add_argument("--vol", metavar="CSV", help="volumes (mm3) of all structures; one CSV for all subjects")
    parser.add_argument("--qc", metavar="CSV", help="automated quality-control scores; one CSV for all subjects")
    parser.add_argument("--post", metavar="PATH", help="posterior probabilities output(s)")
    parser.add_argument("--resample", metavar="PATH", help="the input resampled to 1 mm (written when resampling happens)")
    parser.add_argument("--crop", nargs="+", type=int, metavar="N", help="analyse only a centred N^3 (or NxNxN) patch")
    parser.add_argument("--autocrop", action="store_true",
                        help="analyse only the bounding box of the head's nonzero voxels (mri_synthseg --autocrop; "
                             "not with --crop)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--v1", action="store_true", help="use SynthSeg 1.0")
    parser.add_argument("--ct", action="store_true", help="clip intensities to [0, 80] for CT scans")
    parser.add_argument("--keepgeom", action="store_true", help="write the labels on the input's voxel grid")
    ctab = parser.add_mutually_exclusive_group()
    ctab.add_argument("--addctab", action="store_true",
                      help="embed FreeSurfer's colour table in the .mgz segmentation(s), as mri_synthseg --addctab "
                           "(recon-all's call) does; .mgz outputs only")
    ctab.add_argument("--noaddctab", action="store_true",
                      help="no embedded colour table (FreeSurfer 8.2's opt-out; the default here)")
    parser.add_argument("--photo", choices=("left", "right", "both"),
                        help="Photo-SynthSeg (3D-reconstructed dissection photographs): not available here; "
                             "use FreeSurfer 8's mri_synthseg --photo")
    parser.add_argument("--model", metavar="PATH",
                        help="segmentation .h5, or a folder with synthseg_2.0.h5, synthseg_parc_2.0.h5, ... "
                             "(e.g. $FREESURFER_HOME/models); default: the model manager")
    parser.add_argument("--morphometry", metavar="OUTDIR",
                        help="also write tissue maps, dseg, brain mask, image-quality metrics, TIV and aseg.stats "
                             "per image into this folder (see segsuite morphometry)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args) -> int:
    from ..cli import print_written, progress_for
    from ..errors import SegSuiteError, UsageError
    from ..image import OutputTransaction, check_outputs, make_image
    from ..synthseg import SynthSegEngine
    from ..synthseg.engine import subject_name
    from ..synthseg.outputs import csv_text, plan_outputs, qc_row, volume_row

    if args.robust and args.v1:
        raise UsageError("--robust cannot be used with --v1 (SynthSeg-robust only exists for 2.0)")
    if args.crop is not None and len(args.crop) not in (1, 3):
        raise UsageError("--crop takes one size or three sizes")
    if args.crop is not None and args.autocrop:
        raise UsageError("--autocrop cannot be used with --crop: choose one")
    if args.photo is not None:
        raise UsageError("--photo (Photo-SynthSeg for dissection photographs) needs the Photo-SynthSeg models, which "
                         "this SynthSeg does not have: run FreeSurfer 8's mri_synthseg --photo for that")
    plan = plan_outputs(args.input, {"seg": args.output, "post": args.post, "resample": args.resample,
                                     "vol": args.vol, "qc": args.qc})
    every_output = [p for job in plan.jobs for p in job.outputs.values()] + list(plan.shared_csv.values())
    if args.morphometry:
        from ..morphometry.subject import output_paths

        every_output += [p for job in plan.jobs for p in output_paths(args.morphometry, subject_name(job.image)).values()]
    check_outputs(every_output, args.overwrite, inputs=[job.image for job in plan.jobs])
    if args.addctab:
        from ..image import image_suffix

        nifti = [job.outputs["seg"] for job in plan.jobs if image_suffix(job.outputs["seg"]) not in (".mgz", ".mgh")]
        if nifti:
            raise UsageError(f"--addctab embeds the colour table in .mgz segmentations; {nifti[0]} is not one: "
                             "give --o an .mgz name (or leave out --addctab)")

    from ..faults import checkpoint
    from ..preflight import check_input_images

    check_input_images([job.image for job in plan.jobs])
    expected_space(args, plan).check()
    checkpoint("before-network")
    device = "cpu" if args.cpu else args.device
    progress, close = progress_for(args, "SynthSeg")
    # one transaction for the whole run: every subject's files and the shared CSVs, or nothing
    transaction = OutputTransaction(overwrite=args.overwrite, inputs=[job.image for job in plan.jobs])
    try:
        engine = SynthSegEngine(model=args.model, parc=args.parc, robust=args.robust, fast=args.fast, v1=args.v1,
                                ct=args.ct, qc=bool(args.qc), posteriors=bool(args.post or args.morphometry), crop=args.crop,
                                device=device, threads=args.threads, autocrop=args.autocrop)
        volume_rows, qc_rows, failures = [], [], []
        volume_header = qc_header = None
        count = len(plan.jobs)
        for number, job in enumerate(plan.jobs):
            def report(fraction, message, number=number):
                progress((number + fraction) / count, f"{os.path.basename(job.image)}: {message}")
            try:
                result = engine.segment(job.image, progress=report, resample_output=args.keepgeom,
                                        subject=subject_name(job.image))
                seg_path = job.outputs["seg"]
                if args.addctab:
                    from ..mgh_colortable import save_labels_with_colortable

                    save_labels_with_colortable(transaction, seg_path, result.labels.astype(np.int32, copy=False),
                                                result.affine)
                else:
                    transaction.save_image(seg_path, result.labels.astype(np.int32, copy=False), result.affine)
                if job.outputs.get("post"):
                    transaction.save_image(job.outputs["post"], result.posteriors.astype(np.float32, copy=False),
                                           result.posteriors_affine)
                if job.outputs.get("resample") and "resampled" in result.images:
                    transaction.save_image(job.outputs["resample"], result.images["resampled"],
                                           np.array(result.provenance["grid_affine"]))
                if job.outputs.get("vol"):
                    transaction.write_text(job.outputs["vol"], csv_text(
                        result.volumes.reference_names(), [volume_row(result.subject, result.volumes, result.provenance.get("volume_dtype", "float64"))], shared=False))
                if job.outputs.get("qc"):
                    transaction.write_text(job.outputs["qc"], csv_text(
                        list(result.qc), [qc_row(result.subject, result.qc)], shared=False))
                if args.morphometry:  # staged in the run's transaction: committed with the segmentation or not at all
                    from ..morphometry.subject import compute_morphometry, write_morphometry

                    write_morphometry(compute_morphometry(job.image, result), args.morphometry, result=result,
                                      transaction=transaction)
                if job.outputs.get("resample") and "resampled" not in result.images:
                    print(f"{job.image} is already at 1 mm: no resampled image written "
                          f"to {job.outputs['resample']}", file=sys.stderr)
                volume_header = result.volumes.reference_names()  # SynthSeg's own CSV names
                qc_header = list(result.qc)
                volume_rows.append(volume_row(result.subject, result.volumes, result.provenance.get("volume_dtype", "float64")))
                qc_rows.append(qc_row(result.subject, result.qc))
            except SegSuiteError as error:
                if count == 1:
                    raise
                failures.append(f"{job.image}: {error}")
                print(f"segsuite synthseg: {job.image}: {error}", file=sys.stderr)
        if volume_rows and plan.shared_csv:
            if "vol" in plan.shared_csv:
                transaction.write_text(plan.shared_csv["vol"], csv_text(volume_header, volume_rows, shared=True))
            if "qc" in plan.shared_csv:
                transaction.write_text(plan.shared_csv["qc"], csv_text(qc_header, qc_rows, shared=True))
        written = transaction.commit()
    except BaseException:
        transaction.rollback()
        raise
    finally:
        close()
    print_written(written)
    if failures:
        raise SegSuiteError(f"{len(failures)} of {count} images failed: " + "; ".join(failures))
    return 0


def expected_space(args, plan):
    """The sizes of every output from the input headers: labels on the 1 mm grid (the input's with
    --keepgeom), posteriors one float32 channel per label, the resampled image float32."""
    from ..diskspace import SpacePlan, input_grid, one_mm_voxels, voxel_count
    from ..synthseg import labels as L
    from ..synthseg.engine import subject_name

    space = SpacePlan()
    channels = len(L.segmentation_labels(args.v1))
    for job in plan.jobs:
        shape, zooms = input_grid(job.image)
        one_mm = one_mm_voxels(shape, zooms)
        for kind, path in job.outputs.items():
            if not path:
                continue
            if kind == "seg":
                space.add_image(path, voxel_count(shape) if args.keepgeom else one_mm, 4)
            elif kind == "post":
                space.add_image(path, one_mm, 4, integer=False, channels=channels)
            elif kind == "resample":
                space.add_image(path, one_mm, 4, integer=False)
            else:
                space.add_text(path)
        if args.morphometry:
            from ..morphometry.subject import output_paths

            add_morphometry_space(space, output_paths(args.morphometry, subject_name(job.image)), one_mm)
    for path in plan.shared_csv.values():
        space.add_text(path, rows=len(plan.jobs))
    return space


def add_morphometry_space(space, paths: dict, voxels: int) -> None:
    """segsuite morphometry's files for one subject: float32 tissue maps, integer dseg and mask."""
    from ..diskspace import PICTURE_BYTES

    for kind, path in paths.items():
        if kind.startswith("probseg_"):
            space.add_image(path, voxels, 4, integer=False)
        elif kind in ("dseg", "brain_mask"):
            space.add_image(path, voxels, 4)
        elif kind == "mosaic":
            space.add(path, PICTURE_BYTES)
        else:
            space.add_text(path)
