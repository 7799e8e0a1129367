"""Core contracts: label tables, image I/O, output transactions, CLI exit codes."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from segsuite import cli
from segsuite.errors import InputError, OutputExistsError
from segsuite.image import OutputTransaction, check_outputs, load_volume, squeeze_to_3d, strip_image_suffix
from segsuite.labels import Label, LabelTable, freesurfer_lut
from segsuite.progress import ProgressRecorder, sub_progress


def test_freesurfer_lut_has_aseg_and_samseg_labels():
    lut = freesurfer_lut()
    assert lut.name(17) == "Left-Hippocampus"
    assert lut.name(24) == "CSF"
    assert lut.color(2) == (245, 245, 245)
    for value in (165, 258, 259, 1001, 2035):
        assert value in lut


def test_ctab_round_trip(tmp_path):
    table = LabelTable([Label(0, "Unknown", (0, 0, 0)), Label(26, "Left-Nucleus-Accumbens", (234, 197, 102))])
    path = tmp_path / "t.ctab"
    table.write_ctab(path)
    again = LabelTable.from_ctab(path)
    assert [(label.value, label.name, label.color) for label in again] == [
        (label.value, label.name, label.color) for label in table]


def test_ctab_parse_error_names_line(tmp_path):
    path = tmp_path / "bad.ctab"
    path.write_text("0 Unknown 0 0 0\nnot a row\n")
    with pytest.raises(InputError, match="line 2"):
        LabelTable.from_ctab(path)


def test_subset_keeps_order_and_names_unknown_values():
    table = freesurfer_lut().subset([17, 2, 99999])
    assert table.values == [17, 2, 99999]
    assert table.name(99999) == "Label-99999"


def test_load_volume_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_volume(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="cannot read"):
        load_volume(junk)


def test_squeeze_to_3d():
    assert squeeze_to_3d(np.zeros((4, 5, 6, 1))).shape == (4, 5, 6)
    with pytest.raises(InputError, match="2D"):
        squeeze_to_3d(np.zeros((4, 5)))
    with pytest.raises(InputError, match="4D"):
        squeeze_to_3d(np.zeros((4, 5, 6, 2)))


def test_strip_image_suffix():
    assert strip_image_suffix("a/b.nii.gz") == "a/b"
    assert strip_image_suffix("a/b.mgz") == "a/b"


def test_transaction_commits_all_or_nothing(tmp_path):
    affine = np.eye(4)
    with OutputTransaction() as out:
        out.save_image(tmp_path / "sub" / "a.nii.gz", np.ones((2, 2, 2), np.int32), affine)
        out.write_text(tmp_path / "sub" / "a.csv", "x\n")
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.csv", "a.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(tmp_path / "sub" / "a.csv").st_mode & 0o777) == 0o666 & ~umask
    assert nib.load(tmp_path / "sub" / "a.nii.gz").get_fdata().sum() == 8

    with pytest.raises(RuntimeError):
        with OutputTransaction() as out:
            out.save_image(tmp_path / "new" / "b.nii.gz", np.ones((2, 2, 2), np.int32), affine)
            raise RuntimeError("engine failed")
    assert not (tmp_path / "new").exists(), "a failed job must leave no files or folders behind"


def test_existing_outputs_need_consent_and_inputs_are_never_outputs(tmp_path):
    existing = tmp_path / "out.nii.gz"
    existing.write_text("keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_outputs([existing], overwrite=False)
    check_outputs([existing], overwrite=True)
    with pytest.raises(OutputExistsError, match="input"):
        check_outputs([existing], overwrite=True, inputs=[existing])
    assert existing.read_text() == "keep me"


def test_sub_progress_maps_range():
    recorder = ProgressRecorder()
    report = sub_progress(recorder, 0.5, 1.0)
    report(0.0, "a")
    report(0.5, "b")
    report(2.0, "c")
    assert recorder.calls == [(0.5, "a"), (0.75, "b"), (1.0, "c")]


def test_cli_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_ieee_float32_turns_tf32_off_for_the_block_and_restores_the_callers_setting():
    from precision_helpers import ieee_state, set_tf32_state, tf32_state, uses_precision_api

    from segsuite.engine import ieee_float32

    before = tf32_state()
    try:
        set_tf32_state(("tf32", "tf32") if uses_precision_api() else (True, True))
        caller = tf32_state()
        assert caller != ieee_state()
        with ieee_float32():
            assert tf32_state() == ieee_state()
        assert tf32_state() == caller
        with pytest.raises(RuntimeError):
            with ieee_float32():
                raise RuntimeError("a failing segmentation")
        assert tf32_state() == caller
    finally:
        set_tf32_state(before)
