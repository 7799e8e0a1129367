"""The one result object every engine returns.

The command line turns it into files, the Slicer adapters into segmentation and table nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .labels import LabelTable


@dataclass
class SegmentationResult:
    """A segmentation with its geometry, label names and measurements.

    labels:       integer label map (FreeSurfer values), 3D, voxel grid described by ``affine``.
    affine:       4x4 voxel index -> RAS world (mm), nibabel convention.
    label_table:  the names and colours of the labels the model can produce (background included).
    posteriors:   optional (X, Y, Z, C) float32 probabilities, channel c for ``posterior_labels[c]``,
                  on the grid of ``posteriors_affine`` (which may differ from ``affine``).
    volumes:      structure name -> volume in mm3, in the order a volumes CSV writes them.
    qc:           QC score name -> value (SynthSeg QC, ScLimbic z-scores, ...).
    measures:     other named scalars (eTIV, total intracranial volume, ...), in their units.
    tables:       further named per-structure tables, e.g. {"confidences": {name: value}}.
    images:       further named 3D arrays on the grid of ``affine`` (e.g. {"brain_mask": ...}).
    units:        unit per measure/volume table name, for writers and Slicer tables.
    provenance:   model id, version, weight sha256, options, software version.
    subject:      the case name used as the row name in CSVs.
    """

    labels: np.ndarray
    affine: np.ndarray
    label_table: LabelTable
    posteriors: Optional[np.ndarray] = None
    posterior_labels: Optional[list[int]] = None
    posteriors_affine: Optional[np.ndarray] = None
    volumes: dict[str, float] = field(default_factory=dict)
    qc: dict[str, float] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)
    tables: dict[str, dict[str, float]] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=lambda: {"volumes": "mm3"})
    provenance: dict = field(default_factory=dict)
    subject: str = ""

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.labels.ndim != 3:
            raise ValueError(f"labels must be 3D, got shape {self.labels.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.posteriors is not None and self.posteriors_affine is None:
            self.posteriors_affine = self.affine

    @property
    def present_labels(self) -> list[int]:
        """Label values present in the label map, background (0) excluded."""
        return [int(v) for v in np.unique(self.labels) if v != 0]

    def label_nifti(self):
        """The label map as a nibabel NIfTI image (int32)."""
        import nibabel as nib

        image = nib.Nifti1Image(np.asarray(self.labels, dtype=np.int32), self.affine)
        image.set_qform(self.affine, code=1)
        image.set_sform(self.affine, code=1)
        return image
