"""A SegmentationResult from SynthSeg's output files (label map, posteriors, QC CSV)."""

from __future__ import annotations

import csv
from typing import Optional

import numpy as np

from ..errors import InputError
from ..image import load_volume, squeeze_to_3d
from ..labels import check_label_map
from ..result import SegmentationResult


def result_from_files(seg: str, post: Optional[str] = None, qc: Optional[str] = None, etiv: Optional[float] = None,
                      subject: str = "") -> SegmentationResult:
    """The label map (and posteriors: 33 channels are SynthSeg 2.0's labels, 32 SynthSeg 1.0's) as a result."""
    from ..synthseg import labels as synthseg_labels
    from ..synthseg.engine import label_table_for

    labels_volume = load_volume(seg, dtype=None)
    labels = check_label_map(squeeze_to_3d(np.asarray(labels_volume.data), f"the label map {seg}"), seg,
                             "the label map SynthSeg wrote (--o) to --seg")
    posteriors = posterior_labels = posteriors_affine = None
    if post:
        post_volume = load_volume(post)
        posteriors = np.asarray(post_volume.data, dtype=np.float32)
        channels = posteriors.shape[-1] if posteriors.ndim == 4 else 0
        known = {len(synthseg_labels.LABELS_V2): synthseg_labels.LABELS_V2, len(synthseg_labels.LABELS_V1): synthseg_labels.LABELS_V1}
        if channels not in known:
            raise InputError(f"{post} has shape {posteriors.shape}: expected SynthSeg posteriors with 33 (2.0) or "
                             "32 (1.0) channels in the 4th dimension")
        posterior_labels = [int(v) for v in known[channels]]
        posteriors_affine = post_volume.affine
    result = SegmentationResult(labels=labels, affine=labels_volume.affine,
                                label_table=label_table_for(_table_values(labels, posterior_labels)),
                                posteriors=posteriors, posterior_labels=posterior_labels,
                                posteriors_affine=posteriors_affine, subject=subject,
                                provenance={"engine": "files", "segmentation": seg, "posteriors": post})
    if qc:
        result.qc = read_synthseg_qc(qc)
    if etiv is not None:
        result.measures["eTIV"] = float(etiv)
        result.provenance["eTIV_from"] = "given by the user"
    return result


def _table_values(labels: np.ndarray, posterior_labels: Optional[list[int]]) -> list[int]:
    """The label table SynthSeg's engine gives its result, when every label present is SynthSeg's
    (with --parc: the parcels in place of the cortex), so that structures of zero volume keep their
    row; else the labels present."""
    from ..synthseg import labels as synthseg_labels
    from .tissues import distinct_labels

    present = [int(v) for v in distinct_labels(labels)]
    structures = list(posterior_labels or synthseg_labels.LABELS_V2)
    parcels = [int(v) for v in synthseg_labels.PARC_LABELS[1:]]
    if not set(present) <= set(structures) | set(parcels):
        return present
    if any(value in parcels for value in present):
        return [v for v in structures if v not in synthseg_labels.CORTEX_LABELS] + parcels
    return structures


def read_synthseg_qc(path: str) -> dict[str, float]:
    """The first row of a SynthSeg QC CSV (subject column, then one score per structure group)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise InputError(f"cannot read the QC CSV {path}: {error.strerror}") from error
    if len(rows) < 2 or len(rows[0]) < 2:
        raise InputError(f"{path} is not a SynthSeg QC CSV (expected a header and a row of scores)")
    try:
        return {name: float(value) for name, value in zip(rows[0][1:], rows[1][1:])}
    except ValueError as error:
        raise InputError(f"{path}: a QC score is not a number ({error})") from error
