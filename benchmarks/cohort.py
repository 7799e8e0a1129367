"""segsuite bids against a bare engine loop on the same N subjects, and indexing a 40,000-subject tree.

    python benchmarks/cohort.py [--subjects 4] [--threads 1] [--model FOLDER] [--fast] [--index-subjects 40000]

What each subject costs is what users see: the full-size SynthSeg 2.0 network (the fixture weights,
../shared/fixtures/synthseg/models/synthseg_2.0.h5.gz: deterministic random weights of the real
architecture, so the compute is the real network's; --model for trained weights) on real 1 mm T1
scans (the fixture input t1_crop_fov and ../shared/data/t1's clinical and stroke scans, in turn),
SynthSeg's default mode (--fast for its fast post-processing), labels resampled to the input grid.

Every side is a whole process timed from launch to exit, on the same subjects and torch threads:
- bare loop: Python, torch, the engine built once, then segment + save the labels of each subject;
- segsuite bids with one worker (same threads) and with two: the real command, BIDS validation,
  the index, the Dask LocalCluster, the BIDS derivatives and their sidecars/tables included.
Scheduler overhead = (one-worker wall - bare-loop wall) / bare-loop wall (goal <= 5 %). Model loads
per worker come from work/model-loads.jsonl (goal 1). The index part times a synthetic 40,000-subject
tree of empty files (goal <= 60 s): our crawl in one process and over --nprocs processes, bids2table's
own index_dataset for comparison, the cached re-read and the re-index after one subject is added.
Shared machines are noisy: run it alone (flock /tmp/heavy.lock) and repeat before trusting a figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSUITE_SHARED", ROOT.parent / "shared"))
SCANS = [SHARED / "fixtures" / "synthseg" / "inputs" / "t1_crop_fov.nii.gz",
         SHARED / "data" / "t1" / "seg3d_MR_T1_clinical.nii.gz",
         SHARED / "data" / "t1" / "stroke_T1_brainextracted.nii.gz"]
FIXTURE_WEIGHTS = SHARED / "fixtures" / "synthseg" / "models" / "synthseg_2.0.h5.gz"
sys.path[:0] = [str(ROOT / "SegmentationSuite")]


def environment(threads: int) -> dict:
    return {"PYTHONPATH": str(ROOT / "SegmentationSuite"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OMP_NUM_THREADS": str(threads), "HOME": os.environ.get("HOME", "/tmp")}


def engine_options(fast: bool) -> dict:
    """The options segsuite bids gives the engine (commands/bids.py model_plan) for these flags."""
    return {"parc": False, "robust": False, "fast": fast, "qc": False, "crop": None, "posteriors": False}


def bare_loop(dataset: Path, model: str, output: Path, threads: int, fast: bool) -> None:
    """The loop a user would write (run in its own process): engine built once, segment, save."""
    import nibabel as nib
    import numpy as np

    from segsuite.engine import set_threads, split_options
    from segsuite.synthseg import SynthSegEngine

    set_threads(threads)
    init, segment = split_options(SynthSegEngine, engine_options(fast))
    started = time.perf_counter()
    engine = SynthSegEngine(model=model, device="cpu", threads=threads, **init)
    load = time.perf_counter() - started
    seconds = []
    output.mkdir(parents=True, exist_ok=True)
    for path in sorted(dataset.glob("sub-*/anat/*_T1w.nii.gz")):
        started = time.perf_counter()
        result = engine.segment(str(path), resample_output=True, **segment)
        nib.save(nib.Nifti1Image(np.asarray(result.labels, dtype=np.int16), result.affine),
                 str(output / path.name.replace("_T1w", "_dseg")))
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"model_load_s": load, "subject_s": seconds}))


def run_bare(dataset: Path, model: Path, output: Path, threads: int, fast: bool) -> tuple[float, dict]:
    command = [sys.executable, __file__, "--bare-loop", str(dataset), str(model), str(output),
               "--threads", str(threads)] + (["--fast"] if fast else [])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment(threads))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bare loop failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def run_bids(dataset: Path, output: Path, model: Path, workers: int, threads: int, fast: bool) -> dict:
    command = [sys.executable, "-m", "segsuite", "bids", str(dataset), str(output), "participant",
               "--nprocs", str(workers), "--omp-nthreads", str(threads), "--synthseg-model", str(model)]
    command += ["--fast"] if fast else []
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment(threads))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"segsuite bids failed:\n{done.stderr[-3000:]}")
    loads = [json.loads(line) for line in (output / ".segsuite" / "work" / "model-loads.jsonl").read_text().splitlines()]
    calls = [json.loads(line) for line in (output / ".segsuite" / "work" / "engine-calls.jsonl").read_text().splitlines()]
    inside = [json.loads(path.read_text())["seconds"] for path in sorted(output.glob("sub-*/*_segsuite.json"))]
    return {"wall": wall, "workers": len({load["pid"] for load in loads}), "loads": len(loads),
            "calls": len(calls), "subject_s": inside}


def synthetic_tree(root: Path, subjects: int) -> None:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "synthetic", "BIDSVersion": "1.10.0"}')
    for number in range(subjects):
        anat = root / f"sub-{number:06d}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{number:06d}_T1w.nii.gz").touch()
        (anat / f"sub-{number:06d}_T1w.json").touch()


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - started, value


def index_figures(temp: Path, subjects: int, nprocs: int, compare: bool) -> list[str]:
    import bids2table  # noqa: F401  (imports outside the timings)
    import pyarrow.parquet  # noqa: F401

    from segsuite.cohort.index import crawl_processes, index_bids, select_t1w

    tree = temp / "tree"
    made, _ = timed(synthetic_tree, tree, subjects)
    lines = []
    for workers in sorted({1, nprocs}):
        seconds, index = timed(lambda: select_t1w(index_bids(tree, temp / f"work{workers}", max_workers=workers), tree))
        lines.append(f"index of {subjects} subjects of empty files, --nprocs {workers} "
                     f"({crawl_processes(subjects, workers)} crawling process(es)): {seconds:.1f} s "
                     f"({len(index)} T1w; parquet cache written, T1w list made)  (goal <= 60 s)")
    cached, _ = timed(lambda: select_t1w(index_bids(tree, temp / "work1"), tree))
    lines.append(f"cached re-read (stamp of the subject/session/datatype folders checked): {cached:.2f} s")
    synthetic_tree_one = tree / "sub-new" / "anat"
    synthetic_tree_one.mkdir(parents=True)
    (synthetic_tree_one / "sub-new_T1w.nii.gz").touch()
    again, index = timed(lambda: select_t1w(index_bids(tree, temp / "work1"), tree))
    assert any(item.participant == "new" for item in index), "the new subject was not found"
    lines.append(f"re-index after one subject was added: {again:.1f} s (found)")
    if compare:
        from bids2table import index_dataset

        reference, table = timed(index_dataset, tree)
        lines.append(f"bids2table's own index_dataset, for comparison: {reference:.1f} s ({len(table)} rows)")
    lines.append(f"(tree written in {made:.1f} s)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the bare loop and of each worker")
    parser.add_argument("--model", help="SynthSeg weights folder (default: the full-size fixture weights)")
    parser.add_argument("--fast", action="store_true", help="SynthSeg --fast on both sides")
    parser.add_argument("--index-subjects", type=int, default=40000)
    parser.add_argument("--index-nprocs", type=int, default=2)
    parser.add_argument("--no-bids2table-comparison", action="store_true")
    parser.add_argument("--index-only", action="store_true")
    parser.add_argument("--bare-loop", nargs=3, metavar=("DATASET", "MODEL", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_loop:
        dataset, model, output = args.bare_loop
        bare_loop(Path(dataset), model, Path(output), args.threads, args.fast)
        return
    temp = Path(tempfile.mkdtemp(prefix="cohort-bench-"))
    try:
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
              f"({_cpu_model()}); load average at start {os.getloadavg()[0]:.2f}", flush=True)
        if not args.index_only:
            for figure in subject_figures(temp, args):
                print(figure, flush=True)
        for figure in index_figures(temp, args.index_subjects, args.index_nprocs, not args.no_bids2table_comparison):
            print(figure, flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def subject_figures(temp: Path, args) -> list[str]:
    missing = [str(path) for path in SCANS + ([] if args.model else [FIXTURE_WEIGHTS]) if not path.exists()]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} (../shared beside the repository)")
    model = Path(args.model) if args.model else temp / "model"
    if not args.model:
        model.mkdir()
        with gzip.open(FIXTURE_WEIGHTS) as source, open(model / "synthseg_2.0.h5", "wb") as target:
            shutil.copyfileobj(source, target)
    dataset = temp / "raw"
    dataset.mkdir()
    (dataset / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.10.0"}')
    (dataset / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{n:02d}\n" for n in range(args.subjects)))
    for number in range(args.subjects):
        anat = dataset / f"sub-{number:02d}" / "anat"
        anat.mkdir(parents=True)
        shutil.copyfile(SCANS[number % len(SCANS)], anat / f"sub-{number:02d}_T1w.nii.gz")
    n, threads = args.subjects, args.threads
    bare_wall, bare = run_bare(dataset, model, temp / "bare", threads, args.fast)
    one = run_bids(dataset, temp / "out1", model, 1, threads, args.fast)
    two = run_bids(dataset, temp / "out2", model, 2, threads, args.fast)
    mode = "--fast" if args.fast else "default mode"
    scans = ", ".join(path.name for path in SCANS)
    return [
        f"subjects: {n} real 1 mm T1 scans in turn ({scans}); SynthSeg 2.0 full-size network, {mode}, "
        f"{'weights ' + str(args.model) if args.model else 'fixture weights'}; {threads} torch thread(s) per process",
        f"bare engine loop: {bare_wall:.1f} s wall = {bare_wall / n:.1f} s/subject "
        f"(model load {bare['model_load_s']:.1f} s; segment+save {_spread(bare['subject_s'])} s)",
        f"segsuite bids, 1 worker: {one['wall']:.1f} s wall = {one['wall'] / n:.1f} s/subject "
        f"(in the worker {_spread(one['subject_s'])} s per subject with its derivatives)",
        f"segsuite bids, 2 workers: {two['wall']:.1f} s wall = {two['wall'] / n:.1f} s/subject "
        f"({3600 * n / two['wall']:.0f} subjects/hour; in the workers {_spread(two['subject_s'])} s)",
        f"scheduler overhead (1 worker vs bare loop, wall): {100 * (one['wall'] - bare_wall) / bare_wall:+.1f} % "
        f"({one['wall'] - bare_wall:+.1f} s over {n} subjects)  (goal <= 5 %)",
        f"model loads per worker: 1 worker {one['loads'] / max(1, one['workers']):.1f} ({one['workers']} worker), "
        f"2 workers {two['loads'] / max(1, two['workers']):.1f} ({two['workers']} workers); "
        f"engine calls {one['calls']} and {two['calls']} for {n} subjects  (goal 1)",
    ]


def _spread(values) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else "n/a"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
