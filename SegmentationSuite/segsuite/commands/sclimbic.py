"""`segsuite sclimbic`: FreeSurfer mri_sclimbic_seg's command line on the PyTorch engine."""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from ..errors import InputError, UsageError

NAME = "sclimbic"
HELP = "segment subcortical limbic structures (ScLimbic, mri_sclimbic_seg)"
DESCRIPTION = """Segment subcortical limbic structures (nucleus accumbens, hypothalamus, fornix, mammillary
bodies, basal forebrain, septal nuclei, anterior commissure) in a 1 mm T1-weighted image.

  segsuite sclimbic --i t1.nii.gz --o t1.sclimbic.nii.gz --write_volumes --write_qa_stats
  segsuite sclimbic --i inputs/ --o outputs/ --write_volumes      (every image in the folder)
  segsuite sclimbic --s subj1 subj2 --sd $SUBJECTS_DIR             (recon-all subjects: mri/nu.mgz)

Outputs and CSV columns follow mri_sclimbic_seg. Cite: Greve DN et al. (2021) A deep learning
toolbox for automatic segmentation of subcortical limbic structures from MRI images.
NeuroImage 244:118610.
"""

IMAGE_EXTENSIONS = (".mgh", ".mgz", ".nii", ".nii.gz")


def add_arguments(parser) -> None:
    io = parser.add_argument_group("image mode")
    io.add_argument("-i", "--i", dest="input", help="T1-weighted image, or a folder of images (.mgh .mgz .nii .nii.gz)")
    io.add_argument("-o", "--o", dest="output", help="output segmentation file, or folder (same kind as --i)")
    subjects = parser.add_argument_group("subject mode")
    subjects.add_argument("-s", "--s", dest="subjects", nargs="*",
                          help="recon-all subjects to segment (mri/nu.mgz); no names: every subject in --sd")
    subjects.add_argument("--sd", help="subjects folder (default: $SUBJECTS_DIR)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--write_posteriors", action="store_true", help="save the label posteriors")
    out.add_argument("--write_volumes", action="store_true", help="save the volume stats (always in subject mode)")
    out.add_argument("--write_qa_stats", action="store_true",
                     help="save the z-score and confidence CSVs (zqa_scores_all.csv, confidences_all.csv)")
    out.add_argument("--etiv", action="store_true", help="include eTIV in the volume stats (implied by --tal)")
    out.add_argument("--tal", help="talairach transform (.xfm or .lta) for eTIV: a file, a suffix added to each input's "
                                    "name in folder mode, or a path inside each subject in subject mode")
    out.add_argument("--etiv-template", dest="etiv_template",
                     help="MNI template T1 for eTIV by registration when no talairach transform exists "
                          "(default: the 'mni-icbm152-2009a' entry of the model manager)")
    out.add_argument("--exclude", type=int, nargs="+", default=[], help="label ids to leave out of the stats")
    out.add_argument("--keep_ac", action="store_true", help="keep the anterior commissure (853) in the stats")
    out.add_argument("--vox-count-volumes", dest="vox_count_volumes", action="store_true",
                     help="volumes from voxel counts instead of summed posteriors")
    out.add_argument("--output-base", dest="output_base", default="sclimbic", help="name part of the outputs (default sclimbic)")
    out.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pre = parser.add_argument_group("preprocessing and model")
    pre.add_argument("--conform", action="store_true", help="accept non-1 mm input: reslice to 1 mm, results back at the input resolution")
    pre.add_argument("--percentile", type=float, nargs="?", const=99.9, default=None,
                     help="normalise by this percentile of the nonzero voxels instead of the maximum (no value: 99.9)")
    pre.add_argument("--7T", dest="seven_tesla", action="store_true", help="7T input: 99.9 percentile normalisation")
    pre.add_argument("--fov", type=int, default=160, help="conformed field of view in voxels (default 160)")
    pre.add_argument("--model", help="ScLimbic weights (.h5 file or folder); default: the installed 'sclimbic' model")
    pre.add_argument("--ctab", help="colour table (default: sclimbic.ctab beside the model)")
    pre.add_argument("--population-stats", dest="population_stats",
                     help="population volume stats for z-scores (default: sclimbic.volstats.csv beside the model)")
    pre.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    pre.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    pre.add_argument("--cuda-device", dest="cuda_device", help="GPU number (same as --device cuda:N)")
    pre.add_argument("--debug", action="store_true",
                     help="print each step with its elapsed time, full tracebacks and the peak virtual memory (as "
                          "mri_sclimbic_seg --debug)")
    pre.add_argument("--vmp", action="store_true", help="print the peak virtual memory at the end (mri_sclimbic_seg --vmp)")


