"""segsuite samseg: run FreeSurfer's SAMSEG on a T1, then the brain-mask filter."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError

NAME = "samseg"
HELP = "run SAMSEG (separate install) on a T1, then build the fMRIPrep-ready brain mask"
DESCRIPTION = """\
Runs SAMSEG (Puonti et al. 2016) on a T1, then removes the non-brain labels and builds the brain
mask as 'segsuite samseg-filter' does. SAMSEG needs numpy<2 and Python 3.9-3.11, so it runs as a
separate program, found in this order: $FREESURFER_HOME/bin/run_samseg, run_samseg on PATH,
$SEGSUITE_SAMSEG_PYTHON, segsuite's own SAMSEG environment (create it once with --setup; it runs
'python3.11 -m venv <home>/samseg-venv && <venv>/bin/python -m pip install samseg==0.4a0 "numpy<2"').

The output folder gets SAMSEG's files (seg.mgz, samseg.stats, ...) plus brain_mask.mgz,
seg_cleaned.mgz, volumes.csv (SAMSEG's volumes, mm3) and run_samseg.log, all at once at the end.
A 2 mm T1 takes about 6 minutes and a 1 mm T1 about 15 minutes with 2 threads.

examples:
  segsuite samseg --setup
  segsuite samseg --i t1.nii.gz --o samseg_out --threads 4
  segsuite samseg --i t1.nii.gz --o samseg_out --preset samseg2recon
"""


def add_arguments(parser) -> None:
    parser.add_argument("--i", dest="input", metavar="T1", help="input T1-weighted image (NIfTI or MGZ)")
    parser.add_argument("--o", dest="output", metavar="DIR", help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="threads for SAMSEG (default: all cores)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--labels", nargs="+", metavar="LABEL", help="labels to remove for the brain mask")
    group.add_argument("--preset", choices=("fmriprep", "samseg2recon", "none"),
                       help="named label set to remove (default fmriprep: 24 165 258 259)")
    parser.add_argument("--samseg", metavar="PATH",
                        help="run_samseg executable, or the python of an environment with the samseg package")
    parser.add_argument("--quiet", action="store_true", help="do not show SAMSEG's log (it is saved in the output folder)")
    parser.add_argument("--setup", action="store_true",
                        help="create segsuite's own SAMSEG environment (PyPI samseg 0.4a0, numpy<2) and exit")
    parser.add_argument("--venv", metavar="DIR", help="with --setup: where to create it (default: <segsuite home>/samseg-venv)")
    parser.add_argument("--python", metavar="PYTHON", help="with --setup: the Python 3.9-3.11 to build it with")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")


def run(args) -> int:
    from ..cli import progress_for
    from ..samseg import SamsegRunner, describe_labels, setup_samseg_venv
    from .samseg_filter import parse_labels

    if args.setup:
        if args.input or args.output:
            raise UsageError("--setup only creates SAMSEG's environment; run again without it to segment")
        python = setup_samseg_venv(args.venv, python=args.python)
        if args.venv:
            print(f"to use it: export SEGSUITE_SAMSEG_PYTHON={python}  (or pass --samseg {python})", file=sys.stderr)
        return 0
    if args.venv or args.python:
        raise UsageError("--venv and --python go with --setup")
    if not args.input or not args.output:
        raise UsageError("give the T1 with --i and the output folder with --o (or --setup)")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")

    import os

    from ..faults import checkpoint
    from ..image import check_writable_locations
    from ..preflight import check_input_image

    check_input_image(args.input)
    if os.path.isfile(args.output):
        raise UsageError(f"--o {args.output} is a file; give a folder for SAMSEG's outputs")
    check_writable_locations([os.path.join(args.output, "seg.mgz")])
    expected_space(args).check()
    runner = SamsegRunner(threads=args.threads, executable=args.samseg,
                          exclude_labels=parse_labels(args.labels) if args.labels else None, preset=args.preset)
    print(f"SAMSEG: {runner.samseg.origin}; threads: {runner.threads}; brain mask removes "
          f"{describe_labels(runner.filter.excluded_labels)}", file=sys.stderr)
    checkpoint("before-network")
    progress, close = progress_for(args, "SAMSEG")
    log = _log_writer(args)
    try:
        result = runner.segment(args.input, progress=progress, output_dir=args.output, overwrite=args.overwrite, log=log)
    finally:
        close()
    print(f"brain mask: {result.measures['BrainMask'] / 1000:.1f} cm3, intracranial volume (SAMSEG): "
          f"{result.measures.get('Intra-Cranial', float('nan')) / 1000:.1f} cm3", file=sys.stderr)
    from ..cli import print_written

    print_written(sorted(str(p) for p in Path(args.output).rglob("*") if p.is_file()))
    return 0


def _log_writer(args):
    if args.quiet:
        return lambda line: None
    if getattr(args, "progress", "bar") == "bar":
        from tqdm import tqdm

        return lambda line: tqdm.write(line, file=sys.stderr)
    return lambda line: print(line, file=sys.stderr, flush=True)


SAMSEG_TEMPLATE_BYTES = 16 * 1024 * 1024  # template_coregistered.mgz: the atlas template (a few MB), with room


def expected_space(args):
    """SAMSEG's files and ours, on the input grid, all staged in a work folder beside --o first:
    seg.mgz and seg_cleaned.mgz (int32), brain_mask.mgz (uint8), one float32 image for what SAMSEG
    adds (bias-corrected image), the coregistered template, stats, volumes.csv and the log."""
    import os

    from ..diskspace import SpacePlan, input_grid, voxel_count

    voxels = voxel_count(input_grid(args.input)[0])
    staging = os.path.join(os.path.dirname(os.path.abspath(args.output)), "work")
    space = SpacePlan()
    for name, itemsize, integer in (("seg.mgz", 4, True), ("seg_cleaned.mgz", 4, True), ("brain_mask.mgz", 1, True),
                                    ("mode00_bias_corrected.mgz", 4, False)):
        space.add_image(os.path.join(args.output, name), voxels, itemsize, integer, staged_in=staging)
    space.add(os.path.join(args.output, "template_coregistered.mgz"), SAMSEG_TEMPLATE_BYTES, staged_in=staging)
    for name in ("samseg.stats", "sbtiv.stats", "volumes.csv", "run_samseg.log"):
        space.add_text(os.path.join(args.output, name), staged_in=staging)
    return space
