"""Morphometry in the Slicer tables (real MRML from slicer-core): TIV-proportional volumes, metrics in QC."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
mrml = pytest.importorskip("segsuite_slicer.mrml")

from segsuite.labels import freesurfer_lut  # noqa: E402
from segsuite.morphometry.quality import DEFINITIONS  # noqa: E402
from segsuite.result import SegmentationResult  # noqa: E402


def test_volumes_table_gains_the_tiv_proportional_column_and_qc_the_metrics():
    scene = slicer.vtkMRMLScene()
    labels = np.zeros((10, 10, 10), dtype=np.int32)
    labels[2:5] = 17
    result = SegmentationResult(labels=labels, affine=np.eye(4), label_table=freesurfer_lut().subset([0, 17]),
                                volumes={"Left-Hippocampus": 3000.0}, qc={"general grey matter": 0.8}, subject="s")
    volumes = mrml.add_volumes_table(result, scene=scene)
    qc = mrml.add_qc_table(result, scene=scene)
    mrml.add_morphometry_columns(volumes, qc, tiv=1_200_000.0, metrics={"spec_snr": 12.5, "mriqc_cjv": 0.4},
                                 definitions=DEFINITIONS)
    columns = mrml.table_to_dict(volumes)
    assert columns["Volume (TIV 1.5 L)"] == pytest.approx([3000.0 / 1.2e6 * 1.5e6])
    assert volumes.GetColumnUnitLabel("Volume (TIV 1.5 L)") == "mm3"
    rows = mrml.table_to_dict(qc)
    assert rows["Measure"] == ["general grey matter", "spec_snr", "mriqc_cjv"]
    assert rows["Value"] == pytest.approx([0.8, 12.5, 0.4])
    assert "UK Biobank" in rows["Unit"][1] and "MRIQC" in rows["Unit"][2]
