"""The Python API a console user expects: a short repr, result.save(path), images with their affine, one
naming scheme for volumes and labels, and README's snippet running offline on the installed models."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segsuite.cli import main
from segsuite.errors import OutputExistsError
from segsuite.result import ImageArray, SegmentationResult
from segsuite.result_io import load_result_bundle
from segsuite.synthseg import labels as synthseg_labels
from segsuite.synthseg.engine import label_table_for, volume_table

REPO = Path(__file__).resolve().parents[1]
AFFINE = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -120], [0, -1.1, 0, 100], [0, 0, 0, 1]])


def _synthseg_like_result():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array(synthseg_labels.LABELS_V2), size=(40, 48, 36)).astype(np.int32)
    names = synthseg_labels.volume_names(synthseg_labels.segmentation_labels())
    volumes = volume_table(names, rng.uniform(100, 2000, len(names)))
    posteriors = rng.random((40, 48, 36, 33)).astype(np.float32)
    return SegmentationResult(labels=labels, affine=AFFINE, label_table=label_table_for(list(synthseg_labels.LABELS_V2)),
                              posteriors=posteriors, posterior_labels=list(synthseg_labels.LABELS_V2), volumes=volumes,
                              qc={name: 0.9 for name in synthseg_labels.QC_NAMES},
                              measures={"total intracranial": 1.5e6}, images={"brain_mask": labels > 0},
                              provenance={"model": "SynthSeg 2.0"}, subject="t1")


def test_repr_is_one_short_line_without_arrays_or_volumes():
    result = _synthseg_like_result()
    text = repr(result)
    assert "\n" not in text and len(text) < 300
    assert "array(" not in text and "Left-Hippocampus" not in text and "1.5e6" not in str(text)
    assert text.startswith("SegmentationResult(subject='t1', model='SynthSeg 2.0', labels=(40, 48, 36) int32")
    assert "posteriors=33 channels" in text and "volumes=33" in text and "images=['brain_mask']" in text
    assert repr(result.images["brain_mask"]) == "ImageArray(shape=(40, 48, 36), dtype=bool, voxel sizes 1 x 1.1 x 1.2 mm)"


def test_volumes_use_the_label_tables_names_and_still_find_synthsegs():
    result = _synthseg_like_result()
    assert result.label_table.name(17) == "Left-Hippocampus"
    assert "Left-Hippocampus" in list(result.volumes)
    assert result.volumes["Left-Hippocampus"] == result.volumes["left hippocampus"]
    assert "left hippocampus" in result.volumes and result.volumes.get("left ventral DC") == result.volumes["Left-VentralDC"]
    for label in result.label_table:
        if label.value:
            assert label.name in result.volumes, label
    # SynthSeg's CSV keeps the reference's header
    assert result.volumes.reference_names() == synthseg_labels.volume_names(synthseg_labels.segmentation_labels())
    with pytest.raises(KeyError):
        result.volumes["no such structure"]


def test_images_carry_their_affine_and_stay_arrays(tmp_path):
    result = _synthseg_like_result()
    mask = result.images["brain_mask"]
    assert isinstance(mask, ImageArray) and np.array_equal(mask.affine, AFFINE)
    assert mask.astype(np.uint8).affine is not None and isinstance(mask.sum(), np.integer)
    assert np.array_equal(np.asarray(mask), result.labels > 0) and type(np.asarray(mask)) is np.ndarray
    result.images["other"] = np.zeros(3)  # a bare array put in lies on the labels' grid
    assert np.array_equal(result.images["other"].affine, AFFINE)
    path = mask.save(tmp_path / "mask.nii.gz")
    written = nib.load(path)
    assert np.array_equal(np.asarray(written.dataobj).astype(bool), mask) and np.allclose(written.affine, AFFINE, atol=1e-5)
    assert np.allclose(mask.to_nifti().affine, AFFINE, atol=1e-5)
    copy = pickle.loads(pickle.dumps(result))  # Dask and child processes keep the geometry
    assert np.array_equal(copy.images["brain_mask"].affine, AFFINE) and copy.volumes["left hippocampus"] > 0


def test_save_writes_the_labels_or_a_folder_and_never_overwrites_without_consent(tmp_path):
    result = _synthseg_like_result()
    labels_path = result.save(tmp_path / "t1_synthseg.nii.gz")
    written = nib.load(labels_path)
    assert np.array_equal(np.asarray(written.dataobj), result.labels) and np.allclose(written.affine, AFFINE, atol=1e-5)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        result.save(labels_path)
    result.save(labels_path, overwrite=True)
    folder = result.save(tmp_path / "t1_result")
    again = load_result_bundle(folder)
    assert np.array_equal(again.labels, result.labels) and np.array_equal(again.affine, AFFINE)
    assert np.array_equal(again.posteriors, result.posteriors) and again.qc == result.qc
    assert again.volumes["left hippocampus"] == result.volumes["Left-Hippocampus"]
    assert np.array_equal(again.images["brain_mask"].affine, AFFINE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1_result", "t1_synthseg.nii.gz"]  # no temporaries


def _readme_snippet() -> str:
    """The Python code block of README's 'Python' section, as a user pastes it."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Python", 1)[1]
    block = re.search(r"\n((?:    .*\n)+)", section).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


@pytest.mark.slow
def test_readme_python_snippet_runs_offline_on_the_installed_models(shared, tmp_path, monkeypatch):
    """Models installed with `segsuite models install ID --from FILE` (the fixture weights, under a registry
    that names their sha256), then README's snippet with the network cut: no model= needed."""
    models = {"synthseg-2.0": "synthseg_2.0.h5", "synthseg-parc-2.0": "synthseg_parc_2.0.h5",
              "synthseg-qc-2.0": "synthseg_qc_2.0.h5"}
    registry = json.loads((REPO / "SegmentationSuite" / "segsuite" / "models" / "registry.json").read_text())
    unpacked = tmp_path / "weights"
    unpacked.mkdir()
    for entry in registry["models"]:
        if entry["id"] in models:
            name = models[entry["id"]]
            with gzip.open(shared("fixtures", "synthseg", "models", name + ".gz"), "rb") as reader, \
                    open(unpacked / name, "wb") as writer:
                shutil.copyfileobj(reader, writer)
            body = (unpacked / name).read_bytes()
            entry["files"][0].update(size=len(body), sha256=hashlib.sha256(body).hexdigest())
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    monkeypatch.setenv("SEGSUITE_REGISTRY", str(tmp_path / "registry.json"))
    for model_id, name in models.items():
        assert main(["--progress", "none", "models", "install", model_id, "--from", str(unpacked / name)]) == 0

    import socket

    def no_network(*args, **kwargs):
        raise OSError("the network is cut in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    scan = nib.load(str(shared("data", "t1", "nibabel_anatomical_2mm_small.nii")))
    nib.save(nib.Nifti1Image(np.asarray(scan.dataobj), scan.affine), str(tmp_path / "t1.nii.gz"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_snippet(), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert repr(result).startswith("SegmentationResult(subject='t1', model='SynthSeg 2.0'")
    assert result.volumes["Left-Hippocampus"] == result.volumes["left hippocampus"]
    written = nib.load(str(tmp_path / "t1_synthseg.nii.gz"))
    assert np.array_equal(np.asarray(written.dataobj), result.labels)
    assert np.allclose(written.affine, result.affine, atol=1e-4)