@dataclass
class Job:
    input: str
    case: str
    segmentation: str
    posteriors: Optional[str] = None
    stats: Optional[str] = None
    etiv: object = None  # None, a transform path or "register"
    notes: list = field(default_factory=list)


def _split_extension(path: str) -> tuple[str, str]:
    for extension in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if path.endswith(extension):
            return path[: -len(extension)], extension
    raise UsageError(f"{path} is not an image file name: use .mgh, .mgz, .nii or .nii.gz")


def _subject_transform(subject_dir: str, tal: Optional[str], register: bool):
    """The subject's talairach transform; without one, registration if eTIV was asked for."""
    if tal:
        return os.path.join(subject_dir, tal)
    for name in ("talairach.xfm.lta", "talairach.xfm"):
        candidate = os.path.join(subject_dir, "mri", "transforms", name)
        if os.path.isfile(candidate):
            return candidate
    return "register" if register else None


def plan_subject_jobs(args) -> tuple[list[Job], str]:
    subjects_dir = args.sd or os.environ.get("SUBJECTS_DIR")
    if not subjects_dir:
        raise UsageError("subject mode needs the subjects folder: give --sd or set SUBJECTS_DIR")
    if not os.path.isdir(subjects_dir):
        raise InputError(f"subjects folder not found: {subjects_dir}")
    subjects = list(args.subjects)
    if not subjects:
        subjects = sorted(os.path.basename(os.path.dirname(os.path.dirname(p)))
                          for p in glob.glob(os.path.join(glob.escape(subjects_dir), "*", "mri", "nu.mgz")))
        if not subjects:
            raise InputError(f"{subjects_dir} holds no recon-all subjects (no */mri/nu.mgz)")
    base = args.output_base
    jobs = []
    for subject in subjects:
        subject_dir = os.path.join(subjects_dir, subject)
        if not os.path.isdir(subject_dir):
            raise InputError(f"subject {subject} not found in {subjects_dir}")
        nu = os.path.join(subject_dir, "mri", "nu.mgz")
        if not os.path.isfile(nu):
            raise InputError(f"{nu} not found: subject mode reads each subject's mri/nu.mgz from recon-all")
        jobs.append(Job(
            input=nu, case=subject,
            segmentation=os.path.join(subject_dir, "mri", f"{base}.mgz"),
            posteriors=os.path.join(subject_dir, "mri", f"{base}.posteriors.mgz") if args.write_posteriors else None,
            stats=os.path.join(subject_dir, "stats", f"{base}.stats"),
            etiv=_subject_transform(subject_dir, args.tal, bool(getattr(args, "etiv", False))),
        ))
    return jobs, os.path.join(subjects_dir, f"{base}_")


