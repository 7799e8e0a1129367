"""One morphometry for both commands: `segsuite synthseg --morphometry` (the engine's result in memory) and
`segsuite morphometry --seg --post --qc` (SynthSeg's files read back) give the same table; label-map
inputs are checked as labels."""

from __future__ import annotations

import csv
import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from segsuite.cli import main
from segsuite.image import OutputTransaction
from segsuite.morphometry.files import result_from_files
from segsuite.morphometry.subject import compute_morphometry, structure_volumes
from segsuite.result import SegmentationResult
from segsuite.synthseg import labels as synthseg_labels
from segsuite.synthseg.engine import label_table_for
from segsuite.table_values import volume_text

from test_morphometry import _phantom

# SynthSeg's labels (in channel order) and a --parc label map's: parcels in place of the cortex
CHANNELS = [int(v) for v in synthseg_labels.LABELS_V2]
PARC_TABLE = [v for v in CHANNELS if v not in synthseg_labels.CORTEX_LABELS] + \
    [int(v) for v in synthseg_labels.PARC_LABELS[1:]]


def _table(path):
    with open(path, newline="") as handle:
        header, row = list(csv.reader(handle, delimiter="\t"))
    return header, row


def _assert_same_rows(first, second, rel=1e-12):
    """The same columns in the same order, text cells equal, numbers equal to ``rel`` (float64 sums of
    the same posteriors taken in two memory layouts differ in the last bits)."""
    assert first[0] == second[0]
    for name, one, other in zip(first[0], first[1], second[1]):
        try:
            assert float(one) == pytest.approx(float(other), rel=rel, abs=1e-9), name
        except ValueError:
            assert one == other, name


def _engine_like_result(parcellated: bool):
    """A SynthSeg-shaped result: posteriors for all 33 channels seen through reversed, permuted axes (as
    the engine's are), a label map with parcels in place of the cortex when ``parcellated``."""
    image, labels = _phantom(shape=(36, 40, 34))
    rng = np.random.default_rng(3)
    present = np.zeros(labels.shape + (len(CHANNELS),), dtype=np.float32)
    for index, value in enumerate(CHANNELS):
        present[..., index] = (labels == value) + 0.02 * rng.random(labels.shape)
    present /= present.sum(axis=-1, keepdims=True)
    channel_first = np.ascontiguousarray(np.moveaxis(present, -1, 0)[:, ::-1, :, ::-1].transpose(0, 2, 1, 3))
    posteriors = np.moveaxis(channel_first.transpose(0, 2, 1, 3)[:, ::-1, :, ::-1], 0, -1)
    assert np.array_equal(posteriors, present)
    if parcellated:  # the left cortex (3) split into two parcels, the right one (42) left empty
        labels = labels.copy()
        cortex = labels == 3
        labels[cortex & (np.indices(labels.shape)[0] < 18)] = 1028
        labels[cortex & (np.indices(labels.shape)[0] >= 18)] = 1035
    affine = np.array([[-1.0, 0, 0, 20], [0, 0, 1.0, -30], [0, -1.0, 0, 25], [0, 0, 0, 1]])
    result = SegmentationResult(labels=labels, affine=affine,
                                label_table=label_table_for(PARC_TABLE if parcellated else CHANNELS),
                                posteriors=posteriors, posterior_labels=CHANNELS, posteriors_affine=affine,
                                qc={name: 0.8 for name in synthseg_labels.QC_NAMES},
                                measures={synthseg_labels.TOTAL_INTRACRANIAL: 1.0}, subject="phantom")
    return image, result


def _save_as_synthseg_does(folder, image, result):
    """The files `segsuite synthseg --o --post --qc` writes for this result (its own writer calls)."""
    from segsuite.synthseg.outputs import csv_text, qc_row

    paths = {name: str(folder / name) for name in ("t1.nii.gz", "seg.nii.gz", "post.nii.gz", "qc.csv")}
    with OutputTransaction() as transaction:
        transaction.save_image(paths["t1.nii.gz"], image, result.affine)
        transaction.save_image(paths["seg.nii.gz"], result.labels.astype(np.int32), result.affine)
        transaction.save_image(paths["post.nii.gz"], result.posteriors.astype(np.float32), result.posteriors_affine)
        transaction.write_text(paths["qc.csv"], csv_text(list(result.qc), [qc_row("t1", result.qc)], shared=True))
    return paths


