"""segsuite scepi: spinal cord segmentation on EPI (SCT sct_deepseg sc_epi)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import InputError, SegSuiteError, UsageError

NAME = "scepi"
HELP = "spinal cord segmentation on EPI/BOLD volumes (SCT's sc_epi nnU-Net model)"
DESCRIPTION = """Spinal cord segmentation on gradient-echo EPI (BOLD) volumes with the EPISeg nnU-Net v2 model
of the Spinal Cord Toolbox (sct_deepseg sc_epi), same pre- and postprocessing.

Outputs: <input>_seg.nii.gz beside each input (or in the -o folder; with one input -o may be the file
name). A 4D series must be averaged over time first, or pass --mean.

examples:
  segsuite scepi -i sub-01_bold_mean.nii.gz
  segsuite scepi -i a.nii.gz b.nii.gz -o segs/ -largest -fill-holes -remove-small 5mm3 -qc qc/
  segsuite scepi -i sub-01_bold.nii.gz --mean --model model-fmri-segmentation-v0.2_nnUNetTrainer.zip
"""


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="FILE", help="EPI volume(s) (NIfTI or MGZ)")
    parser.add_argument("-o", "--output", metavar="PATH",
                        help="output file (one input) or folder (ends with / or exists; needed for several inputs); "
                             "default: beside each input")
    parser.add_argument("-thr", "--thr", type=float, default=None, metavar="T",
                        help="binarize the soft output at T (a probability in [0, 1)); default: none (nnU-Net's argmax)")
    parser.add_argument("-largest", "--largest", type=int, nargs="?", const=1, default=0, choices=(0, 1),
                        help="keep only the largest connected object")
    parser.add_argument("-fill-holes", "--fill-holes", type=int, nargs="?", const=1, default=0, choices=(0, 1),
                        help="fill holes in the segmentation")
    parser.add_argument("-remove-small", "--remove-small", nargs="+", default=None, metavar="SIZE",
                        help="remove objects smaller than SIZE: e.g. 10mm3 or 5vox; one value, or one per class")
    parser.add_argument("-qc", "--qc", metavar="DIR", help="add a QC report row (axial mosaic) per input to DIR/index.html")
    parser.add_argument("-qc-dataset", "--qc-dataset", dest="qc_dataset", metavar="NAME",
                        help="the dataset named in the QC report's rows (as sct_deepseg -qc-dataset); needs -qc")
    parser.add_argument("-qc-subject", "--qc-subject", dest="qc_subject", metavar="NAME",
                        help="the subject named in the QC report's rows (as sct_deepseg -qc-subject); needs -qc")
    parser.add_argument("-v", type=int, choices=(0, 1, 2), default=1, dest="sct_verbosity", metavar="{0,1,2}",
                        help="as SCT's -v: 0 errors and warnings only (no progress, no 'wrote' lines), "
                             "1 normal (default), 2 debug (tracebacks, as --verbose)")
    parser.add_argument("--mean", action="store_true", help="average a 4D series over time before segmenting")
    parser.add_argument("--model", metavar="DIR_OR_ZIP",
                        help="an nnU-Net model folder or the release zip, instead of the managed sc-epi model")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    parser.add_argument("-test-time-aug", "--test-time-aug", action="store_true",
                        help="mirroring test-time augmentation (slower; off by default as in SCT)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _check_input(path: str, mean: bool) -> None:
    """Fail before any work on an input that cannot be used (missing, unreadable, 2D, 4D without --mean)."""
    import nibabel as nib
    import numpy as np

    if not os.path.exists(path):
        raise InputError(f"input not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"expected an image file but {path} is a folder")
    try:
        shape = nib.load(path).shape
    except Exception as error:
        raise InputError(f"cannot read {path} as an image ({type(error).__name__}: {error}); "
                         "give a NIfTI (.nii, .nii.gz) or FreeSurfer (.mgz, .mgh) file") from error
    spatial = [s for s in shape[:3] if s > 1]
    extra = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if len(spatial) < 3:
        raise InputError(f"{path} has shape {tuple(shape)}: it is not a 3D volume; sc_epi needs a 3D EPI volume")
    if extra > 1 and not mean:
        raise InputError(f"{path} is a 4D series ({extra} volumes); sc_epi segments one 3D volume: average it over "
                         "time first (sct_maths -i IN -mean t -o OUT, or fslmaths IN -Tmean OUT) or pass --mean")


def output_paths(inputs: list[str], output: str | None, suffixes: list[str]) -> list[list[str]]:
    """Output file paths per input, SCT style: <input stem><suffix>.nii.gz."""
    from ..image import image_suffix, strip_image_suffix

    folder_mode = output is not None and (output.endswith(("/", os.sep)) or os.path.isdir(output) or len(inputs) > 1)
    if output is not None and len(inputs) > 1 and os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"-o {output} is a file but there are {len(inputs)} inputs: give a folder")
    paths = []
    for path in inputs:
        stem = os.path.basename(strip_image_suffix(path))
        if output is None:
            base = os.path.join(os.path.dirname(os.path.abspath(path)), stem)
            paths.append([base + suffix + ".nii.gz" for suffix in suffixes])
        elif folder_mode:
            paths.append([os.path.join(os.path.abspath(output), stem + suffix + ".nii.gz") for suffix in suffixes])
        else:
            extension = image_suffix(output) or ".nii.gz"
            base = strip_image_suffix(output) if image_suffix(output) else output
            if len(suffixes) == 1:
                paths.append([os.path.abspath(base + extension)])
            else:  # several classes: <output>_<label><ext>
                paths.append([os.path.abspath(base + suffix[: -len("_seg")] + extension) for suffix in suffixes])
    return paths


def _suffixes(model_folder) -> list[str]:
    labels = json.loads((Path(model_folder.path) / "dataset.json").read_text(encoding="utf-8")).get("labels", {})
    names = [name for name, value in labels.items() if name != "background" and value not in (0, [0])]
    return ["_seg"] if sorted(names) == ["sc"] else [f"_{name}_seg" for name in names]


def run(args) -> int:
    from ..cli import print_written, progress_for
    from ..image import OutputTransaction, check_outputs
    from ..progress import sub_progress
    from ..scepi.modelfolder import resolve_model
    from ..scepi.postprocess import parse_remove_small

    if args.thr is not None and not (0.0 <= args.thr < 1.0):
        raise UsageError(f"-thr must be in [0, 1), got {args.thr}")
    for flag, value in (("-qc-dataset", args.qc_dataset), ("-qc-subject", args.qc_subject)):
        if value is not None and not args.qc:
            raise UsageError(f"{flag} names the {flag[4:]} in the QC report: give -qc DIR as well")
    from ..scepi.engine import require_nnunet

    require_nnunet()  # before a model download that nnU-Net-less installs could not use
    if args.sct_verbosity == 2:
        args.verbose = True
    quiet = args.sct_verbosity == 0
    if quiet:
        args.progress = "none"
    remove_small = parse_remove_small(args.remove_small)
    inputs = list(args.input)
    from ..faults import checkpoint
    from ..image import check_writable_locations
    from ..preflight import check_input_image

    for path in inputs:
        _check_input(path, args.mean)
        check_input_image(path)
    # the file names depend on the model's classes; the folders can be checked now
    check_writable_locations(output_paths(inputs, args.output, ["_seg"])[0] + ([os.path.join(args.qc, "index.html")] if args.qc else []))
    expected_space(args, inputs, output_paths(inputs, args.output, ["_seg"])).check()
    checkpoint("before-network")

    progress, close = progress_for(args, "sc_epi")
    try:
        model_folder = resolve_model(args.model, progress=sub_progress(progress, 0.0, 0.05))
        per_input = output_paths(inputs, args.output, _suffixes(model_folder))
        check_outputs([p for paths in per_input for p in paths], args.overwrite, inputs)
        expected_space(args, inputs, per_input).check()  # with the model's classes, before the network

        from ..scepi.engine import ScEpiEngine

        engine = ScEpiEngine(model_folder, device=args.device, threads=args.threads, mean=args.mean,
                             threshold=args.thr, keep_largest=bool(args.largest), fill_holes=bool(args.fill_holes),
                             remove_small=remove_small, test_time_augmentation=args.test_time_aug,
                             progress=sub_progress(progress, 0.05, 0.1))
        outputs = OutputTransaction(overwrite=args.overwrite, inputs=inputs)
        qc_files = OutputTransaction(overwrite=True, inputs=inputs)  # the QC report accumulates, like SCT's
        qc_entries = None
        failures = []
        try:
            for index, (path, paths) in enumerate(zip(inputs, per_input)):
                share = 0.9 / len(inputs)
                report = sub_progress(progress, 0.1 + index * share, 0.1 + (index + 1) * share)
                try:  # a failed input is reported and the others' outputs kept (several inputs)
                    volume = engine.load_input(path)
                    result = engine.segment(volume, progress=report)
                    arrays = engine.output_arrays(result)
                    for (suffix, array), out_path in zip(arrays, paths):
                        outputs.save_image(out_path, array, result.affine)
                except SegSuiteError as error:
                    if len(inputs) == 1:
                        raise
                    for out_path in paths:
                        outputs.discard(out_path)
                    failures.append(f"{path}: {error}")
                    print(f"segsuite scepi: {path}: {error}", file=sys.stderr)
                    continue
                if args.qc:
                    from ..scepi.qc import add_qc_entry

                    cord = engine.label_table.get(1)
                    qc_entries = add_qc_entry(qc_files, args.qc, volume.data, result.labels, result.affine, path,
                                              paths, cord.color if cord else (255, 0, 0), result.volumes, qc_entries,
                                              dataset=args.qc_dataset, subject=args.qc_subject)
            if args.qc and qc_entries is not None:
                from ..scepi.qc import write_qc_index

                write_qc_index(qc_files, args.qc, qc_entries)
            written = outputs.commit()
            written += qc_files.commit()
        except BaseException:
            outputs.rollback()
            qc_files.rollback()
            raise
    finally:
        close()
    if not quiet:
        print_written(written)
    if failures:
        raise SegSuiteError(f"{len(failures)} of {len(inputs)} inputs failed: " + "; ".join(failures))
    return 0


def expected_space(args, inputs, per_input):
    """One uint8 mask per class on the input grid; with -qc two pictures per input and the index."""
    from ..diskspace import PICTURE_BYTES, SpacePlan, input_grid, voxel_count

    space = SpacePlan()
    for path, paths in zip(inputs, per_input):
        voxels = voxel_count(input_grid(path)[0])
        for out_path in paths:
            space.add_image(out_path, voxels, 1)
        if args.qc:
            stem = os.path.basename(paths[0])
            space.add(os.path.join(args.qc, stem + "_image.png"), PICTURE_BYTES)
            space.add(os.path.join(args.qc, stem + "_overlay.png"), PICTURE_BYTES)
    if args.qc:
        space.add_text(os.path.join(args.qc, "index.html"), rows=len(inputs))
    return space
