"""Preprocessing benchmark: per-stage time and peak memory of ``preprocess_subject`` after segmentation,
beside ANTs' standard quick SyN (antsRegistrationSyNQuick's settings, through ANTsPy) on the same input.

    flock /tmp/heavy.lock python benchmarks/preprocess.py [--threads 2] [--inputs 1mm 2mm]
        [--template-resolutions 1 2] [--no-reference] [--compare-t1-only]

Inputs are real scans with their real SAMSEG segmentations from ../shared/data (t1_crop at 1 mm,
256^3, and at 2 mm); the template is MNI152NLin2009aSym (nilearn's copy) at each resolution asked.
For each pair it prints the seconds and peak RSS of each stage (masks, N4, registration, resampling,
modulation, smoothing, quality), the total after segmentation (goal: <= 60 s on 2 cores), and the
template overlap (fuzzy Jaccard of the subject's GM/WM maps brought into template space and the
template's priors). The reference registers the same N4-corrected brain to the same template with
``type_of_transform="antsRegistrationSyNQuick[s]"`` and brings the same GM/WM maps across with its
transforms; the ratio is ours / reference. Peak memory per stage: VmHWM after resetting it
(/proc/self/clear_refs, Linux) at the start of each stage. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "SegmentationSuite"))
sys.path.insert(0, str(REPO / "benchmarks"))

INPUTS = {"1mm": ("t1_crop.nii.gz", "t1_crop_1mm"), "2mm": ("t1_crop_2mm.nii.gz", "t1_crop_2mm")}
# progress messages of preprocess_subject that open a stage -> the stage's name in its ``seconds``
STAGE_STARTS = {"N4": "n4", "registration to": "registration", "resampling to": "resampling",
                "modulation": "modulation", "smoothing": "smoothing", "quality": "quality"}


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_gib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


class StagePeaks:
    """A progress callback that records the peak RSS of each stage of preprocess_subject."""

    def __init__(self):
        self.stage, self.peaks = "masks", {}
        reset_peak_rss()

    def __call__(self, fraction, message) -> None:
        for start, stage in STAGE_STARTS.items():
            if str(message).startswith(start) and stage != self.stage:
                self.close()
                self.stage = stage
                reset_peak_rss()

    def close(self) -> None:
        self.peaks[self.stage] = peak_rss_gib()


def run_ours(image: str, seg: str, template, threads: int, tissue_channels: bool = True):
    from segsuite.morphometry.files import result_from_files
    from segsuite.preprocess import preprocess_subject

    result = result_from_files(seg, subject="bench")
    peaks = StagePeaks()
    begin, cpu = time.perf_counter(), time.process_time()
    preprocessed = preprocess_subject(image, result, template, threads=threads, tissue_channels=tissue_channels,
                                      progress=peaks)
    total, cpu = time.perf_counter() - begin, time.process_time() - cpu
    peaks.close()
    return preprocessed, total, cpu, peaks.peaks


def template_overlaps(maps_in_template: dict, template) -> dict:
    from segsuite.preprocess.quality import fuzzy_jaccard

    return {tissue: fuzzy_jaccard(maps_in_template[tissue], prior) for tissue, prior in template.priors.items()}


def run_reference(preprocessed, seg: str, template, folder: str):
    """antsRegistrationSyNQuick[s] of the same brain to the same template; GM/WM maps through its transforms."""
    import ants
    import nibabel as nib
    import numpy as np

    from segsuite.morphometry import tissues

    def save(name, data, affine):
        path = os.path.join(folder, name)
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
        return path

    labels = nib.load(seg)
    maps, _ = tissues.tissue_maps_from_labels(np.asarray(labels.dataobj).astype(np.int32))
    fixed = ants.image_read(save("template.nii.gz", template.t1, template.affine))
    moving = ants.image_read(save("brain.nii.gz", preprocessed.brain, preprocessed.native_affine))
    reset_peak_rss()
    begin, cpu = time.perf_counter(), time.process_time()
    registration = ants.registration(fixed, moving, type_of_transform="antsRegistrationSyNQuick[s]",
                                     outprefix=os.path.join(folder, "syn_"))
    seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu
    warped = {}
    for tissue in template.priors:
        moving_map = ants.image_read(save(f"{tissue}.nii.gz", maps[tissue], labels.affine))
        warped[tissue] = ants.apply_transforms(fixed, moving_map, registration["fwdtransforms"],
                                               interpolator="linear").numpy()
    return seconds, cpu, peak_rss_gib(), template_overlaps(warped, template)


def overlap_text(overlaps: dict) -> str:
    return ", ".join(f"{tissue} {value:.3f}" for tissue, value in overlaps.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inputs", nargs="+", choices=sorted(INPUTS), default=["1mm", "2mm"])
    parser.add_argument("--template-resolutions", nargs="+", type=float, choices=(1.0, 2.0), default=[1.0, 2.0])
    parser.add_argument("--no-reference", action="store_true", help="skip the ANTs SyNQuick reference runs")
    parser.add_argument("--compare-t1-only", action="store_true",
                        help="also run ours with the T1w alone driving the registration (default: T1w + GM/WM maps)")
    args = parser.parse_args()
    # ITK (SimpleITK, ANTs) reads its thread count when first loaded
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if not SHARED.is_dir():
        sys.exit(f"the shared data folder {SHARED} is absent: this benchmark runs on its real scans")
    from synthseg_cpu import cpu_info

    from segsuite.preprocess.templates import NLIN2009A, load_template

    print(f"CPU {cpu_info()['model']}, {os.cpu_count()} cores, {args.threads} threads; "
          "timings on a shared machine are noisy")
    for resolution in args.template_resolutions:
        template = load_template(NLIN2009A, resolution=resolution)
        for name in args.inputs:
            image_name, seg_folder = INPUTS[name]
            image = str(SHARED / "data" / "t1" / image_name)
            seg = str(SHARED / "data" / "samseg" / seg_folder / "seg.mgz")
            preprocessed, total, cpu, peaks = run_ours(image, seg, template, args.threads)
            stages = ", ".join(f"{stage} {seconds:.1f} s / {peaks.get(stage, float('nan')):.2f} GiB"
                               for stage, seconds in preprocessed.seconds.items())
            ours = template_overlaps(preprocessed.probseg, template)
            print(f"\ninput {name} ({image_name}, SAMSEG seg) -> {template.name} at {resolution:g} mm")
            print(f"  ours (greedy, T1w + GM/WM maps): {stages}")
            print(f"  ours total {total:.1f} s wall, {cpu:.1f} s CPU (goal <= 60 s wall), registration {preprocessed.seconds['registration']:.1f} s "
                  f"{preprocessed.registration.seconds}; overlap {overlap_text(ours)}"
                  f"; modulated GM {preprocessed.metrics['modulated_GM_mm3'] / 1e3:.1f} cm3 vs native "
                  f"{preprocessed.metrics['native_GM_mm3'] / 1e3:.1f} cm3")
            if args.compare_t1_only:
                t1_only, total_t1, cpu_t1, _ = run_ours(image, seg, template, args.threads, tissue_channels=False)
                print(f"  ours, T1w alone: total {total_t1:.1f} s wall, {cpu_t1:.1f} s CPU, registration "
                      f"{t1_only.seconds['registration']:.1f} s; overlap "
                      f"{overlap_text(template_overlaps(t1_only.probseg, template))}"
                      f"; tpm_overlap (MRIQC, in the subject) GM {t1_only.metrics['tpm_overlap_gm']:.3f} vs "
                      f"{preprocessed.metrics['tpm_overlap_gm']:.3f} with the T1w + GM/WM maps")
            if args.no_reference:
                continue
            with tempfile.TemporaryDirectory(prefix="preprocess_bench_") as folder:
                seconds, reference_cpu, peak, reference = run_reference(preprocessed, seg, template, folder)
            print(f"  ANTs antsRegistrationSyNQuick[s] (antspyx): registration {seconds:.1f} s wall, "
                  f"{reference_cpu:.1f} s CPU, peak {peak:.2f} GiB; "
                  f"overlap {overlap_text(reference)}")
            print(f"  ratio ours/ANTs (wall): registration {preprocessed.seconds['registration'] / seconds:.2f}, "
                  f"whole preprocessing {total / seconds:.2f}; CPU time {cpu / reference_cpu:.2f}; overlap difference " +
                  ", ".join(f"{tissue} {ours[tissue] - reference[tissue]:+.3f}" for tissue in reference))


if __name__ == "__main__":
    main()
