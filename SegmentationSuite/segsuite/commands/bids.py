"""segsuite bids: a BIDS App (and manifest mode) on Dask distributed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

NAME = "bids"
HELP = "BIDS App: segment a BIDS dataset (or a CSV/TSV manifest) on Dask, writing BIDS derivatives"
DESCRIPTION = """segsuite bids BIDS_DIR OUTPUT_DIR {participant,group} [options]

participant: segment every T1w image (one Dask task per subject/session); finished subjects are
skipped, failures go to OUTPUT_DIR/logs/failed.tsv and the exit status is 1 if any failed.
group: gather the per-subject morph/qc tables into group_seg-<seg>_<table>.tsv.
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
    parser.add_argument("--models", nargs="+", default=["synthseg"], choices=("synthseg", "sclimbic"),
                        help="engines to run on each T1w (default synthseg)")
    parser.add_argument("--parc", action="store_true", help="SynthSeg: cortical parcellation (adds seg-synthsegparc)")
    parser.add_argument("--robust", action="store_true", help="SynthSeg-robust")
    parser.add_argument("--fast", action="store_true", help="SynthSeg: fast post-processing")
    parser.add_argument("--qc", action="store_true", help="SynthSeg: QC scores (_seg-synthseg_qc.tsv)")
    parser.add_argument("--crop", nargs="+", type=int, metavar="N", help="SynthSeg: analyse a centred N^3 patch")
    parser.add_argument("--posteriors", action="store_true", help="write _probseg posteriors")
    parser.add_argument("--synthseg-model", metavar="PATH", help="SynthSeg weights file or folder (default: model manager)")
    parser.add_argument("--sclimbic-model", metavar="PATH", help="ScLimbic model file (default: model manager)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (GPU workers declare a GPU resource)")
    parser.add_argument("--cluster", choices=("slurm", "sge", "pbs"), help="run the workers as batch jobs (dask-jobqueue)")
    parser.add_argument("--cluster-config", metavar="YAML", help="dask-jobqueue settings: queue, walltime, memory, jobs, gpus, ...")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask scheduler (tcp://host:8786)")
    parser.add_argument("--retries", type=int, default=2, help="times a task is retried when its worker dies (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="redo every subject, even those already done")


def model_plan(args) -> dict:
    plan = {}
    if "synthseg" in args.models:
        plan["synthseg"] = {"model": args.synthseg_model, "options": {
            "parc": args.parc, "robust": args.robust, "fast": args.fast, "qc": args.qc,
            "crop": args.crop, "posteriors": args.posteriors}}
    if "sclimbic" in args.models:
        plan["sclimbic"] = {"model": args.sclimbic_model, "options": {"posteriors": args.posteriors}}
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
    from ..cohort import group as group_level
    from ..cohort.derivatives import write_dataset_files
    from ..cohort.index import (index_bids, is_manifest, read_filter_file, read_labels, read_manifest, select_t1w)
    from ..errors import InputError, UsageError

    output_dir = Path(args.output_dir).resolve()
    if args.analysis_level == "group":
        if not output_dir.is_dir():
            raise InputError(f"{output_dir} does not exist: run the participant level first")
        tables = group_level.collect_group_tables(output_dir)
        written = group_level.write_group_tables(output_dir, tables)
        failures = 0 if tables.failures is None else len(tables.failures)
        print(f"segsuite bids group: wrote {', '.join(written) or 'nothing'}; {failures} failed subject(s) in logs/failed.tsv")
        return 0

    source = Path(args.bids_dir).resolve()
    if output_dir == source:
        raise UsageError("OUTPUT_DIR must not be BIDS_DIR itself; use e.g. BIDS_DIR/derivatives/segsuite")
    work_dir = Path(args.work_dir).resolve() if args.work_dir else output_dir / "work"
    participants = read_labels(args.participant_label, "sub-")
    sessions = read_labels(args.session_label, "ses-")
    if is_manifest(source):
        items = read_manifest(source, participants, sessions)
    else:
        if not source.is_dir():
            raise InputError(f"{source} is neither a BIDS folder nor a .csv/.tsv manifest")
        if not args.skip_bids_validation:
            validate_input(str(source))
        index = index_bids(source, work_dir)
        items = select_t1w(index, source, participants, sessions, read_filter_file(args.bids_filter_file))
    if not items:
        raise InputError(f"no T1w images to process in {source}")
    expected_space(args, items, output_dir).check()   # before the cluster starts or a model loads
    from ..cohort.runner import ClusterConfig, run_cohort

    threads = args.omp_nthreads or max(1, (os.cpu_count() or 1) // max(1, args.nprocs))
    config = ClusterConfig(nprocs=args.nprocs, omp_nthreads=threads, device=args.device, cluster=args.cluster,
                           cluster_config=args.cluster_config, scheduler=args.scheduler, retries=args.retries)
    output_dir.mkdir(parents=True, exist_ok=True)
    plan = model_plan(args)

    def on_models(entries):
        write_dataset_files(output_dir, str(source), entries, label_tables(plan))

    summary = run_cohort(items, output_dir, plan, config, work_dir, overwrite=args.overwrite,
                         posteriors=args.posteriors, stop_on_first_crash=args.stop_on_first_crash,
                         progress=getattr(args, "progress", "bar") == "bar", on_models=on_models)
    print(f"segsuite bids: {len(summary.done)} done, {len(summary.skipped)} skipped, {len(summary.failed)} failed "
          f"in {summary.seconds:.1f} s ({summary.per_hour:.0f} subjects/hour)", file=sys.stderr)
    if summary.failed:
        first = sorted(summary.failed, key=lambda f: f["key"])[0]
        print(f"segsuite bids: error: {len(summary.failed)} subject(s) failed (see {output_dir / 'logs' / 'failed.tsv'}); "
              f"first: {first['key']}: {first['reason']}", file=sys.stderr)
        return 1
    return 0


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
    if "sclimbic" in plan:
        tables["sclimbic"] = None
    return {seg: table for seg, table in tables.items() if table is not None}


SPACE_SAMPLE = 20          # headers read to size a cohort's outputs (the largest one counts for all)
SIDECAR_BYTES = 4096       # a JSON sidecar or a one-row TSV: one block


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
    space.add(output_dir, per_subject * len(todo), staged_in=output_dir / todo[0].folder)
    return space
