"""Tables that read cleanly: values to the precision they mean, one missing-value marker, a warning where a
statistic cannot be estimated, identical text from identical runs."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from segsuite.cli import main
from segsuite.labels import freesurfer_lut
from segsuite.morphometry import group
from segsuite.morphometry.subject import compute_morphometry, write_morphometry
from segsuite.result import SegmentationResult
from segsuite.table_values import cell_text, frame_text, score_text, volume_text

from test_morphometry import _phantom


def test_values_are_written_to_the_precision_they_mean():
    assert score_text(float(np.float32(3.741))) == "3.741"          # not 3.740999937057495
    assert score_text(0.123456789) == "0.123457" and score_text(-2.5e-7) == "-0.00000025"
    assert score_text(1564625.356666) == "1564625.36"               # a large value keeps 0.01
    assert volume_text(np.float32(94011.5625)) == "94011.56" and volume_text(12) == "12.00"
    assert [cell_text(v) for v in (None, float("nan"), float("inf"), "")] == ["n/a"] * 4
    assert cell_text(7) == "7" and cell_text("sub-01") == "sub-01"
    frame = pd.DataFrame({"participant_id": ["sub-1", "sub-2"], "session_id": [None, "ses-1"],
                          "Left-Hippocampus": [np.float32(3740.999937), np.nan], "qc_x": [np.float32(0.741), 1.0]})
    assert frame_text(frame, ["Left-Hippocampus"]).splitlines() == [
        "participant_id\tsession_id\tLeft-Hippocampus\tqc_x", "sub-1\tn/a\t3741.00\t0.741", "sub-2\tses-1\tn/a\t1"]


def _result(subject: str, scale: float) -> tuple[SegmentationResult, np.ndarray]:
    image, labels = _phantom(seed=int(scale * 10))
    affine = np.diag([scale, 1.0, 1.0, 1.0])  # subjects of different head sizes: TIVs differ
    volumes = {"left cerebral white matter": float((labels == 2).sum()) * scale + 1 / 3,
               "left cerebral cortex": float((labels == 3).sum()) * scale + 1 / 7}
    result = SegmentationResult(labels=labels, affine=affine, label_table=freesurfer_lut().subset([0, 2, 3, 4]),
                                volumes=volumes, qc={"general grey matter": float(np.float32(0.741))},
                                measures={"total intracranial": 1.5e6 * scale + 1 / 9}, subject=subject)
    return result, image


def _cells(path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_subject_and_group_tables_round_mark_missing_and_warn(tmp_path, capsys):
    tables = []
    for number, scale in ((1, 1.0), (2, 1.1)):
        result, image = _result(f"sub-{number}", scale)
        morphometry = compute_morphometry((image, result.affine), result)
        paths = write_morphometry(morphometry, str(tmp_path / f"sub-{number}"), f"sub-{number}", result=result)
        tables.append(paths["table"])
    header, row = _cells(tmp_path / "sub-1" / "sub-1_morphometry.tsv")
    cells = dict(zip(header, row))
    assert cells["session_id"] == "n/a" and cells["qc_general grey matter"] == "0.741"
    for column in ("TIV", "Left-Cerebral-White-Matter", "Left-Cerebral-Cortex", "tissue-GM"):
        assert re.fullmatch(r"-?\d+\.\d\d", cells[column]), (column, cells[column])
    metrics = [value for name, value in cells.items() if name.startswith(("spec_", "mriqc_"))]
    assert metrics and all(len(re.sub(r"[-.]|^0\.0*", "", value)) <= 6 for value in metrics if value != "n/a")

    # two subjects: the residual TIV correction cannot be estimated; it says so and writes n/a
    assert main(["group", *tables, "--o", str(tmp_path / "group")]) == 0
    err = capsys.readouterr().err
    assert "segsuite group: warning: the residual TIV correction needs at least 3 subjects" in err
    residual = _cells(tmp_path / "group" / "group_volumes_tiv-residual.tsv")
    assert all(value == "n/a" for line in residual[1:] for value in line[3:])
    for name in group.GROUP_FILES.values():
        lines = _cells(tmp_path / "group" / name)
        if "session_id" in lines[0]:
            column = lines[0].index("session_id")
            assert [line[column] for line in lines[1:]] == ["n/a", "n/a"], name
        assert all(value != "" for line in lines[1:] for value in line), name
    wide = dict(zip(*_cells(tmp_path / "group" / "group_volumes.tsv")[:2]))
    assert wide["TIV"] == cells["TIV"] and wide["Left-Cerebral-Cortex"] == cells["Left-Cerebral-Cortex"]

    # a third subject: estimated, no warning; and identical runs give identical bytes
    result, image = _result("sub-3", 0.9)
    tables.append(write_morphometry(compute_morphometry((image, result.affine), result), str(tmp_path / "sub-3"),
                                    "sub-3", result=result)["table"])
    for run in ("a", "b"):
        assert main(["group", *tables, "--o", str(tmp_path / f"group3{run}")]) == 0
    assert "warning" not in capsys.readouterr().err
    for name in group.GROUP_FILES.values():
        assert (tmp_path / "group3a" / name).read_bytes() == (tmp_path / "group3b" / name).read_bytes(), name
    residual = pd.read_csv(tmp_path / "group3a" / "group_volumes_tiv-residual.tsv", sep="\t", na_values=["n/a"])
    assert residual["Left-Cerebral-Cortex"].notna().all()


def test_residual_correction_leaves_two_point_fits_unestimated():
    volumes = np.array([[1.0], [2.0]])
    residuals, slopes, intercepts = group.residual_correction(volumes, np.array([1e6, 2e6]))
    assert np.isnan(residuals).all() and np.isnan(slopes).all() and np.isnan(intercepts).all()
    residuals, slopes, _ = group.residual_correction(np.array([[1.0], [2.0], [2.5]]), np.array([1e6, 2e6, 3e6]))
    assert np.isfinite(residuals).all() and slopes[0] == pytest.approx(0.75e-6)
