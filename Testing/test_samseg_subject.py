"""FreeSurfer-subject mode: cleaned aseg.mgz for fmriprep --fs-subjects-dir, original kept and restorable."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from segsuite.cli import main
from segsuite.errors import InputError, SegSuiteError
from segsuite.samseg import SamsegBrainMask, install_cleaned_aseg, restore_original_aseg
from segsuite.samseg.subject import ORIGINAL_NAME, RECORD_NAME

from test_samseg_filter import AFFINE, synthetic_head


@pytest.fixture
def subject(tmp_path):
    """A subject folder whose aseg.mgz holds SAMSEG labels (as after samseg2recon --keep-exc)."""
    mri = tmp_path / "sub-01" / "mri"
    mri.mkdir(parents=True)
    nib.save(nib.MGHImage(synthetic_head().astype(np.int32), AFFINE), str(mri / "aseg.mgz"))
    os.chmod(mri / "aseg.mgz", 0o644)
    return tmp_path / "sub-01"


def files_of(folder):
    return sorted(p.name for p in folder.iterdir())


def test_install_keeps_the_original_and_writes_the_cleaned_aseg(subject):
    mri = subject / "mri"
    before = (mri / "aseg.mgz").read_bytes()
    update = install_cleaned_aseg(subject, SamsegBrainMask())
    assert update.action == "installed"
    assert (mri / ORIGINAL_NAME).read_bytes() == before                       # kept byte for byte
    aseg = nib.load(str(mri / "aseg.mgz"))
    labels = np.asarray(aseg.dataobj)
    assert not np.isin(labels, [24, 165, 258, 259]).any() and (labels == 41).any()
    assert np.allclose(aseg.affine, AFFINE) and aseg.get_data_dtype() == np.dtype(">i4")
    assert os.stat(mri / "aseg.mgz").st_mode & 0o777 == 0o644                  # not mkstemp's 0600
    record = json.loads((mri / RECORD_NAME).read_text())
    assert record["excluded_labels"] == [24, 165, 258, 259] and record["original"] == ORIGINAL_NAME
    assert "--restore" in record["restore"]
    assert files_of(mri) == sorted(["aseg.mgz", ORIGINAL_NAME, RECORD_NAME])   # no temp files left


def test_running_twice_is_safe_and_gives_the_same_aseg(subject):
    mri = subject / "mri"
    original = (mri / "aseg.mgz").read_bytes()
    install_cleaned_aseg(subject, SamsegBrainMask())
    first = (mri / "aseg.mgz").read_bytes()
    update = install_cleaned_aseg(subject, SamsegBrainMask())     # reads the saved original again
    assert update.action == "refreshed"
    assert (mri / "aseg.mgz").read_bytes() == first
    assert (mri / ORIGINAL_NAME).read_bytes() == original          # never overwritten
    # A different label choice on a later run still starts from the original, not from our output.
    install_cleaned_aseg(subject, SamsegBrainMask(preset="samseg2recon"))
    assert (np.asarray(nib.load(str(mri / "aseg.mgz")).dataobj) == 24).any()
    assert (mri / ORIGINAL_NAME).read_bytes() == original


def test_restore_puts_the_original_back(subject):
    mri = subject / "mri"
    original = (mri / "aseg.mgz").read_bytes()
    install_cleaned_aseg(subject, SamsegBrainMask())
    install_cleaned_aseg(subject, SamsegBrainMask())
    restore_original_aseg(subject)
    assert (mri / "aseg.mgz").read_bytes() == original
    assert files_of(mri) == ["aseg.mgz"]
    with pytest.raises(SegSuiteError, match="nothing to restore"):
        restore_original_aseg(subject)
    install_cleaned_aseg(subject, SamsegBrainMask())               # and the cycle can start again
    assert (mri / ORIGINAL_NAME).read_bytes() == original


def test_a_later_change_to_aseg_is_never_overwritten_silently(subject):
    mri = subject / "mri"
    original = (mri / "aseg.mgz").read_bytes()
    install_cleaned_aseg(subject, SamsegBrainMask())
    nib.save(nib.MGHImage(synthetic_head().astype(np.int32) * 0 + 2, AFFINE), str(mri / "aseg.mgz"))  # e.g. a re-run recon-all
    changed = (mri / "aseg.mgz").read_bytes()
    with pytest.raises(SegSuiteError, match="changed since segsuite wrote it"):
        install_cleaned_aseg(subject, SamsegBrainMask())
    with pytest.raises(SegSuiteError, match="--overwrite"):
        restore_original_aseg(subject)
    assert (mri / "aseg.mgz").read_bytes() == changed and (mri / ORIGINAL_NAME).read_bytes() == original
    restore_original_aseg(subject, overwrite=True)
    assert (mri / "aseg.mgz").read_bytes() == original


def test_a_failed_run_leaves_the_subject_usable(subject, tmp_path):
    mri = subject / "mri"
    original = (mri / "aseg.mgz").read_bytes()
    other_grid = tmp_path / "seg_other_grid.mgz"
    nib.save(nib.MGHImage(synthetic_head((40, 40, 40)).astype(np.int32), AFFINE), str(other_grid))
    with pytest.raises(InputError, match="voxel grid"):
        install_cleaned_aseg(subject, SamsegBrainMask(), seg_source=str(other_grid))
    assert (mri / "aseg.mgz").read_bytes() == original
    assert not [name for name in files_of(mri) if name.startswith(".segsuite-")]
    update = install_cleaned_aseg(subject, SamsegBrainMask())      # still works afterwards
    assert update.action == "installed" and (mri / ORIGINAL_NAME).read_bytes() == original


def test_explicit_segmentation_on_the_subject_grid(subject, tmp_path):
    mri = subject / "mri"
    seg = synthetic_head()
    seg[seg == 3] = 42                                  # a distinguishable segmentation
    source = tmp_path / "seg.mgz"
    nib.save(nib.MGHImage(seg.astype(np.int32), AFFINE), str(source))
    install_cleaned_aseg(subject, SamsegBrainMask(), seg_source=str(source))
    written = np.asarray(nib.load(str(mri / "aseg.mgz")).dataobj)
    assert not (written == 3).any() and (written == 42).any()
    assert json.loads((mri / RECORD_NAME).read_text())["source"] == str(source)


def test_subject_without_mri_folder_or_aseg(tmp_path):
    with pytest.raises(InputError, match="no mri/ folder"):
        install_cleaned_aseg(tmp_path, SamsegBrainMask())
    (tmp_path / "mri").mkdir()
    with pytest.raises(InputError, match="--i"):
        install_cleaned_aseg(tmp_path, SamsegBrainMask())


def test_cli_subject_mode_and_restore(subject, capsys):
    mri = subject / "mri"
    original = (mri / "aseg.mgz").read_bytes()
    for _ in range(2):
        assert main(["--progress", "none", "samseg-filter", "--subject-dir", str(subject)]) == 0
    err = capsys.readouterr().err
    assert "refreshed" in err and ORIGINAL_NAME in err and "--restore" in err
    assert (mri / ORIGINAL_NAME).read_bytes() == original
    assert main(["--progress", "none", "samseg-filter", "--subject-dir", str(subject), "--restore"]) == 0
    assert (mri / "aseg.mgz").read_bytes() == original and files_of(mri) == ["aseg.mgz"]


def test_real_samseg_seg_as_a_subject(shared, tmp_path):
    seg_path = shared("data", "samseg", "t1_crop_2mm", "seg.mgz")
    mri = tmp_path / "subj" / "mri"
    mri.mkdir(parents=True)
    image = nib.load(str(seg_path))
    nib.save(nib.MGHImage(np.asarray(image.dataobj), image.affine, header=image.header), str(mri / "aseg.mgz"))
    update = install_cleaned_aseg(tmp_path / "subj", SamsegBrainMask())
    labels = np.asarray(nib.load(str(mri / "aseg.mgz")).dataobj)
    assert not np.isin(labels, [24, 165, 258, 259]).any()
    assert np.array_equal(labels[labels > 0], np.asarray(image.dataobj)[labels > 0])
    assert update.result.measures["BrainMask"] < 0.5 * np.count_nonzero(np.asarray(image.dataobj)) * 8.0
