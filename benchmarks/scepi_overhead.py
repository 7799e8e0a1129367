"""Wall time and peak memory of the sc_epi engine against a bare nnUNetPredictor call on the same input.

Timing: --rounds processes each load both sides, warm up, then make --repeats calls of each, interleaved
(who goes first alternates), so load changes on a shared machine hit both alike. Peak RSS: each side once
in a process of its own. The bare side is what a user of nnU-Net would write:
nibabel load + reorientation to RAS (SCT "LPI") + predict_single_npy_array; the engine side is
ScEpiEngine(...).segment(path) which adds its checks, reorientation back, label table and volumes.

    python benchmarks/scepi_overhead.py                       # real EPI from ../shared, random tiny model
    python benchmarks/scepi_overhead.py --size medium --threads 2 --rounds 3
    python benchmarks/scepi_overhead.py --model /path/to/sc_epi_model --input my_epi.nii.gz
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SegmentationSuite"))
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "spinal_cord" / "sub-leipzigR01_task-rest_desc-mocomean_bold.nii.gz"
SIZES = {  # random-weight PlainConvUNets: "medium" is closer to the real model's cost per patch
    "tiny": dict(features=(4, 8), patch_size=(8, 32, 32)),
    "medium": dict(features=(16, 32, 64, 128), patch_size=(16, 64, 64),
                   strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def make_call(mode: str, model: str, image_path: str, threads: int):
    """The function one timed call runs, with its model already loaded."""
    import numpy as np
    import torch

    if mode == "engine":
        from segsuite.scepi import ScEpiEngine

        engine = ScEpiEngine(model, device="cpu", threads=threads)
        return lambda: engine.segment(image_path).labels
    import nibabel as nib
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from segsuite.scepi.modelfolder import resolve_model

    folder = resolve_model(model)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder.path), folder.folds, folder.checkpoint_name)

    def once():
        image = nib.as_closest_canonical(nib.load(image_path))
        data = image.get_fdata(dtype=np.float32)
        spacing = [float(z) for z in image.header.get_zooms()[:3][::-1]]
        # C-contiguous like the engine's, so the comparison measures the engine's own work only.
        array = np.ascontiguousarray(data.transpose(2, 1, 0)[None])
        return predictor.predict_single_npy_array(array, {"spacing": spacing})
    return once


def child(mode: str, model: str, image_path: str, repeats: int, threads: int) -> dict:
    """One process: 'engine' or 'bare' alone (for its peak RSS), or 'alternate' (both, calls interleaved,
    so that load changes on a shared machine hit both sides alike)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    modes = ["bare", "engine"] if mode == "alternate" else [mode]
    calls, load_seconds = {}, {}
    for name in modes:
        started = time.perf_counter()
        calls[name] = make_call(name, model, image_path, threads)
        load_seconds[name] = time.perf_counter() - started
        calls[name]()  # warm-up
    times = {name: [] for name in modes}
    cpu_times = {name: [] for name in modes}
    voxels = {}
    for repeat in range(repeats):
        for name in (modes if repeat % 2 == 0 else modes[::-1]):  # alternate who goes first
            started, cpu_started = time.perf_counter(), time.process_time()
            labels = calls[name]()
            times[name].append(time.perf_counter() - started)
            cpu_times[name].append(time.process_time() - cpu_started)
            voxels[name] = int((np.asarray(labels) > 0).sum())
    return {"mode": mode, "load_s": load_seconds, "times_s": times, "cpu_s": cpu_times,
            "peak_rss_mb": peak_rss_mb(), "foreground_voxels": voxels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument("--model", help="an nnU-Net model folder or zip (default: build a random one)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="processes with interleaved engine/bare calls")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=("engine", "bare", "alternate"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.model, args.input, args.repeats, args.threads)))
        return 0
    if not os.path.exists(args.input):
        print(f"input not found: {args.input} (give --input)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from segsuite.scepi.tiny import build_tiny_model

            model = str(build_tiny_model(Path(scratch) / "model", **SIZES[args.size]))
        def run_child(mode, repeats):
            command = [sys.executable, __file__, "--child", mode, "--model", model, "--input", args.input,
                       "--repeats", str(repeats), "--threads", str(args.threads)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            return json.loads(output.strip().splitlines()[-1])

        alone = {mode: run_child(mode, 1) for mode in ("bare", "engine")}
        interleaved = [run_child("alternate", args.repeats) for _ in range(args.rounds)]

    import nibabel as nib

    def median_of(key, mode):
        return statistics.median(t for run in interleaved for t in run[key][mode])

    print(f"input: {args.input} {nib.load(args.input).shape}; model: {args.model or 'random ' + args.size}; "
          f"threads: {args.threads}; {args.rounds} processes x {args.repeats} interleaved calls per side")
    print(f"{'':8s}{'median wall s':>15s}{'median CPU s':>14s}{'model load s':>14s}{'peak RSS MB':>13s}")
    row = {}
    for mode in ("bare", "engine"):
        row[mode] = (median_of("times_s", mode), median_of("cpu_s", mode),
                     statistics.median(run["load_s"][mode] for run in interleaved), alone[mode]["peak_rss_mb"])
        print(f"{mode:8s}{row[mode][0]:15.3f}{row[mode][1]:14.3f}{row[mode][2]:14.2f}{row[mode][3]:13.0f}")
    wall, cpu, _, rss = (100.0 * (e - b) / b for e, b in zip(row["engine"], row["bare"]))
    same = len({v for run in interleaved for v in run["foreground_voxels"].values()}) == 1
    print(f"engine overhead: wall {wall:+.1f}%  CPU {cpu:+.1f}%  peak RSS {rss:+.1f}%  (target <= 5%); "
          f"same foreground voxel count: {same}")
    print("(wall time on a shared machine is noisy: compare the medians over more --rounds/--repeats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
