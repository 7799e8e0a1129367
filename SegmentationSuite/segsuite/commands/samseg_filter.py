"""segsuite samseg-filter: brain mask and fMRIPrep-ready aseg from a SAMSEG segmentation."""

from __future__ import annotations

import sys

from ..errors import UsageError

NAME = "samseg-filter"
HELP = "brain mask and cleaned aseg (for fMRIPrep) from a SAMSEG segmentation"


# Kept as plain text so that building the command line does not import numpy;
# Testing/test_samseg_filter.py checks it against segsuite.samseg.PRESETS.
DESCRIPTION = """\
SAMSEG labels skull, head soft tissue, eye fluid and extra-cerebral CSF, so fMRIPrep's brain mask
(niworkflows refine_aseg: every label > 0, closing with a ball of radius 4, hole filling) swallows
the head. This removes those labels first, then builds the mask the same way (and keeps skull,
soft tissue and eye voxels out of it even where the closing would add them).

Label presets (--preset), or give your own list with --labels:
  fmriprep      removes 24 CSF, 165 Skull, 258 Head-ExtraCerebral, 259 Eye-Fluid  (default)
  samseg2recon  removes 165 Skull, 258 Head-ExtraCerebral, 259 Eye-Fluid
  none          removes nothing (what unpatched fMRIPrep does)

Outputs: --o the brain mask (uint8), --cleaned-aseg the segmentation with the removed labels set
to 0 (unpatched fMRIPrep turns it into the right mask), --volumes a CSV of the kept labels.
--subject-dir SUBJ writes the cleaned segmentation as SUBJ/mri/aseg.mgz for
'fmriprep --fs-subjects-dir', keeping the original as mri/aseg.samseg-original.mgz
(--restore puts it back).

examples:
  segsuite samseg-filter --i samseg/seg.mgz --o brain_mask.nii.gz --cleaned-aseg aseg_clean.mgz
  segsuite samseg-filter --i samseg/seg.mgz --o mask.mgz --preset samseg2recon
  segsuite samseg-filter --subject-dir $SUBJECTS_DIR/sub-01          # after samseg2recon
  segsuite samseg-filter --subject-dir $SUBJECTS_DIR/sub-01 --restore
"""


def parse_labels(values) -> list[int]:
    """'--labels 24 165' and '--labels 24,165' both work."""
    labels: list[int] = []
    for value in values or []:
        for part in str(value).replace(",", " ").split():
            try:
                labels.append(int(part))
            except ValueError:
                raise UsageError(f"--labels takes integer label values, got {part!r}") from None
    return labels


def add_arguments(parser) -> None:
    parser.add_argument("--i", dest="input", metavar="SEG",
                        help="SAMSEG segmentation (seg.mgz or NIfTI); with --subject-dir it defaults to the subject's aseg")
    parser.add_argument("--o", dest="output", metavar="MASK", help="brain mask to write (.nii.gz, .nii, .mgz)")
    parser.add_argument("--cleaned-aseg", metavar="OUT", help="write the segmentation with the removed labels set to 0")
    parser.add_argument("--volumes", metavar="CSV", help="write the volumes (mm3) of the kept labels and the mask")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--labels", nargs="+", metavar="LABEL",
                       help="labels to remove instead of the preset's (e.g. --labels 165 258 259)")
    group.add_argument("--preset", choices=("fmriprep", "samseg2recon", "none"),
                       help="named label set to remove (default fmriprep: 24 165 258 259)")
    parser.add_argument("--subject-dir", metavar="DIR",
                        help="FreeSurfer subject folder: write the cleaned segmentation as DIR/mri/aseg.mgz, keeping the original")
    parser.add_argument("--restore", action="store_true", help="with --subject-dir: put the original aseg.mgz back")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args) -> int:
    from ..cli import print_written, progress_for
    from ..image import OutputTransaction, check_outputs
    from ..samseg import SamsegBrainMask, describe_labels, install_cleaned_aseg, restore_original_aseg
    from ..samseg.runner import volumes_csv_text

    if args.restore:
        if not args.subject_dir:
            raise UsageError("--restore needs --subject-dir")
        if args.input or args.output or args.cleaned_aseg or args.volumes:
            raise UsageError("--restore takes only --subject-dir (and --overwrite)")
        restored = restore_original_aseg(args.subject_dir, overwrite=args.overwrite)
        print(f"restored the original {restored}", file=sys.stderr)
        return 0
    if not (args.output or args.cleaned_aseg or args.volumes or args.subject_dir):
        raise UsageError("nothing to write: give --o MASK, --cleaned-aseg OUT, --volumes CSV or --subject-dir DIR")
    if not args.input and not args.subject_dir:
        raise UsageError("give the SAMSEG segmentation with --i")
    outputs = [path for path in (args.output, args.cleaned_aseg, args.volumes) if path]
    check_outputs(outputs, args.overwrite, inputs=[args.input] if args.input else [])

    engine = SamsegBrainMask(exclude_labels=parse_labels(args.labels) if args.labels else None, preset=args.preset)
    from ..faults import checkpoint
    from ..preflight import check_input_image

    if args.input:
        check_input_image(args.input)
        expected_space(args).check()
    checkpoint("before-network")
    print(f"removing labels ({engine.preset}): {describe_labels(engine.excluded_labels)}", file=sys.stderr)
    progress, close = progress_for(args, "SAMSEG filter")
    try:
        if args.subject_dir:
            update = install_cleaned_aseg(args.subject_dir, engine, seg_source=args.input, progress=progress)
            result = update.result
        else:
            result = engine.segment(args.input, progress=progress)
    finally:
        close()

    with OutputTransaction(overwrite=args.overwrite, inputs=[args.input] if args.input else []) as transaction:
        if args.output:
            transaction.save_image(args.output, result.images["brain_mask"], result.affine)
        if args.cleaned_aseg:
            transaction.save_image(args.cleaned_aseg, result.labels.astype("int32"), result.affine)
        if args.volumes:
            transaction.write_text(args.volumes, volumes_csv_text(result))

    removed = result.provenance.get("excluded_voxels", {})
    print(f"brain mask: {result.measures['BrainMask'] / 1000:.1f} cm3; removed "
          f"{result.measures['RemovedLabels'] / 1000:.1f} cm3 ({', '.join(f'{k}: {v} voxels' for k, v in removed.items()) or 'nothing'})",
          file=sys.stderr)
    print_written(outputs)
    if args.subject_dir:
        print(f"{update.action} {update.aseg} (original kept as {update.original or 'none: there was no aseg.mgz'}; "
              f"record {update.record}); undo with: segsuite samseg-filter --subject-dir {args.subject_dir} --restore",
              file=sys.stderr)
    return 0


def expected_space(args):
    """The uint8 mask and the int32 cleaned labels on the input grid, the volumes table; with
    --subject-dir the new aseg.mgz and the saved original beside it."""
    import os

    from ..diskspace import SpacePlan, input_grid, voxel_count

    voxels = voxel_count(input_grid(args.input)[0])
    space = SpacePlan()
    if args.output:
        space.add_image(args.output, voxels, 1)
    if args.cleaned_aseg:
        space.add_image(args.cleaned_aseg, voxels, 4)
    if args.volumes:
        space.add_text(args.volumes)
    if args.subject_dir:
        for name in ("aseg.mgz", "aseg.presamsegfilter.mgz"):
            space.add_image(os.path.join(args.subject_dir, "mri", name), voxels, 4)
    return space
