"""segsuite bids: a BIDS App (and manifest mode) on Dask distributed."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

NAME = "bids"
HELP = "BIDS App: segment a BIDS dataset (or a CSV/TSV manifest) on Dask, writing BIDS derivatives"
DESCRIPTION = """segsuite bids BIDS_DIR OUTPUT_DIR {participant,group} [options]

participant: segment every T1w image (one Dask task per subject/session); finished subjects are
skipped, failures go to OUTPUT_DIR/.segsuite/logs/failed.tsv and the exit status is 1 if any failed.
group: gather the per-subject morph/qc tables into group_seg-<seg>_<table>.tsv and write
group_qc_report.html, the reviewer's page (views of every engine per subject, ratings exported as a
TSV); --qc-ratings FILE (that TSV) leaves the (subject, engine) pairs rated fail out of the tables'
analysis columns and the TIV fits, with review_rating and review_status columns saying why.
With --preprocess outputs, group also writes the cohort mask, the mean modulated GM map and
group_desc-preproc_qc.tsv (registration/bias QC, flags); a subject rated fail for the engine
"preprocess" stays out of the two maps.
--models: synthseg and sclimbic on the T1w, scepi on the mean of each func/*_bold series,
samseg-filter on existing SAMSEG outputs (--derivatives samseg=PATH); a folder without an
engine's input is skipped for it (.segsuite/logs/skipped.tsv).
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
    parser.add_argument("-w", "--work-dir", metavar="DIR", help="index cache and run logs (default OUTPUT_DIR/.segsuite/work)")
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
    parser.add_argument("--sclimbic-conform", action="store_true",
                        help="ScLimbic: accept non-1 mm T1w images (resliced to 1 mm, labels back on the input grid; "
                             "as segsuite sclimbic --conform)")
    parser.add_argument("--sclimbic-percentile", type=float, nargs="?", const=99.9, default=None, metavar="P",
                        help="ScLimbic: normalise by this percentile of the nonzero voxels (no value: 99.9; "
                             "as segsuite sclimbic --percentile)")
    parser.add_argument("--ct", action="store_true", help="SynthSeg: clip intensities to [0, 80] for CT scans")
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
    parser.add_argument("--qc-ratings", metavar="FILE",
                        help="group: the ratings TSV exported from group_qc_report.html; (subject, engine) pairs rated "
                             "fail are left out of the group tables' analysis columns and the TIV fits")
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
    parser.add_argument("--preprocess-registration", choices=("t1w+tissues", "t1w"), default="t1w+tissues",
                        help="--preprocess: what drives the deformable registration (as segsuite preprocess "
                             "--registration; default t1w+tissues)")
    parser.add_argument("--preprocess-fwhm", type=float, default=8.0,
                        help="--preprocess: FWHM in mm of the smoothed modulated maps (default 8; 0: none)")


# The flags engine messages name (those of the engine's own command) as segsuite bids calls them.
BIDS_FLAGS = {"synthseg": {"--model": "--synthseg-model"},
              "sclimbic": {"--conform": "--sclimbic-conform", "--model": "--sclimbic-model",
                           "--percentile": "--sclimbic-percentile"},
              "scepi": {"--model": "--scepi-model", "-thr": "--scepi-thr"},
              "samseg-filter": {"--preset": "--samseg-preset"}}


def model_plan(args) -> dict:
    """{model name: {model, options, [morphometry, inputs], flags}}: what every worker builds."""
    return {name: dict(spec, flags=BIDS_FLAGS.get(name, {})) for name, spec in engine_plan(args).items()}


def engine_plan(args) -> dict:
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
        if getattr(args, "ct", False):  # only when given: the provenance of earlier runs stays valid
            plan["synthseg"]["options"]["ct"] = True
        if getattr(args, "morphometry", False):  # the tissue maps are summed from the posteriors
            plan["synthseg"]["morphometry"] = True
        if preprocess:
            plan["synthseg"]["preprocess"] = preprocess_settings(args)
    if "sclimbic" in args.models:
        plan["sclimbic"] = {"model": args.sclimbic_model, "options": {"posteriors": args.posteriors}}
        if getattr(args, "sclimbic_conform", False):
            plan["sclimbic"]["options"]["conform"] = True
        if getattr(args, "sclimbic_percentile", None) is not None:
            plan["sclimbic"]["options"]["percentile"] = args.sclimbic_percentile
    plan.update(other_input_plan(args))
    return plan


def preprocess_settings(args) -> dict:
    """--preprocess's settings, the template resolved now (a missing one stops the run before any work)."""
    from ..errors import UsageError
    from ..preprocess.templates import template_files

    if not 0 <= args.preprocess_fwhm <= 50:
        raise UsageError(f"--preprocess-fwhm must be from 0 to 50 mm, got {args.preprocess_fwhm:g}")
    space, _ = template_files(args.preprocess_template)
    return {"template": space, "resolution": args.preprocess_resolution, "fwhm": args.preprocess_fwhm,
            "registration": getattr(args, "preprocess_registration", "t1w+tissues")}


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


VALIDATOR_FILES_SHOWN = 5   # files named per error code; the count says how many more


def validate_input(bids_dir: str) -> None:
    """The real BIDS validator (bids-validator-deno) on the input; errors stop the run, each error
    code on a line of its own with the files it names, as the validator reports them."""
    import shutil
    import subprocess

    from ..errors import InputError

    validator = shutil.which("bids-validator-deno") or os.path.join(os.path.dirname(sys.executable), "bids-validator-deno")
    if not os.path.exists(validator):
        raise InputError("bids-validator-deno is not installed (pip install bids-validator-deno); "
                         "or pass --skip-bids-validation")
    done = subprocess.run([validator, bids_dir, "--ignoreWarnings", "--ignoreNiftiHeaders", "--json"],
                          capture_output=True, text=True)
    if done.returncode == 0:
        return
    try:
        lines = validator_error_lines(json.loads(done.stdout))
    except (ValueError, KeyError, TypeError):  # no report: the validator itself failed
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-4:]
    raise InputError(f"{bids_dir} is not valid BIDS (fix it, or pass --skip-bids-validation); bids-validator-deno:\n"
                     + "\n".join(f"  {line}" for line in lines))


def validator_error_lines(report: dict) -> list[str]:
    """One line per error code of a bids-validator-deno --json report: the code, the first sentence of
    its message, and the files it names."""
    messages = report["issues"].get("codeMessages", {})
    files: dict[str, list[str]] = {}
    for issue in report["issues"]["issues"]:
        if issue.get("severity") != "error":
            continue
        named = files.setdefault(issue["code"], [])
        for path in ([issue["location"]] if issue.get("location") else []) + list(issue.get("affects") or []):
            if path not in named:
                named.append(path)
    lines = []
    for code, named in files.items():
        sentence = messages.get(code, "").split(". ")[0].strip().rstrip(".")
        named.sort()
        shown = ", ".join(named[:VALIDATOR_FILES_SHOWN])
        more = f" and {len(named) - VALIDATOR_FILES_SHOWN} more" if len(named) > VALIDATOR_FILES_SHOWN else ""
        lines.append(f"[ERROR] {code}" + (f" {sentence}" if sentence else "") + (f": {shown}{more}" if named else ""))
    return lines


def run(args) -> int:
    if args.analysis_level == "participant":
        from ..cohort.index import is_manifest

        require_cohort_packages(manifest=is_manifest(Path(args.bids_dir)))
    from ..cohort import group as group_level
    from ..cohort.derivatives import default_work_dir
    from ..cohort.index import is_manifest, read_filter_file, read_labels
    from ..cohort.lock import OutputLock, OutputLocked
    from ..cohort.runner import ClusterConfig
    from ..errors import InputError, UsageError

    output_dir = Path(args.output_dir).resolve()
    if args.analysis_level == "group":
        if not output_dir.is_dir():
            raise InputError(f"{output_dir} does not exist: run the participant level first")
        from ..cohort.morphometry_outputs import write_morphometry_group
        from ..review.ratings import read_ratings

        ratings = read_ratings(args.qc_ratings) if args.qc_ratings else None  # its mistakes before any work
        tables = group_level.collect_cohort_tables(output_dir)
        written = group_level.write_cohort_tables(output_dir, tables, ratings)
        morphometry = write_morphometry_group(output_dir, ratings=ratings)
        written += morphometry.names
        from ..preprocess.group import group_outputs_of

        written += group_outputs_of(output_dir, ratings=ratings)  # subjects' segsuite preprocess outputs, when there are any
        from ..cohort.review import write_cohort_review

        review = write_cohort_review(output_dir, tables, morphometry.tables, workers=args.nprocs)
        if review is not None:
            written.append(review["name"])
            print(f"segsuite bids group: {review['name']}: {review['bytes'] / 1e6:.2f} MB page + "
                  f"{review['views_bytes'] / 1e6:.1f} MB of views ({review['per_subject'] / 1e3:.0f} kB per subject), "
                  f"{review['entries']} views of {review['subjects']} image folders", file=sys.stderr)
        # failed.tsv has one row per (subject, engine) failure
        rows = 0 if tables.failures is None else len(tables.failures)
        subjects = 0 if not rows else len(tables.failures.drop_duplicates(["participant_id", "session_id"]))
        print(f"segsuite bids group: wrote {', '.join(written) or 'nothing'}; {subjects} failed subject(s) "
              f"({rows} (subject, engine) row(s)) in .segsuite/logs/failed.tsv")
        return 0

    source = Path(args.bids_dir).resolve()
    if output_dir == source:
        raise UsageError("OUTPUT_DIR must not be BIDS_DIR itself; use e.g. BIDS_DIR/derivatives/segsuite")
    work_dir = Path(args.work_dir).resolve() if args.work_dir else default_work_dir(output_dir)
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
    # writes nothing under the output (probes, the GPU, the models): before the lock, so a failure leaves no folder
    preflight(args, plan, output_dir, work_dir)
    created = _missing_tops([output_dir, work_dir])  # removed again if the run fails before any subject
    try:
        with OutputLock(output_dir):  # one run per output dataset: a second one stops here, naming the holder
            return _run_participant(args, source, output_dir, work_dir, plan, config, manifest, participants,
                                    sessions, filters)
    except OutputLocked:
        raise  # the folders belong to the run that holds the lock
    except BaseException:
        _remove_if_unused(created, output_dir)
        raise


def _run_participant(args, source: Path, output_dir: Path, work_dir: Path, plan: dict, config, manifest: bool,
                     participants, sessions, filters) -> int:
    from ..cohort.derivatives import logs_dir, write_dataset_files
    from ..cohort.index import index_bids, read_manifest, select_t1w
    from ..cohort.runner import ClusterStart, run_cohort
    from ..errors import InputError
    from ..faults import Interrupted

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
        tables.update({MODELS[name]: rows_to_table(entry["labels"]) for name, entry in entries.items()
                       if name != "synthseg" and entry.get("labels")})
        write_dataset_files(output_dir, str(source), entries, tables, links=parse_derivatives(args.derivatives))

    try:
        summary = run_cohort(items, output_dir, plan, config, work_dir, overwrite=args.overwrite,
                             posteriors=args.posteriors, stop_on_first_crash=args.stop_on_first_crash,
                             progress=getattr(args, "progress", "bar"), on_models=on_models, starting=starting)
    except Interrupted as stop:
        summary = getattr(stop, "summary", None)
        if summary is None:
            raise
        print(f"segsuite bids: interrupted by {stop.name} after {summary.seconds:.1f} s: {len(summary.done)} committed, "
              f"{len(summary.skipped)} skipped, {len(summary.failed_subjects)} failed, {len(summary.not_started)} not "
              f"started; committed outputs are kept, the same command resumes the rest", file=sys.stderr, flush=True)
        return 128 + stop.signum
    partly = len(set(summary.done) & {f["key"] for f in summary.failed})
    print(f"segsuite bids: {len(summary.done)} done{f' ({partly} partly)' if partly else ''}, "
          f"{len(summary.skipped)} skipped, {len(summary.failed_subjects)} failed in {summary.seconds:.1f} s "
          f"({summary.per_hour:.0f} subjects/hour); per engine: "
          f"{summary.engine_line() or 'nothing'}", file=sys.stderr)
    if summary.failed:
        first = sorted(summary.failed, key=lambda f: (f["key"], f["model"]))[0]
        subjects = len({f["key"] for f in summary.failed})
        print(f"segsuite bids: error: {subjects} subject(s) failed in {len(summary.failed)} (subject, engine) run(s) "
              f"(see {logs_dir(output_dir) / 'failed.tsv'}); first: {first['key']} {first['model']}: {first['reason']}",
              file=sys.stderr)
        return 1
    return 0


# the bids flag that gives each engine's model (the engines' own messages name their command's --model)
MODEL_FLAGS = {"synthseg": "--synthseg-model", "sclimbic": "--sclimbic-model", "scepi": "--scepi-model"}


def preflight(args, plan: dict, output_dir: Path, work_dir: Path) -> None:
    """What the other commands check before any model is loaded, here before any worker starts or
    anything is written: the output and work folders take files, a CUDA GPU is there when asked for
    (on this machine; batch jobs and a running scheduler have their own), every model is present
    and verified (fetched first if it can be). Each failure is one SegSuiteError naming the bids flag."""
    from ..image import check_writable_locations

    check_writable_locations([output_dir / "dataset_description.json", work_dir / "engine-calls.jsonl"])
    if args.device != "cpu" and not (args.cluster or args.scheduler):
        from ..engine import resolve_device

        resolve_device(args.device)
    check_models(plan)


def check_models(plan: dict) -> None:
    """Each engine's weights as it will resolve them (an explicit file or folder, or the model
    manager's installed and verified copy, downloaded now if missing), without loading a network."""
    import re

    from ..errors import SegSuiteError

    for name, spec in plan.items():
        flag = MODEL_FLAGS.get(name)
        if flag is None:
            continue
        try:
            _resolve_model_files(name, spec)
        except SegSuiteError as error:
            raise type(error)(re.sub(r"--model\b", flag, str(error))) from None


def _resolve_model_files(name: str, spec: dict) -> None:
    model, options = spec.get("model"), spec.get("options", {})
    if name == "synthseg":
        from ..synthseg.engine import resolve_weights

        resolve_weights(model, "synthseg-robust-2.0" if options.get("robust") else "synthseg-2.0", True)
        for wanted, model_id in (("parc", "synthseg-parc-2.0"), ("qc", "synthseg-qc-2.0")):
            if options.get(wanted):
                resolve_weights(model, model_id, False)
    elif name == "sclimbic":
        from ..sclimbic.engine import resolve_model_files

        resolve_model_files(model)
    elif name == "scepi":
        from ..scepi.modelfolder import resolve_model

        resolve_model(model)


def _missing_tops(folders) -> list[Path]:
    """For each folder, the outermost of it and its parents that does not exist yet (None if it does)."""
    tops = []
    for folder in folders:
        top = None
        for candidate in (folder, *folder.parents):
            if candidate.exists():
                break
            top = candidate
        tops.append(top)
    return tops


def _remove_if_unused(created: list, output_dir: Path) -> None:
    """A run that failed before committing any subject leaves nothing behind: the output and work
    folders it created are removed (never a folder that was there before, never committed results
    or the logs of subjects that failed)."""
    import shutil

    from ..cohort.derivatives import logs_dir

    if any(output_dir.glob("sub-*")) or any(path.is_file() for path in logs_dir(output_dir).glob("*")):
        return
    for folder in created:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


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
