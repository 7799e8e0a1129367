"""ScLimbic on CPU: per-scan wall time and peak RSS.

    python benchmarks/sclimbic_cpu.py [--threads 2] [--model PATH] [--etiv] [images ...]

Defaults: the real model from ../shared/models (else the parity fixture's random weights) and
the two real T1s of ../shared/data/t1. Prints one line per scan: wall time, CPU seconds (on a
busy machine CPU-s / threads estimates the wall time on idle cores) and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SegmentationSuite"))
SHARED = Path(os.environ.get("SEGSUITE_SHARED", ROOT.parent / "shared"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # kB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--etiv", action="store_true", help="also time eTIV by registration (template from ../shared)")
    args = parser.parse_args()

    model = args.model
    if model is None:
        real = SHARED / "models" / "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5"
        model = real if real.exists() else SHARED / "fixtures/sclimbic/models/sclimbic_fixture_seed16.h5"
    images = args.images or [str(SHARED / "data/t1/t1_crop.nii.gz"), str(SHARED / "data/t1/stroke_T1_brainextracted.nii.gz")]

    import torch

    from segsuite.sclimbic import ScLimbicEngine

    started = time.perf_counter()
    engine = ScLimbicEngine(model=model, device="cpu", threads=args.threads,
                            template=SHARED / "data/templates" if args.etiv else None)
    print(f"model {Path(model).name}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"engine ready in {time.perf_counter() - started:.1f} s")
    for image in images:
        for _ in range(args.repeat):
            marks = {}
            begin, cpu_begin = time.perf_counter(), cpu_seconds()
            result = engine.segment(image, etiv="register" if args.etiv else None,
                                    progress=lambda f, m: marks.setdefault(m, time.perf_counter() - begin))
            wall = time.perf_counter() - begin
            network = marks.get("Post-processing", 0) - marks.get("Running the network", 0)
            extra = f", eTIV {result.measures['eTIV'] / 1e6:.3f} L" if "eTIV" in result.measures else ""
            cpu = cpu_seconds() - cpu_begin
            print(f"{Path(image).name}: {wall:.1f} s wall (network {network:.1f} s), {cpu:.1f} CPU-s "
                  f"(load-independent; {cpu / args.threads:.1f} s wall on {args.threads} idle cores), "
                  f"peak RSS {peak_rss_gb():.2f} GB{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
