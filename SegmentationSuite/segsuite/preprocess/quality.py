"""Registration and bias QC with MRIQC's definitions (mriqc 24.0.2, interfaces/anatomical.py):
``inu_range`` / ``inu_med`` of the N4 field over the brain's tissue voxels, and ``tpm_overlap_*``,
the fuzzy Jaccard index of the subject's tissue maps and the template priors brought into the subject.
"""

from __future__ import annotations

import numpy as np


def inu_metrics(field: np.ndarray, tissue_mask: np.ndarray) -> dict[str, float]:
    """inu_range: |95th - 5th percentile| of the bias field in the mask; inu_med: its median."""
    values = np.asarray(field, dtype=np.float64)[np.asarray(tissue_mask, dtype=bool)]
    if values.size == 0:
        return {"inu_range": float("nan"), "inu_med": float("nan")}
    p05, p50, p95 = np.percentile(values, [5.0, 50.0, 95.0])
    return {"inu_range": float(abs(p95 - p05)), "inu_med": float(p50)}


def fuzzy_jaccard(subject_map: np.ndarray, prior: np.ndarray) -> float:
    """sum(min(a, b)) / sum(max(a, b)) over all voxels (MRIQC's tpm_overlap)."""
    a = np.asarray(subject_map, dtype=np.float64)
    b = np.asarray(prior, dtype=np.float64)
    denominator = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / denominator) if denominator > 0 else float("nan")


def tpm_overlaps(tissue_maps: dict[str, np.ndarray], priors_in_subject: dict[str, np.ndarray]) -> dict[str, float]:
    """tpm_overlap_{csf,gm,wm} for the tissues the template has priors of."""
    return {f"tpm_overlap_{tissue.lower()}": fuzzy_jaccard(tissue_maps[tissue], prior)
            for tissue, prior in priors_in_subject.items() if tissue in tissue_maps}
