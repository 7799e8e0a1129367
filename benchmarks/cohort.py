"""segsuite bids against a bare engine loop, on the same N subjects, and indexing a 40,000-subject tree.

    python benchmarks/cohort.py --subjects 6 [--model FOLDER] [--full]

Without --model, a SynthSeg network with random weights (Keras layout) is written to a temporary
folder; subjects are 64 mm crops of ../shared/data/t1 scans segmented with --fast --crop 64 unless
--full. Prints: bare loop s/subject, segsuite bids with 1 and 2 workers, the scheduler overhead
(1 worker against the bare loop, goal <= 5 %), model loads per worker (goal 1) and the time to index
a synthetic 40,000-subject BIDS tree of empty files (goal <= 60 s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "SegmentationSuite"), str(ROOT / "Testing")]


def run_bids(dataset, output, model, workers, options):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", "bids", str(dataset), str(output),
                           "participant", "--nprocs", str(workers), "--omp-nthreads", "1", "--skip-bids-validation",
                           "--synthseg-model", str(model), *options], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "SegmentationSuite"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    loads = [json.loads(line) for line in (output / "work" / "model-loads.jsonl").read_text().splitlines()]
    per_worker = len(loads) / max(1, len({load["pid"] for load in loads}))
    return seconds, per_worker


def synthetic_tree(root: Path, subjects: int) -> None:
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "synthetic", "BIDSVersion": "1.10.0"}')
    for number in range(subjects):
        anat = root / f"sub-{number:06d}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{number:06d}_T1w.nii.gz").touch()
        (anat / f"sub-{number:06d}_T1w.json").touch()


def main() -> None:
    import nibabel as nib
    import torch

    from segsuite.cohort.index import index_bids, select_t1w
    from segsuite.synthseg import SynthSegEngine
    from synthseg_helpers import write_random_synthseg_model
    import test_cohort

    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--model", help="SynthSeg weights folder (default: random weights)")
    parser.add_argument("--full", action="store_true", help="no --fast --crop 64")
    parser.add_argument("--index-subjects", type=int, default=40000)
    args = parser.parse_args()
    temp = Path(tempfile.mkdtemp(prefix="cohort-bench-"))
    model = args.model
    if model is None:
        model = temp / "model"
        model.mkdir()
        write_random_synthseg_model(model)
    dataset = temp / "raw"
    (dataset).mkdir()
    (dataset / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.10.0"}')
    paths = []
    for number in range(args.subjects):
        data, affine = test_cohort.crop_of(number % 3, 2 * number)
        anat = dataset / f"sub-{number:02d}" / "anat"
        anat.mkdir(parents=True)
        paths.append(anat / f"sub-{number:02d}_T1w.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), str(paths[-1]))
    options = [] if args.full else ["--fast", "--crop", "64"]
    torch.set_num_threads(1)
    started = time.perf_counter()
    engine = SynthSegEngine(model=str(model), fast=not args.full, crop=None if args.full else 64, device="cpu", threads=1)
    for path in paths:
        engine.segment(str(path), resample_output=True)
    bare = (time.perf_counter() - started) / args.subjects
    one, loads_one = run_bids(dataset, temp / "out1", model, 1, options)
    two, loads_two = run_bids(dataset, temp / "out2", model, 2, options)
    print(f"subjects: {args.subjects} ({'full scans' if args.full else '64 mm crops, --fast --crop 64'}), CPU threads per worker 1")
    print(f"bare engine loop (model load included): {bare:.2f} s/subject")
    print(f"segsuite bids, 1 worker: {one / args.subjects:.2f} s/subject ({one:.1f} s wall, cluster start included)")
    print(f"segsuite bids, 2 workers: {two / args.subjects:.2f} s/subject ({two:.1f} s wall)")
    print(f"scheduler overhead (1 worker vs bare loop): {100 * (one / args.subjects - bare) / bare:+.1f} %  (goal <= 5 %)")
    print(f"model loads per worker: 1 worker {loads_one:.1f}, 2 workers {loads_two:.1f}  (goal 1)")
    tree = temp / "tree"
    started = time.perf_counter()
    synthetic_tree(tree, args.index_subjects)
    made = time.perf_counter() - started
    started = time.perf_counter()
    index = index_bids(tree, temp / "work")
    items = select_t1w(index, tree)
    indexed = time.perf_counter() - started
    started = time.perf_counter()
    index_bids(tree, temp / "work")
    cached = time.perf_counter() - started
    print(f"index of {args.index_subjects} subjects of empty files: {indexed:.1f} s ({len(items)} T1w; "
          f"cached re-read {cached:.2f} s; tree written in {made:.1f} s)  (goal <= 60 s)")
    import shutil

    shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
