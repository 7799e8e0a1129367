"""Morphometry benchmark: the per-subject cost of the morphometry step after the SynthSeg run it follows.

    flock /tmp/heavy.lock python benchmarks/morphometry.py [--threads 2] [--repeats 3] [--image PATH] [--model FOLDER]

Runs SynthSeg 2.0 (default mode, posteriors kept; fixture weights unless --model) once on a 1 mm head
(../shared/data/t1/t1_crop.nii.gz, 256^3), then compute_morphometry on its result --repeats times
(tissue maps from the 33 posteriors, dseg, masks, every metric, TIV, volumes, the report mosaic) and
write_morphometry once (compressed NIfTI outputs). Prints each step's seconds and the ratio to SynthSeg
(goal: < 5 %). Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SegmentationSuite"))
sys.path.insert(0, str(REPO / "benchmarks"))

from synthseg_cpu import SHARED, cpu_info, unpack_fixture_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default=str(SHARED / "data" / "t1" / "t1_crop.nii.gz"))
    parser.add_argument("--model")
    args = parser.parse_args()
    import numpy as np

    from segsuite.image import load_volume
    from segsuite.morphometry.subject import compute_morphometry, write_morphometry
    from segsuite.synthseg import SynthSegEngine

    model = args.model
    if model is None:
        model = tempfile.mkdtemp(prefix="morphometry_bench_models_")
        unpack_fixture_models(Path(model))
    out = tempfile.mkdtemp(prefix="morphometry_bench_")
    try:
        engine = SynthSegEngine(model=model, posteriors=True, device="cpu", threads=args.threads)
        volume = load_volume(args.image)
        begin = time.perf_counter()
        result = engine.segment(volume)
        synthseg_s = time.perf_counter() - begin
        print(f"CPU {cpu_info()['model']}, {os.cpu_count()} cores; "
              "timings on a shared machine are noisy")
        print(f"image {args.image} {volume.data.shape}, {args.threads} threads; SynthSeg default {synthseg_s:.1f} s "
              f"(posteriors {result.posteriors.shape})")
        times = []
        for _ in range(args.repeats):
            begin = time.perf_counter()
            morphometry = compute_morphometry(volume, result)
            times.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        write_morphometry(morphometry, out, "bench", result=result)
        write_s = time.perf_counter() - begin
        best, median = min(times), float(np.median(times))
        stages = ", ".join(f"{stage} {value:.2f}" for stage, value in morphometry.provenance["seconds"].items())
        print(f"stages of the last run (s): {stages}")
        print(f"compute_morphometry: median {median:.2f} s, best {best:.2f} s over {args.repeats} runs "
              f"= {100 * median / synthseg_s:.1f} % of SynthSeg")
        print(f"write_morphometry (3 probseg + dseg + mask .nii.gz, tables, aseg.stats, mosaic): {write_s:.2f} s; "
              f"step total {100 * (median + write_s) / synthseg_s:.1f} % of SynthSeg")
        print(f"TIV {morphometry.tiv:.0f} mm3, spec SNR {morphometry.metrics['spec_snr']:.2f}, "
              f"spec CNR {morphometry.metrics['spec_cnr']:.2f}")
        realistic_brain(args.repeats, synthseg_s)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if args.model is None:
            shutil.rmtree(model, ignore_errors=True)


def realistic_brain(repeats: int, synthseg_s: float) -> None:
    """The fixture's random weights call nearly every voxel brain (the worst case for the box-restricted
    statistics); FreeSurfer's fsaverage (256^3, 1 mm, its aseg as the labels) gives a real brain's extent."""
    import numpy as np

    folder = SHARED / "data" / "freesurfer"
    if not (folder / "fsaverage_aseg.mgz").is_file():
        print("(no ../shared/data/freesurfer/fsaverage_aseg.mgz: realistic-extent run skipped)")
        return
    import nibabel as nib

    from segsuite.labels import freesurfer_lut
    from segsuite.morphometry.subject import compute_morphometry
    from segsuite.result import SegmentationResult

    brain = nib.load(str(folder / "fsaverage_brain.mgz"))
    labels = np.asarray(nib.load(str(folder / "fsaverage_aseg.mgz")).dataobj).astype(np.int32)
    result = SegmentationResult(labels=labels, affine=brain.affine, label_table=freesurfer_lut().subset(
        [int(v) for v in np.unique(labels)]), subject="fsaverage")
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        morphometry = compute_morphometry((np.asarray(brain.dataobj), brain.affine), result)
        times.append(time.perf_counter() - begin)
    median = float(np.median(times))
    stages = ", ".join(f"{stage} {value:.2f}" for stage, value in morphometry.provenance["seconds"].items())
    print(f"fsaverage (real brain extent, aseg as hard labels): compute_morphometry median {median:.2f} s "
          f"= {100 * median / synthseg_s:.1f} % of the SynthSeg run above; stages (s): {stages}")


if __name__ == "__main__":
    main()
