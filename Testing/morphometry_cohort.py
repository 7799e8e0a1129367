"""A small cohort made from ../shared's real scans and their real segmentations, for the QC report tests.

Twenty subjects cycle through three scans (SAMSEG's 2 mm run on t1_crop, FreeSurfer's mne sample
T1/aseg, the SynthSeg fixture's input and segmentation at 2 mm), each with its own intensity scale and
added noise; two get heavy noise so that the report has flagged subjects to put first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def shared_scans(shared: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    import nibabel as nib

    def load(path, dtype):
        image = nib.load(str(path))
        return np.asarray(image.dataobj).astype(dtype), image.affine

    scans = []
    samseg = shared / "data" / "samseg" / "t1_crop_2mm"
    image, affine = load(samseg / "mode01_bias_corrected.mgz", np.float32)
    scans.append(("t1crop2mm", image, load(samseg / "seg.mgz", np.int32)[0], affine))
    freesurfer = shared / "data" / "freesurfer"
    image, affine = load(freesurfer / "mne_sample_T1.mgz", np.float32)
    scans.append(("mnesample", image, load(freesurfer / "mne_sample_aseg.mgz", np.int32)[0], affine))
    fixture = shared / "fixtures" / "synthseg"
    image, affine = load(fixture / "inputs" / "t1_crop_fov.nii.gz", np.float32)
    labels = load(fixture / "runs" / "a_default_vol_qc_post_resample" / "t1_crop_fov_synthseg.nii.gz", np.int32)[0]
    halved = affine.copy()
    halved[:3, :3] *= 2
    scans.append(("synthsegfixture", image[::2, ::2, ::2], labels[::2, ::2, ::2], halved))
    return scans


def make_cohort(shared: Path, count: int = 20, seed: int = 0):
    """(participant_id, image, labels, affine, qc) for ``count`` subjects."""
    rng = np.random.default_rng(seed)
    scans = shared_scans(shared)
    cohort = []
    for number in range(count):
        name, image, labels, affine = scans[number % len(scans)]
        noise = 40.0 if number in (7, 13) else rng.uniform(0.5, 3.0)
        scaled = image * rng.uniform(0.8, 1.2) + rng.normal(0, noise, image.shape).astype(np.float32)
        qc = {"general grey matter": 0.45 if number == 13 else float(rng.uniform(0.7, 0.95))}
        cohort.append((f"sub-{number + 1:03d}{name}", np.clip(scaled, 0, None), labels, affine, qc))
    return cohort


def morphometry_of_cohort(cohort):
    """Per-subject tables and the review report's view sources, as the group step gathers them."""
    from segsuite.labels import freesurfer_lut
    from segsuite.morphometry.subject import compute_morphometry
    from segsuite.result import SegmentationResult
    from segsuite.review.views import ViewSource

    rows, sources = [], []
    for participant, image, labels, affine, qc in cohort:
        values = [int(v) for v in np.unique(labels)]
        result = SegmentationResult(labels=labels, affine=affine, label_table=freesurfer_lut().subset(values),
                                    qc=qc, subject=participant)
        morphometry = compute_morphometry((image, affine), result)
        rows.append(morphometry.table_row(participant, ""))
        sources.append(ViewSource(participant, "", "morphometry", (image, affine), (labels, affine),
                                  title="segmentation over the image"))
    return rows, sources