def plan_image_jobs(args, want_etiv: bool) -> tuple[list[Job], str, bool]:
    source = args.input
    if not os.path.exists(source):
        raise InputError(f"input not found: {source}")
    base = args.output_base
    jobs = []
    if os.path.isdir(source):
        inputs = []
        for extension in IMAGE_EXTENSIONS:
            inputs += sorted(glob.glob(os.path.join(glob.escape(source), "*" + extension)))
        if not inputs:
            raise InputError(f"{source} holds no images (.mgh, .mgz, .nii, .nii.gz)")
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise UsageError(f"--i is a folder, so --o must be a folder too, but {args.output} is a file")
        for path in inputs:
            name, extension = _split_extension(os.path.basename(path))
            stem = os.path.join(args.output, f"{name}.{base}")
            etiv = None
            if want_etiv:
                etiv = os.path.join(source, name + args.tal) if args.tal else "register"
            jobs.append(Job(
                input=path, case=name, segmentation=stem + extension,
                posteriors=f"{stem}.posteriors{extension}" if args.write_posteriors else None,
                stats=f"{stem}.stats" if args.write_volumes else None, etiv=etiv,
            ))
        return jobs, os.path.join(args.output, f"{base}_"), True
    _split_extension(source)
    if os.path.isdir(args.output):
        raise UsageError(f"--i is a file, so --o must be a file name, but {args.output} is a folder")
    stem, extension = _split_extension(args.output)
    etiv = (args.tal or "register") if want_etiv else None
    jobs.append(Job(
        input=source, case=stem, segmentation=args.output,
        posteriors=f"{stem}.posteriors{extension}" if args.write_posteriors else None,
        stats=f"{stem}.stats" if args.write_volumes else None, etiv=etiv,
    ))
    return jobs, f"{stem}.", False


def run(args) -> int:
    from ..cli import print_written, progress_for
    from ..errors import SegSuiteError
    from ..image import OutputTransaction, check_outputs
    from ..progress import sub_progress
    from ..sclimbic import ScLimbicEngine
    from ..sclimbic.stats import StatsRow, csv_names, format_case_csv, format_stats

    if args.input is None and args.subjects is None:
        raise UsageError("give the image(s) to segment with --i (and --o), or subjects with --s")
    if args.input is not None and args.subjects is not None:
        raise UsageError("--i and --s cannot be combined: choose image mode or subject mode")
    if args.input is not None and args.output is None:
        raise UsageError("--o is required with --i")
    store_etiv = bool(args.etiv or args.tal)
    if args.subjects is not None:
        jobs, prefix = plan_subject_jobs(args)
        folder_mode = len(jobs) > 1
    else:
        jobs, prefix, folder_mode = plan_image_jobs(args, store_etiv)
    summary = csv_names(prefix)
    summary_paths = []
    if folder_mode:
        summary_paths.append(summary["volumes"])
    if args.write_qa_stats:
        summary_paths += [summary["zscores"], summary["confidences"]]
    outputs = [p for job in jobs for p in (job.segmentation, job.posteriors, job.stats) if p] + summary_paths
    inputs = [job.input for job in jobs]
    check_outputs(outputs, args.overwrite, inputs)
    from ..faults import checkpoint
    from ..preflight import check_input_images

    check_input_images(inputs)
    expected_space(args, jobs, summary_paths).check()
    checkpoint("before-network")

    device = f"cuda:{args.cuda_device}" if args.cuda_device is not None else args.device
    progress, close = progress_for(args, "ScLimbic")
    if args.debug:
        args.verbose = True
        progress = _with_step_times(progress)
    # one transaction: the good images' files and the summary CSVs together at the end; a failed
    # image's files are dropped and it is reported (several images), as segsuite synthseg does
    transaction = OutputTransaction(overwrite=args.overwrite, inputs=inputs)
    failures = []
    try:
        engine = ScLimbicEngine(
            model=args.model, ctab=args.ctab, population_stats=args.population_stats, device=device,
            threads=args.threads, conform=args.conform, percentile=args.percentile, seven_tesla=args.seven_tesla,
            keep_ac=args.keep_ac, exclude=args.exclude, vox_count_volumes=args.vox_count_volumes,
            posteriors=args.write_posteriors, template=args.etiv_template, fov=args.fov,
        )
        names = [engine.label_table.name(v) for v in engine.stats_labels]
        volume_rows, z_rows, confidence_rows = {}, {}, {}
        z_columns = [n for n in names if engine.population and _has_population(n, engine.population)]

        def failed(job, error):
            if len(jobs) == 1:
                raise error
            for path in (job.segmentation, job.posteriors, job.stats):
                if path:
                    transaction.discard(path)
            failures.append(f"{job.input}: {error}")
            print(f"segsuite sclimbic: {job.input}: {error}", file=sys.stderr)

        runnable = []
        for job in jobs:  # the header-level refusals (e.g. not 1 mm) of every image before any network
            try:
                engine.check_input(job.input)
                runnable.append(job)
            except SegSuiteError as error:
                failed(job, error)
        for number, job in enumerate(runnable):
            step = sub_progress(progress, number / len(runnable), (number + 1) / len(runnable))
            try:
                result = engine.segment(job.input, etiv=job.etiv,
                                        progress=lambda f, m, n=number: step(f, f"{n + 1}/{len(runnable)}: {m}"))
                transaction.save_image(job.segmentation, result.labels, result.affine)
                if job.posteriors:
                    transaction.save_image(job.posteriors, result.posteriors, result.posteriors_affine)
                etiv = result.measures.get("eTIV")
                if job.stats:
                    rows = [StatsRow(engine.label_table.by_name(n).value, result.tables["voxel_counts"][n],
                                     result.volumes[n], n) for n in names]
                    transaction.write_text(job.stats, format_stats(rows, etiv))
            except SegSuiteError as error:
                failed(job, error)
                continue
            volume_rows[job.case] = [result.volumes[n] for n in names] + ([etiv] if store_etiv else [])
            z_rows[job.case] = [result.qc.get(n) for n in z_columns]
            confidence_rows[job.case] = [result.tables["confidences"][n] for n in names]
        if volume_rows:
            if folder_mode:
                transaction.write_text(summary["volumes"], format_case_csv(names + (["eTIV"] if store_etiv else []), volume_rows))
            if args.write_qa_stats:
                transaction.write_text(summary["zscores"], format_case_csv(z_columns, z_rows))
                transaction.write_text(summary["confidences"], format_case_csv(names, confidence_rows))
        written = transaction.commit()
    except BaseException:
        transaction.rollback()
        raise
    finally:
        close()
    print_written(written)
    if args.debug or args.vmp:
        from ..memory import peak_virtual_memory_kb

        peak = peak_virtual_memory_kb()
        print(f"#@# segsuite sclimbic vmpeak {peak if peak is not None else 'unknown (no /proc on this system)'}")
    if failures:
        raise SegSuiteError(f"{len(failures)} of {len(jobs)} images failed: " + "; ".join(failures))
    return 0


