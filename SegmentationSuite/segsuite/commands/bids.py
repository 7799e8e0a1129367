"""segsuite bids: a BIDS App (and manifest mode) on Dask distributed."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

NAME = "bids"
HELP = "BIDS App: segment a BIDS dataset (or a CSV/TSV manifest) on Dask, writing BIDS derivatives"
DESCRIPTION = """segsuite bids BIDS_DIR OUTPUT_DIR {participant,group} [options]

participant: segment every T1w image (one Dask task per subject/session); finished subjects are
skipped, failures go to OUTPUT_DIR/logs/failed.tsv and the exit status is 1 if any failed.
group: gather the per-subject morph/qc tables into group_seg-<seg>_<table>.tsv.
--models: synthseg and sclimbic on the T1w, scepi on the mean of each func/*_bold series,
samseg-filter on existing SAMSEG outputs (--derivatives samseg=PATH); a folder without an
engine's input is skipped for it (logs/skipped.tsv).
BIDS_DIR may be a CSV/TSV manifest (participant_id, optional session_id, path) for non-BIDS cohorts
such as UK Biobank (<eid>/T1/T1.nii.gz). See docs/cohort.md.
"""


def add_arguments(parser) -> None:
    parser.add_argument("bids_dir", help="BIDS dataset, or a .csv/.tsv manifest")
    parser.add_argument("output_dir", help="derivatives dataset to write (e.g. BIDS_DIR/derivatives/segsuite)")
    parser.add_argument("analysis_level", choices=("participant", "group"))
    parser.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                        help="participants (with or without sub-), or files listing them")
    parser.add_argument("--session-label", nargs="+", metavar="LABEL", help="sessions (with or without ses-)")
    parser.add_argument("--bids-filter-file", metavar="JSON", help='select the T1w images, e.g. {"t1w": {"acquisition": "mprage"}}')
    parser.add_argument("-w", "--work-dir", metavar="DIR", help="index cache and run logs (default OUTPUT_DIR/work)")
    parser.add_argument("--skip-bids-validation", action="store_true", help="do not validate the input dataset")
    parser.add_argument("--nprocs", type=int, default=1, help="worker processes of the local cluster (default 1)")
    parser.add_argument("--omp-nthreads", type=int, default=None, help="torch threads per worker (default: cores / nprocs)")
    parser.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failing subject")
    parser.add_argument("--models", nargs="+", default=["synthseg"],
                        choices=("synthseg", "sclimbic", "scepi", "samseg-filter"),
                        help="engines to run per subject/session (default synthseg): synthseg and sclimbic on the T1w, "
                             "scepi on the mean of each func/*_bold series, samseg-filter on --derivatives samseg=PATH")
    parser.add_argument("--parc", action="store_true", help="SynthSeg: cortical parcellation (adds seg-synthsegparc)")
    parser.add_argument("--robust", action="store_true", help="SynthSeg-robust")
    parser.add_argument("--fast", action="store_true", help="SynthSeg: fast post-processing")
    parser.add_argument("--qc", action="store_true", help="SynthSeg: QC scores (_seg-synthseg_qc.tsv)")
    parser.add_argument("--crop", nargs="+", type=int, metavar="N", help="SynthSeg: analyse a centred N^3 patch")
    parser.add_argument("--posteriors", action="store_true", help="write _probseg posteriors")
    parser.add_argument("--synthseg-model", metavar="PATH", help="SynthSeg weights file or folder (default: model manager)")
    parser.add_argument("--sclimbic-model", metavar="PATH", help="ScLimbic model file (default: model manager)")
    parser.add_argument("--scepi-model", metavar="DIR_OR_ZIP", help="sc_epi nnU-Net model folder or release zip "
                        "(as segsuite scepi --model; default: model manager)")
    parser.add_argument("--scepi-thr", type=float, default=None, metavar="T", help="sc_epi: binarize the soft output at T")
    parser.add_argument("--scepi-largest", action="store_true", help="sc_epi: keep the largest connected object")
    parser.add_argument("--scepi-fill-holes", action="store_true", help="sc_epi: fill holes")
    parser.add_argument("--scepi-remove-small", nargs="+", metavar="SIZE", help="sc_epi: remove objects smaller than SIZE (10mm3, 5vox)")
    parser.add_argument("--derivatives", nargs="+", metavar="NAME=PATH", default=[],
                        help="existing derivatives the engines read (fMRIPrep's convention): samseg=PATH, the SAMSEG "
                             "outputs as PATH/sub-X[/ses-Y]/seg.mgz (or .../anat/seg.mgz), for --models samseg-filter")
    parser.add_argument("--samseg-preset", choices=("fmriprep", "samseg2recon", "none"), default=None,
                        help="samseg-filter: labels to remove (default fmriprep: 24 165 258 259)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (GPU workers declare a GPU resource)")
    parser.add_argument("--cluster", choices=("slurm", "sge", "pbs"), help="run the workers as batch jobs (dask-jobqueue)")
    parser.add_argument("--cluster-config", metavar="YAML", help="dask-jobqueue settings: queue, walltime, memory, jobs, gpus, ...")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask scheduler (tcp://host:8786)")
    parser.add_argument("--retries", type=int, default=2, help="times a task is retried when its worker dies (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="redo every subject, even those already done")
    parser.add_argument("--morphometry", action="store_true",
                        help="SynthSeg: GM/WM/CSF label-*_probseg maps, the 3-class _dseg, desc-brain_mask and the "
                             "image-quality/TIV table per subject; the group level adds the TIV-corrected tables, "
                             "QC flags and ranking and group_qc_report.html (docs/morphometry.md)")
    parser.add_argument("--preprocess", action="store_true",
                        help="SynthSeg: N4, registration to MNI152 and modulated/smoothed GM/WM/CSF maps per subject "
                             "(segsuite preprocess's outputs); the group level adds the cohort mask, the mean "
                             "modulated GM map and the registration QC table (docs/preprocess.md)")
    parser.add_argument("--preprocess-template", choices=("MNI152NLin2009cAsym", "MNI152NLin2009aSym"),
                        help="--preprocess: template space (default as segsuite preprocess)")
    parser.add_argument("--preprocess-resolution", type=float, choices=(1.0, 2.0), default=1.0,
                        help="--preprocess: template-space grid in mm (default 1)")
    parser.add_argument("--preprocess-fwhm", type=float, default=8.0,
                        help="--preprocess: FWHM in mm of the smoothed modulated maps (default 8; 0: none)")


def model_plan(args) -> dict:
    plan = {}
    if getattr(args, "morphometry", False) and "synthseg" not in args.models:
        from ..errors import UsageError

        raise UsageError("--morphometry needs --models synthseg (the tissue maps are summed from its posteriors)")
    preprocess = getattr(args, "preprocess", False)
    if preprocess and "synthseg" not in args.models:
        from ..errors import UsageError

        raise UsageError("--preprocess needs --models synthseg (its posteriors drive the masks and tissue maps)")
    if "synthseg" in args.models:
        plan["synthseg"] = {"model": args.synthseg_model, "options": {
            "parc": args.parc, "robust": args.robust, "fast": args.fast, "qc": args.qc,
            "crop": args.crop, "posteriors": args.posteriors or getattr(args, "morphometry", False) or preprocess}}
        if getattr(args, "morphometry", False):  # the tissue maps are summed from the posteriors
            plan["synthseg"]["morphometry"] = True
        if preprocess:
            plan["synthseg"]["preprocess"] = preprocess_settings(args)
    if "sclimbic" in args.models:
        plan["sclimbic"] = {"model": args.sclimbic_model, "options": {"posteriors": args.posteriors}}
    plan.update(other_input_plan(args))
    return plan


def preprocess_settings(args) -> dict:
    """--preprocess's settings, the template resolved now (a missing one stops the run before any work)."""
    from ..errors import UsageError
    from ..preprocess.templates import template_files

    if not 0 <= args.preprocess_fwhm <= 50:
        raise UsageError(f"--preprocess-fwhm must be from 0 to 50 mm, got {args.preprocess_fwhm:g}")
    space, _ = template_files(args.preprocess_template)
    return {"template": space, "resolution": args.preprocess_resolution, "fwhm": args.preprocess_fwhm}


def other_input_plan(args) -> dict:
    """The plan of the models whose input is not the T1w (segsuite.cohort.engines_inputs)."""
    from ..cohort.engines_inputs import SAMSEG_LINK, parse_derivatives
    from ..errors import UsageError

    plan = {}
    derivatives = parse_derivatives(getattr(args, "derivatives", None))
    if "scepi" in args.models:
        plan["scepi"] = {"model": args.scepi_model, "options": {
            "mean": True, "threshold": args.scepi_thr, "keep_largest": args.scepi_largest,
            "fill_holes": args.scepi_fill_holes, "remove_small": args.scepi_remove_small}}
    if "samseg-filter" in args.models:
        if SAMSEG_LINK not in derivatives:
            raise UsageError("--models samseg-filter reads existing SAMSEG outputs: give --derivatives samseg=PATH")
        plan["samseg-filter"] = {"model": None, "options": {"preset": args.samseg_preset},
                                 "inputs": {"derivatives": derivatives[SAMSEG_LINK]}}
    return plan


def validate_input(bids_dir: str) -> None:
    """The real BIDS validator (bids-validator-deno) on the input; errors stop the run."""
    import shutil
    import subprocess

    from ..errors import InputError

    validator = shutil.which("bids-validator-deno") or os.path.join(os.path.dirname(sys.executable), "bids-validator-deno")
    if not os.path.exists(validator):
        raise InputError("bids-validator-deno is not installed (pip install bids-validator-deno); "
                         "or pass --skip-bids-validation")
    done = subprocess.run([validator, bids_dir, "--ignoreWarnings", "--ignoreNiftiHeaders"], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        raise InputError(f"{bids_dir} is not valid BIDS ({' | '.join(lines[-4:])[:400]}); "
                         "fix it or pass --skip-bids-validation")


def run(args) -> int:
    if args.analysis_level == "participant":
        from ..cohort.index import is_manifest

        require_cohort_packages(manifest=is_manifest(Path(args.bids_dir)))
    from ..cohort import group as group_level
    from ..cohort.derivatives import write_dataset_files
    from ..cohort.index import (index_bids, is_manifest, read_filter_file, read_labels, read_manifest, select_t1w)
    from ..cohort.runner import ClusterConfig, ClusterStart, run_cohort
    from ..errors import InputError, UsageError

    output_dir = Path(args.output_dir).resolve()
    if args.analysis_level == "group":
        if not output_dir.is_dir():
            raise InputError(f"{output_dir} does not exist: run the participant level first")
        tables = group_level.collect_cohort_tables(output_dir)
        written = group_level.write_cohort_tables(output_dir, tables)
        from ..cohort.morphometry_outputs import write_morphometry_group

        written += write_morphometry_group(output_dir)
        from ..preprocess.group import group_outputs_of

        written += group_outputs_of(output_dir)  # subjects' segsuite preprocess outputs, when there are any
        failures = 0 if tables.failures is None else len(tables.failures)
        print(f"segsuite bids group: wrote {', '.join(written) or 'nothing'}; {failures} failed subject(s) in logs/failed.tsv")
        return 0

    source = Path(args.bids_dir).resolve()
    if output_dir == source:
        raise UsageError("OUTPUT_DIR must not be BIDS_DIR itself; use e.g. BIDS_DIR/derivatives/segsuite")
    work_dir = Path(args.work_dir).resolve() if args.work_dir else output_dir / "work"
    plan = model_plan(args)  # option mistakes (e.g. samseg-filter without --derivatives) before any work
    participants = read_labels(args.participant_label, "sub-")
    sessions = read_labels(args.session_label, "ses-")
    manifest = is_manifest(source)
    if not manifest and not source.is_dir():
        raise InputError(f"{source} is neither a BIDS folder nor a .csv/.tsv manifest")
    filters = None if manifest else read_filter_file(args.bids_filter_file)
    threads = args.omp_nthreads or max(1, (os.cpu_count() or 1) // max(1, args.nprocs))
    config = ClusterConfig(nprocs=args.nprocs, omp_nthreads=threads, device=args.device, cluster=args.cluster,
                           cluster_config=args.cluster_config, scheduler=args.scheduler, retries=args.retries)
    for flag, value in (("--synthseg-model", args.synthseg_model), ("--sclimbic-model", args.sclimbic_model),
                        ("--scepi-model", args.scepi_model)):
        if value and not os.path.exists(os.path.expanduser(value)):
            raise UsageError(f"{flag} {value}: no such file or folder")
    # The local workers start and load the models while the input is validated and indexed (batch
    # jobs are submitted only once the input is known to be good).
    starting = None if args.cluster else ClusterStart(config, plan, work_dir)
    try:
        if manifest:
            items = read_manifest(source, participants, sessions)
        else:
            if not args.skip_bids_validation:
                validate_input(str(source))
            index = index_bids(source, work_dir, max_workers=args.nprocs)
            if "scepi" in plan:  # sc_epi also runs in folders that have BOLD series but no T1w
                from ..cohort.engines_inputs import select_with_func

                items = select_with_func(index, source, participants, sessions, filters)
            else:
                items = select_t1w(index, source, participants, sessions, filters)
        if not items:
            raise InputError(f"no T1w images{' or BOLD series' if 'scepi' in plan else ''} to process in {source}")
        expected_space(args, items, output_dir).check()  # before any model runs or anything is written
        output_dir.mkdir(parents=True, exist_ok=True)
    except BaseException:
        if starting is not None:
            starting.close()
        raise

    def on_models(entries):
        from ..cohort.engines_inputs import parse_derivatives, rows_to_table
        from ..cohort.worker import MODELS

        tables = label_tables(plan)  # SynthSeg's from its label lists; the others as the workers' engines have them
        tables.update({MODELS[name][1]: rows_to_table(entry["labels"]) for name, entry in entries.items()
                       if name != "synthseg" and entry.get("labels")})
        write_dataset_files(output_dir, str(source), entries, tables, links=parse_derivatives(args.derivatives))

    summary = run_cohort(items, output_dir, plan, config, work_dir, overwrite=args.overwrite,
                         posteriors=args.posteriors, stop_on_first_crash=args.stop_on_first_crash,
                         progress=getattr(args, "progress", "bar"), on_models=on_models, starting=starting)
    print(f"segsuite bids: {len(summary.done)} done, {len(summary.skipped)} skipped, {len(summary.failed)} failed "
          f"in {summary.seconds:.1f} s ({summary.per_hour:.0f} subjects/hour)", file=sys.stderr)
    if summary.failed:
        first = sorted(summary.failed, key=lambda f: f["key"])[0]
        print(f"segsuite bids: error: {len(summary.failed)} subject(s) failed (see {output_dir / 'logs' / 'failed.tsv'}); "
              f"first: {first['key']}: {first['reason']}", file=sys.stderr)
        return 1
    return 0


def require_cohort_packages(manifest: bool) -> None:
    """The participant level runs on Dask (and indexes BIDS with bids2table): without them, say what
    to install before any work instead of failing inside the cluster start (e.g. in Slicer's Python)."""
    from ..errors import SegSuiteError

    missing = []
    for name in ("dask", "distributed") + (() if manifest else ("bids2table",)):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SegSuiteError(f"the cohort runner needs {', '.join(missing)} (not installed in this Python): "
                            f"pip install -r requirements-cohort.txt")


def label_tables(plan: dict) -> dict:
    """{seg: LabelTable} for the root seg-*_dseg.tsv files."""
    from ..labels import freesurfer_lut

    tables = {}
    if "synthseg" in plan:
        from ..synthseg import labels as L

        options = plan["synthseg"]["options"]
        values = sorted(set(L.segmentation_labels(False).tolist()) | {0})
        tables["synthseg"] = freesurfer_lut().subset(values)
        if options.get("parc"):
            parc = sorted(set(values) - {3, 42} | set(int(v) for v in L.PARC_LABELS))
            tables["synthsegparc"] = freesurfer_lut().subset(parc)
    return {seg: table for seg, table in tables.items() if table is not None}


SPACE_SAMPLE = 20          # headers read to size a cohort's outputs (the largest one counts for all)
SIDECAR_BYTES = 4096       # a JSON sidecar or a one-row TSV: one block


def preprocess_bytes(resolution: float, input_voxels: int, image_bytes, rounded) -> int:
    """--preprocess per subject: 2 native float images, 11 template-space maps (T1w, mask, 3 x 3 tissue
    maps) on the template grid (MNI152 at 1 mm: 197 x 233 x 189) and the two .h5 transforms, uncompressed
    double displacement fields on the 2 mm registration grid with its 12 mm margin (~37 MB each)."""
    template_voxels = int(197 * 233 * 189 / resolution ** 3)
    field_bytes = 3 * 8 * (99 + 12) * (117 + 12) * (95 + 12)
    return (2 * rounded(image_bytes("x.nii.gz", input_voxels, 4, integer=False))
            + 11 * rounded(image_bytes("x.nii.gz", template_voxels, 4, integer=False)) + 2 * rounded(field_bytes))


def expected_space(args, items, output_dir: Path):
    """The derivatives of the subjects still to do (no provenance record yet, or all with --overwrite),
    sized from the largest of up to SPACE_SAMPLE input headers spread over the cohort: per model an
    int32 dseg on the 1 mm cover (SynthSeg) or the input grid (ScLimbic), with --parc a second one,
    the brain mask, with --posteriors one float32 map per label, and the sidecars and tables. The
    staging folder lies inside OUTPUT_DIR, on the same file system."""
    from ..cohort.derivatives import provenance_path
    from ..diskspace import SpacePlan, image_bytes, input_grid, one_mm_voxels, voxel_count

    todo = [item for item in items if args.overwrite or not provenance_path(output_dir, item).exists()]
    space = SpacePlan()
    if not todo:
        return space
    step = max(1, len(todo) // SPACE_SAMPLE)
    grid_voxels, one_mm = 1, 1
    for item in todo[::step][:SPACE_SAMPLE]:
        try:
            shape, zooms = input_grid(item.path)
        except Exception:  # an unreadable image fails its own task later, with its own message
            continue
        grid_voxels = max(grid_voxels, voxel_count(shape))
        one_mm = max(one_mm, one_mm_voxels(shape, zooms))
    block = 4096
    rounded = lambda nbytes: -(-nbytes // block) * block  # noqa: E731
    per_subject = 0
    if "synthseg" in args.models:
        maps = 3 if args.parc else 2   # dseg (+ parcellation dseg) + brain mask
        per_subject += maps * (rounded(image_bytes("x.nii.gz", one_mm, 4)) + SIDECAR_BYTES)
        if args.posteriors:
            per_subject += rounded(image_bytes("x.nii.gz", one_mm, 4, integer=False, channels=33)) + SIDECAR_BYTES
        per_subject += 3 * SIDECAR_BYTES   # morph.tsv, qc.tsv, provenance
    if "sclimbic" in args.models:
        per_subject += rounded(image_bytes("x.nii.gz", grid_voxels, 4)) + 3 * SIDECAR_BYTES
        if args.posteriors:
            per_subject += rounded(image_bytes("x.nii.gz", grid_voxels, 4, integer=False, channels=14)) + SIDECAR_BYTES
    if getattr(args, "morphometry", False):   # (SynthSeg's) GM/WM/CSF probseg (float) + tissue dseg + brain mask
        per_subject += 3 * rounded(image_bytes("x.nii.gz", one_mm, 4, integer=False)) + 4 * SIDECAR_BYTES
        per_subject += 2 * rounded(image_bytes("x.nii.gz", one_mm, 4)) + 4 * SIDECAR_BYTES
    if getattr(args, "preprocess", False):
        per_subject += preprocess_bytes(args.preprocess_resolution, grid_voxels, image_bytes, rounded)
    if "samseg-filter" in args.models:  # aseg dseg + brain mask on SAMSEG's grid (the T1w's, as a bound)
        per_subject += 2 * (rounded(image_bytes("x.nii.gz", grid_voxels, 4)) + SIDECAR_BYTES)
    # sc_epi's mean EPI and cord mask per BOLD series are small beside the T1w outputs: not sized here
    space.add(output_dir, per_subject * len(todo), staged_in=output_dir / todo[0].folder)
    return space