@pytest.mark.parametrize("parcellated", [False, True])
def test_the_engine_result_and_its_files_give_the_same_morphometry(tmp_path, parcellated):
    image, result = _engine_like_result(parcellated)
    paths = _save_as_synthseg_does(tmp_path, image, result)
    in_memory = compute_morphometry(paths["t1.nii.gz"], result, subject="t1")
    from_files = compute_morphometry(paths["t1.nii.gz"], result_from_files(
        paths["seg.nii.gz"], paths["post.nii.gz"], paths["qc.csv"], subject="t1"), subject="t1")
    assert list(in_memory.volumes) == list(from_files.volumes)
    for name, volume in in_memory.volumes.items():
        assert from_files.volumes[name] == pytest.approx(volume, rel=1e-12, abs=1e-9), name
    assert from_files.tiv == pytest.approx(in_memory.tiv, rel=1e-12) and from_files.tiv_source == in_memory.tiv_source
    assert from_files.qc == in_memory.qc
    assert from_files.metrics == pytest.approx(in_memory.metrics, rel=1e-12, nan_ok=True)
    for tissue in in_memory.tissue_maps:
        assert np.array_equal(in_memory.tissue_maps[tissue], from_files.tissue_maps[tissue])
    # soft volumes: a channel's posterior sum, not its voxel count; zero-volume structures keep their column
    white = CHANNELS.index(2)
    assert in_memory.volumes["Left-Cerebral-White-Matter"] == pytest.approx(
        float(np.sum(result.posteriors[..., white], dtype=np.float64)), rel=1e-9)
    assert in_memory.volumes["Left-Cerebral-White-Matter"] != pytest.approx(float((result.labels == 2).sum()), rel=1e-3)
    for value in CHANNELS[1:]:
        assert freesurfer_name(value) in in_memory.volumes
    # TIV: the non-background posterior mass, the same number as the three tissue maps' sum
    assert in_memory.tiv == pytest.approx(float(np.sum(result.posteriors[..., 1:], dtype=np.float64)), rel=1e-9)
    if parcellated:  # the cortex keeps its (soft) column; the parcels add up to it, the empty ones are 0
        cortex = in_memory.volumes["Left-Cerebral-Cortex"] + in_memory.volumes["Right-Cerebral-Cortex"]
        parcels = [name for name in in_memory.volumes if name.startswith("ctx-")]
        assert len(parcels) == len(synthseg_labels.PARC_LABELS) - 1
        assert sum(in_memory.volumes[name] for name in parcels) == pytest.approx(cortex, rel=1e-9)
        assert in_memory.volumes["ctx-rh-insula"] == 0.0 and in_memory.volumes["ctx-lh-insula"] > 0


def freesurfer_name(value):
    from segsuite.labels import freesurfer_lut

    return freesurfer_lut().name(value)


def test_label_volumes_without_posteriors_keep_every_structure_of_the_table():
    image, result = _engine_like_result(parcellated=False)
    result.posteriors = result.posterior_labels = result.posteriors_affine = None
    volumes = structure_volumes(result)
    assert set(volumes) == {freesurfer_name(v) for v in CHANNELS[1:]}
    assert volumes["Left-Cerebral-White-Matter"] == float((result.labels == 2).sum())
    assert volumes["Left-Hippocampus"] == 0.0


@pytest.mark.slow
def test_synthseg_morphometry_and_morphometry_on_its_files_write_the_same_table(shared, tmp_path):
    """The real commands on a real scan: SynthSeg (fixture weights, --parc --qc --fast) with --morphometry,
    then segsuite morphometry on the files it wrote."""
    models = tmp_path / "models"
    models.mkdir()
    for packed in sorted(shared("fixtures", "synthseg", "models").glob("*.h5.gz")):
        with gzip.open(packed, "rb") as reader, open(models / packed.name[:-3], "wb") as writer:
            shutil.copyfileobj(reader, writer)
    image = str(shared("data", "t1", "nibabel_anatomical_2mm_small.nii"))
    out = tmp_path / "out"
    assert main(["--progress", "none", "synthseg", "--i", image, "--o", str(out / "seg.nii.gz"),
                 "--post", str(out / "post.nii.gz"), "--qc", str(out / "qc.csv"), "--parc", "--fast",
                 "--model", str(models), "--threads", "2", "--cpu", "--morphometry", str(tmp_path / "a")]) == 0
    prefix = "nibabel_anatomical_2mm_small.nii"  # SynthSeg's subject name keeps '.nii'
    assert main(["morphometry", "--i", image, "--seg", str(out / "seg.nii.gz"), "--post", str(out / "post.nii.gz"),
                 "--qc", str(out / "qc.csv"), "--o", str(tmp_path / "b"), "--prefix", prefix]) == 0
    first = _table(tmp_path / "a" / f"{prefix}_morphometry.tsv")
    second = _table(tmp_path / "b" / f"{prefix}_morphometry.tsv")
    _assert_same_rows(first, second)
    header = first[0]
    assert "Left-Cerebral-Cortex" in header and "ctx-lh-insula" in header and "qc_general grey matter" in header
    assert all(freesurfer_name(v) in header for v in CHANNELS[1:])
    posteriors = nib.load(str(out / "post.nii.gz"))
    voxel = float(np.prod(posteriors.header.get_zooms()[:3]))
    white = float(np.sum(np.asarray(posteriors.dataobj)[..., CHANNELS.index(2)], dtype=np.float64)) * voxel
    assert first[1][header.index("Left-Cerebral-White-Matter")] == volume_text(white)  # as written: 0.01 mm3


@pytest.mark.parametrize("image_name, message", [("t1_crop_2mm.nii.gz", "looks like an intensity image"),
                                                  ("seg3d_MR_T1_clinical.nii.gz", "non-integer")])
def test_an_intensity_image_given_as_the_label_map_is_refused_in_one_line(shared, tmp_path, capsys,
                                                                          image_name, message):
    image = str(shared("data", "t1", image_name))
    assert main(["morphometry", "--i", image, "--seg", image, "--o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "--seg" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
