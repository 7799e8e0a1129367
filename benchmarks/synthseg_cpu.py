"""SynthSeg CPU benchmark: wall time per scan and peak RSS for the default and --robust modes.

    python benchmarks/synthseg_cpu.py [--threads 2] [--repeats 1] [--model FOLDER] [--image PATH]
                                      [--modes default robust] [--full-head] [--device cpu|cuda]

Each mode runs in its own process so that its peak RSS is its own. Weights: --model (a folder with
the standard file names), else the fixture weights in ../shared/fixtures/synthseg/models (unpacked
to a temporary folder); the random fixture weights cost the same time as the real ones.
Reference (TF 2.15, same weights, 192x224x192 padded input, 2 threads, quiet machine): default
73-79 s per scan (predict 54-60 s), 14.8-15.0 GiB; --robust 76-97 s, 9.1 GiB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSUITE_SHARED", REPO.parent / "shared"))
MODES = {"default": {}, "robust": {"robust": True}, "fast": {"fast": True}, "parc": {"parc": True},
         "qc": {"qc": True}}


def child(args) -> None:
    sys.path.insert(0, str(REPO / "SegmentationSuite"))
    from segsuite.synthseg import SynthSegEngine

    started = time.perf_counter()
    engine = SynthSegEngine(model=args.model, device=args.device, threads=args.threads, **MODES[args.child])
    load = time.perf_counter() - started
    times = []
    for _ in range(args.repeats):
        marks = {}
        begin = time.perf_counter()

        def progress(fraction, message):
            marks.setdefault(message, time.perf_counter() - begin)

        result = engine.segment(args.image, progress=progress)
        times.append({"wall_s": round(time.perf_counter() - begin, 2),
                      "network_s": round(marks.get("postprocessing", 0) - marks.get("segmenting", 0), 2)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    gpu_peak = None
    if args.device.startswith("cuda"):
        import torch

        gpu_peak = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    print(json.dumps({"mode": args.child, "load_s": round(load, 2), "runs": times, "peak_rss_gib": round(peak, 2),
                      "peak_gpu_gib": gpu_peak,
                      "labels_shape": list(result.labels.shape),
                      "network_input": result.provenance.get("network_input_shape")}))


def fixture_models() -> str:
    source = SHARED / "fixtures" / "synthseg" / "models"
    if not source.is_dir():
        sys.exit(f"no --model given and {source} is absent")
    folder = tempfile.mkdtemp(prefix="synthseg_bench_models_")
    for packed in source.glob("*.h5.gz"):
        with gzip.open(packed, "rb") as reader, open(os.path.join(folder, packed.name[:-3]), "wb") as writer:
            shutil.copyfileobj(reader, writer)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the figures in the docs), cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model")
    parser.add_argument("--image")
    parser.add_argument("--modes", nargs="+", default=["default", "robust"], choices=sorted(MODES))
    parser.add_argument("--full-head", action="store_true", help="segment data/t1/t1_crop.nii.gz (256^3) instead")
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.image is None:
        args.image = str(SHARED / "data" / "t1" / "t1_crop.nii.gz") if args.full_head else \
            str(SHARED / "fixtures" / "synthseg" / "inputs" / "t1_crop_fov.nii.gz")
    cleanup = None
    if args.model is None:
        args.model = cleanup = fixture_models()
    try:
        print(f"image {args.image}, {args.device}, {args.threads} threads, {args.repeats} repeat(s); "
              "timings on a shared machine are noisy")
        for mode in args.modes:
            command = [sys.executable, __file__, "--child", mode, "--device", args.device, "--threads",
                       str(args.threads), "--repeats", str(args.repeats), "--model", args.model, "--image", args.image]
            begin = time.perf_counter()
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            report = json.loads(output.strip().splitlines()[-1])
            for run in report["runs"]:
                print(f"{mode:8s} wall {run['wall_s']:7.1f} s/scan (networks {run['network_s']:6.1f} s), "
                      f"peak RSS {report['peak_rss_gib']:.2f} GiB"
                      + (f", peak GPU {report['peak_gpu_gib']:.2f} GiB" if report["peak_gpu_gib"] is not None else "")
                      + f", model load {report['load_s']:.1f} s, "
                      f"network input {report['network_input']}")
            print(f"{mode:8s} process total {time.perf_counter() - begin:.1f} s")
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)


if __name__ == "__main__":
    main()