def _with_step_times(progress):
    """--debug: each new step on stderr with the seconds since the start (mri_sclimbic_seg's debug timings)."""
    import time

    start, last = time.perf_counter(), {"message": None}

    def report(fraction: float, message: str) -> None:
        if message != last["message"]:
            last["message"] = message
            print(f"segsuite sclimbic: debug: {time.perf_counter() - start:8.2f} s  {message}", file=sys.stderr, flush=True)
        progress(fraction, message)

    return report


def _has_population(name, population) -> bool:
    from ..sclimbic.names import match_name

    return match_name(name, population) is not None


RELEASED_MODEL_CLASSES = 14  # the released model's colour table: background and 13 structures


def expected_space(args, jobs, summary_paths):
    """Labels and posteriors cover at most the conformed --fov^3 box (in input voxels with --conform)."""
    from ..diskspace import SpacePlan, input_grid

    space = SpacePlan()
    for job in jobs:
        _, zooms = input_grid(job.input)
        voxels = args.fov ** 3
        if args.conform:
            voxels = int(voxels * max(1.0, 1.0 / (zooms[0] * zooms[1] * zooms[2])))
        space.add_image(job.segmentation, voxels, 4)
        if job.posteriors:
            space.add_image(job.posteriors, voxels, 4, integer=False, channels=RELEASED_MODEL_CLASSES)
        if job.stats:
            space.add_text(job.stats)
    for path in summary_paths:
        space.add_text(path, rows=len(jobs))
    return space
