"""segsuite scepi: output naming, QC report, batch runs, and bad input giving clear errors and no outputs."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="sc_epi needs nnunetv2 (requirements-scepi*.txt)")

import nibabel as nib  # noqa: E402

from segsuite import cli  # noqa: E402
from segsuite.scepi.tiny import build_tiny_model  # noqa: E402

EPI_4D = ("data", "spinal_cord", "sct_testing_fmri_EPI_4d.nii.gz")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("scepi_cli") / "model", patch_size=(8, 32, 32))


def write_epi(path, shape=(32, 30, 10), affine=None, seed=0):
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    tube = np.exp(-((x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2) / 12.0)
    data = (200 + 600 * tube[..., None] + rng.normal(0, 30, shape)).astype(np.float32)
    if affine is None:
        affine = np.diag([-1.0, 1.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def run(*args) -> int:
    return cli.main(["--progress", "none", "scepi", *map(str, args)])


def files_under(folder) -> set:
    return {os.path.relpath(os.path.join(root, name), folder)
            for root, _, names in os.walk(folder) for name in names}


def test_default_output_beside_the_input_on_the_same_grid(tmp_path, model_dir, capsys):
    epi = write_epi(tmp_path / "sub-01_bold.nii.gz")
    assert run("-i", epi, "--model", model_dir, "--device", "cpu") == 0
    out = tmp_path / "sub-01_bold_seg.nii.gz"
    assert str(out) in capsys.readouterr().out
    seg, image = nib.load(out), nib.load(epi)
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    # A second run refuses to overwrite, --overwrite replaces.
    assert run("-i", epi, "--model", model_dir, "--device", "cpu") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert run("-i", epi, "--model", model_dir, "--device", "cpu", "--overwrite") == 0


def test_output_file_name_and_postprocessing_flags(tmp_path, model_dir):
    epi = write_epi(tmp_path / "a.nii")
    target = tmp_path / "out" / "cord.nii.gz"
    assert run("-i", epi, "-o", target, "--model", model_dir, "--device", "cpu",
               "-thr", "0.3", "-largest", "-fill-holes", "1", "-remove-small", "8vox") == 0
    from scipy import ndimage

    labels = np.asarray(nib.load(target).dataobj)
    assert ndimage.label(labels)[1] <= 1
    assert sorted(os.listdir(tmp_path / "out")) == ["cord.nii.gz"]


def test_batch_to_a_folder_with_qc_rows_appended(tmp_path, model_dir):
    inputs = [write_epi(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(2)]
    qc = tmp_path / "qc"
    assert run("-i", *inputs, "-o", tmp_path / "segs", "-qc", qc, "--model", model_dir, "--device", "cpu") == 0
    assert sorted(os.listdir(tmp_path / "segs")) == ["s0_seg.nii.gz", "s1_seg.nii.gz"]
    entries = json.loads((qc / "qc_entries.json").read_text())
    assert len(entries) == 2
    page = (qc / "index.html").read_text()
    assert page.count("<tr><td>") == 2
    for entry in entries:
        for key in ("image", "overlay"):
            png = (qc / entry[key]).read_bytes()
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and entry[key] in page
    # A later run appends a row and keeps the earlier ones.
    third = write_epi(tmp_path / "s2.nii.gz", seed=2)
    assert run("-i", third, "-qc", qc, "--model", model_dir, "--device", "cpu") == 0
    assert len(json.loads((qc / "qc_entries.json").read_text())) == 3
    assert (qc / "index.html").read_text().count("<tr><td>") == 3
    assert len(os.listdir(qc / "images")) == 6


def test_png_writer_round_trips_through_a_png_reader(tmp_path):
    from segsuite.scepi.qc import png_bytes

    matplotlib_image = pytest.importorskip("matplotlib.image")
    rgb = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    (tmp_path / "x.png").write_bytes(png_bytes(rgb))
    back = matplotlib_image.imread(tmp_path / "x.png")
    np.testing.assert_array_equal((back * 255).round().astype(np.uint8)[..., :3], rgb)


def test_4d_needs_mean(tmp_path, model_dir, shared, capsys):
    path = shared(*EPI_4D)
    out = tmp_path / "seg.nii.gz"
    assert run("-i", path, "-o", out, "--model", model_dir, "--device", "cpu") == 1
    error = capsys.readouterr().err
    assert "4D" in error and "--mean" in error and not out.exists()
    assert run("-i", path, "-o", out, "--mean", "--model", model_dir, "--device", "cpu") == 0
    assert nib.load(out).shape == nib.load(path).shape[:3]


@pytest.mark.parametrize("case", ["2d", "not_an_image", "missing", "4d"])
def test_bad_input_gives_a_clear_error_and_no_outputs(tmp_path, model_dir, capsys, case):
    good = write_epi(tmp_path / "good.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    if case == "2d":
        nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), bad)
    elif case == "not_an_image":
        bad.write_text("hello")
    elif case == "4d":
        nib.save(nib.Nifti1Image(np.ones((20, 20, 5, 3), np.float32), np.eye(4)), bad)
    before = files_under(tmp_path)
    status = run("-i", good, bad, "-o", tmp_path / "segs", "-qc", tmp_path / "qc", "--model", model_dir, "--device", "cpu")
    error = capsys.readouterr().err
    assert status == 1
    assert "bad.nii.gz" in error and "Traceback" not in error
    expected = {"2d": "not a 3D volume", "not_an_image": "cannot read", "missing": "not found", "4d": "--mean"}[case]
    assert expected in error
    assert files_under(tmp_path) == before


def test_missing_model_gives_a_clear_error_and_no_outputs(tmp_path, capsys):
    epi = write_epi(tmp_path / "e.nii.gz")
    before = files_under(tmp_path)
    assert run("-i", epi, "--model", tmp_path / "no_model", "--device", "cpu") == 1
    assert "model not found" in capsys.readouterr().err
    assert files_under(tmp_path) == before


def test_failure_during_the_batch_keeps_the_good_outputs_and_reports_it(tmp_path, model_dir, monkeypatch, capsys):
    """Like segsuite synthseg with several images: the failed input is reported, the others' outputs kept."""
    from segsuite.scepi import engine as engine_module

    inputs = [write_epi(tmp_path / f"s{i}.nii.gz", seed=i) for i in range(2)]
    original = engine_module.ScEpiEngine.segment
    calls = []

    def failing_second(self, source, progress=None):
        calls.append(source)
        if len(calls) == 2:
            raise engine_module.SegSuiteError("simulated failure")
        return original(self, source, progress)

    monkeypatch.setattr(engine_module.ScEpiEngine, "segment", failing_second)
    before = files_under(tmp_path)
    assert run("-i", *inputs, "-qc", tmp_path / "qc", "--model", model_dir, "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert f"segsuite scepi: {inputs[1]}: simulated failure" in err and "1 of 2 inputs failed" in err, err
    written = files_under(tmp_path) - before
    assert "s0_seg.nii.gz" in written and os.path.join("qc", "index.html") in written, written
    assert not [name for name in written if "s1" in name], written
    assert "s1" not in (tmp_path / "qc" / "index.html").read_text()


def test_usage_errors_exit_2(tmp_path, model_dir, capsys):
    epi = write_epi(tmp_path / "e.nii.gz")
    assert run("-i", epi, "--model", model_dir, "-remove-small", "tiny") == 2
    assert run("-i", epi, "--model", model_dir, "-thr", "2") == 2
    capsys.readouterr()


def test_missing_nnunetv2_says_how_to_install(tmp_path, model_dir, monkeypatch, capsys):
    for name in list(sys.modules):
        if name == "nnunetv2" or name.startswith("nnunetv2."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    epi = write_epi(tmp_path / "e.nii.gz")
    assert run("-i", epi, "--model", model_dir, "--device", "cpu") == 1
    error = capsys.readouterr().err
    assert "nnunetv2" in error and "requirements-scepi" in error
    assert not (tmp_path / "e_seg.nii.gz").exists()
