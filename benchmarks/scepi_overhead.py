"""Wall time and peak memory of the sc_epi engine against a bare nnUNetPredictor call on the same input.

Each side runs in its own process (so peak RSS is its own): load the model once, one warm-up call,
then --repeats timed calls on the same image. The bare side is what a user of nnU-Net would write:
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


def child(mode: str, model: str, image_path: str, repeats: int, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    if mode == "engine":
        from segsuite.scepi import ScEpiEngine

        engine = ScEpiEngine(model, device="cpu", threads=threads)

        def once():
            return engine.segment(image_path).labels
    else:
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
            return predictor.predict_single_npy_array(data.transpose(2, 1, 0)[None], {"spacing": spacing})
    load_seconds = time.perf_counter() - started
    once()  # warm-up
    times, cpu_times = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        labels = once()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    return {"mode": mode, "load_s": load_seconds, "times_s": times, "cpu_s": cpu_times, "median_s": statistics.median(times),
            "peak_rss_mb": peak_rss_mb(), "foreground_voxels": int((np.asarray(labels) > 0).sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument("--model", help="an nnU-Net model folder or zip (default: build a random one)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating engine/bare process pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=("engine", "bare"), help=argparse.SUPPRESS)
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
        results = {"engine": [], "bare": []}
        for _ in range(args.rounds):
            for mode in ("bare", "engine"):
                command = [sys.executable, __file__, "--child", mode, "--model", model, "--input", args.input,
                           "--repeats", str(args.repeats), "--threads", str(args.threads)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                results[mode].append(json.loads(output.strip().splitlines()[-1]))

    def summary(mode):
        runs = results[mode]
        times = [t for run in runs for t in run["times_s"]]
        cpu = [t for run in runs for t in run["cpu_s"]]
        return (statistics.median(times), statistics.median(cpu), max(run["peak_rss_mb"] for run in runs),
                statistics.median(r["load_s"] for r in runs))

    import nibabel as nib

    print(f"input: {args.input} {nib.load(args.input).shape}; model: {args.model or 'random ' + args.size}; "
          f"threads: {args.threads}; {args.rounds} x {args.repeats} timed calls per side")
    engine_time, engine_cpu, engine_rss, engine_load = summary("engine")
    bare_time, bare_cpu, bare_rss, bare_load = summary("bare")
    same = {r["foreground_voxels"] for r in results["engine"] + results["bare"]}
    print(f"{'':8s}{'median wall s':>15s}{'median CPU s':>14s}{'model load s':>14s}{'peak RSS MB':>13s}")
    print(f"{'bare':8s}{bare_time:15.3f}{bare_cpu:14.3f}{bare_load:14.2f}{bare_rss:13.0f}")
    print(f"{'engine':8s}{engine_time:15.3f}{engine_cpu:14.3f}{engine_load:14.2f}{engine_rss:13.0f}")
    overhead = 100.0 * (engine_time - bare_time) / bare_time
    cpu_overhead = 100.0 * (engine_cpu - bare_cpu) / bare_cpu
    rss_overhead = 100.0 * (engine_rss - bare_rss) / bare_rss
    print(f"engine overhead: wall {overhead:+.1f}%  CPU {cpu_overhead:+.1f}%  peak RSS {rss_overhead:+.1f}%  "
          f"(target <= 5%); same foreground voxel count: {len(same) == 1}")
    print("(wall time on a shared machine is noisy: compare CPU time, and rerun with more --rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
