"""``segsuite run-engine``: run any engine on files and write result bundles (used by Slicer).

The Slicer modules start this command in a child process and read the bundles back
(segsuite.result_io), so a result reaches the GUI with its geometry, label table, volumes and QC
intact, whatever the engine. One bundle folder per subject under ``--output-dir``; a
manifest (``<output-dir>/manifest.json``, and any ``--manifest`` path) lists the finished subjects
and the failures. An existing manifest is an existing output: it is replaced only with ``--overwrite``.
Exit status 0: every subject written; 1 with a manifest: the subjects it lists as results were
written and the others failed; 1 or more without one: nothing was written.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..engine import ENGINES, resolve_engine, split_options  # noqa: F401  (names scripts import from here)
from ..errors import InputError, OutputExistsError, SegSuiteError, UsageError
from ..image import image_suffix, strip_image_suffix
from ..progress import sub_progress

NAME = "run-engine"
HELP = "run an engine on images and write result bundles (for the Slicer modules and scripts)"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", required=True,
                        help=f"one of {', '.join(ENGINES)}, or package.module:Class")
    parser.add_argument("--input", "-i", action="append", required=True,
                        help="an image file or a folder of images; repeat for more")
    parser.add_argument("--output-dir", "-o", required=True, help="folder for one result bundle per subject")
    parser.add_argument("--options", default="{}", help="engine options as a JSON object, e.g. '{\"parc\": true}'")
    parser.add_argument("--model", default=None, help="explicit model file or folder (default: the model manager)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--posteriors", action="store_true", help="keep posteriors in the bundles")
    parser.add_argument("--stop-on-error", action="store_true", help="stop at the first failing subject")
    parser.add_argument("--overwrite", action="store_true", help="replace existing bundles (and the manifest)")
    parser.add_argument("--manifest", action="append", default=[],
                        help="also write the run's manifest here (repeatable; OUTPUT_DIR/manifest.json is always "
                             "written); its bundle folders are relative to --output-dir")


def collect_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and image_suffix(p))
            if not found:
                raise InputError(f"no images (.nii, .nii.gz, .mgz, .mgh) in the folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"input not found: {path}")
    return files


def subject_name(path: Path) -> str:
    return os.path.basename(strip_image_suffix(path))


def run(args) -> int:
    from ..cli import print_written, progress_for
    from ..faults import checkpoint
    from ..image import OutputTransaction, check_writable_locations, write_error
    from ..preflight import check_input_images
    from ..result_io import save_result_bundle

    try:
        options = json.loads(args.options)
    except ValueError as error:
        raise UsageError(f"--options is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise UsageError("--options must be a JSON object such as '{\"fast\": true}'")
    files = collect_inputs(args.input)
    subjects = [subject_name(path) for path in files]
    duplicates = sorted({name for name in subjects if subjects.count(name) > 1})
    if duplicates:
        raise InputError(f"several inputs share the subject name {duplicates[0]!r}; rename them or run them separately")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} is a file; give a folder for the result bundles")
    manifest_paths = [output_dir / "manifest.json"] + [Path(path) for path in args.manifest]
    if not args.overwrite:
        existing = [name for name in subjects if (output_dir / name).exists()]
        if existing:
            raise OutputExistsError(f"{output_dir / existing[0]} exists; use --overwrite or another --output-dir")
        for path in manifest_paths:  # e.g. an earlier run's (or a dataset's own) manifest.json in a chosen folder
            if path.exists():
                raise OutputExistsError(f"{path} exists; use --overwrite to replace it or another --output-dir")
    # the same pre-flight as the other commands: before the model is loaded or fetched
    check_writable_locations(manifest_paths)
    check_input_images([str(path) for path in files])
    expected_space(args.engine, files, output_dir, args.posteriors).check()
    checkpoint("before-network")

    progress, close = progress_for(args, "Segmenting")
    # one transaction: every bundle and the manifest appear together at the end, or nothing does
    transaction = OutputTransaction(overwrite=args.overwrite, inputs=[str(path) for path in files])
    try:
        engine_class = resolve_engine(args.engine)
        progress(0.0, f"Loading the {args.engine} model")
        init_options, segment_options = split_options(engine_class, options)
        engine = engine_class(model=args.model, device=args.device, threads=args.threads, **init_options)
        done, failures = [], []
        for index, (path, name) in enumerate(zip(files, subjects)):
            step = sub_progress(progress, index / len(files), (index + 1) / len(files))
            prefix = f"[{index + 1}/{len(files)}] {name}: " if len(files) > 1 else ""
            try:
                result = engine.segment(str(path), progress=lambda f, m: step(f, prefix + m), **segment_options)
                if not result.subject:
                    result.subject = name
                staging = transaction.temp_dir(output_dir / name)
                try:
                    save_result_bundle(result, staging, include_posteriors=args.posteriors)
                except OSError as error:
                    raise write_error(error, output_dir / name) from None
                done.append({"subject": name, "input": str(path), "bundle": name})
            except SegSuiteError as error:
                transaction.discard(output_dir / name)
                if args.stop_on_error or len(files) == 1:
                    raise
                failures.append({"subject": name, "input": str(path), "error": str(error)})
            step(1.0, prefix + "done")
        manifest = {"engine": args.engine, "options": options, "results": done, "failures": failures}
        for path in manifest_paths:
            transaction.write_text(path, json.dumps(manifest, indent=1), overwrite=args.overwrite)
        written = transaction.commit()
    except BaseException:
        transaction.rollback()
        raise
    finally:
        close()
    print_written(sorted(str(p) for folder in written for p in ([Path(folder)] if Path(folder).is_file()
                                                                 else Path(folder).rglob("*")) if p.is_file()))
    if failures:
        first = failures[0]
        raise SegSuiteError(f"{len(failures)} of {len(files)} subjects failed; first: {first['subject']}: {first['error']}")
    return 0


# posterior channels of the built-in engines (their label tables); others are estimated without posteriors
POSTERIOR_CHANNELS = {"synthseg": 33, "sclimbic": 14, "scepi": 2}


def expected_space(engine: str, files, output_dir: Path, posteriors: bool):
    """Each bundle: int32 labels, one float32 image and (with --posteriors) float32 posteriors on the
    larger of the input grid and its 1 mm cover (SynthSeg works at 1 mm), and result.json."""
    from ..diskspace import SpacePlan, input_grid, one_mm_voxels, text_bytes, voxel_count

    space = SpacePlan()
    for path in files:
        shape, zooms = input_grid(path)
        voxels = max(voxel_count(shape), one_mm_voxels(shape, zooms))
        bundle = output_dir / subject_name(path)
        space.add_image(bundle / "labels.nii.gz", voxels, 4)
        space.add_image(bundle / "image-0.nii.gz", voxels, 4, integer=False)
        if posteriors and engine in POSTERIOR_CHANNELS:
            space.add_image(bundle / "posteriors.nii.gz", voxels, 4, integer=False, channels=POSTERIOR_CHANNELS[engine])
        space.add(bundle / "result.json", 4 * text_bytes())
    space.add_text(output_dir / "manifest.json", rows=len(files))
    return space
