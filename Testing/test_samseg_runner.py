"""Running SAMSEG: finding it, the subprocess, outputs, stats parsing (with a stand-in SAMSEG),
and one real end-to-end run on the 2 mm T1 in the slow step."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segsuite.cli import main
from segsuite.errors import InputError, OutputExistsError, SegSuiteError
from segsuite.progress import ProgressRecorder
from segsuite.samseg import SamsegRunner, find_samseg, parse_samseg_stats, samseg_volumes
from segsuite.samseg.runner import BRAIN_MASK_NAME, CLEANED_SEG_NAME, LOG_NAME, VOLUMES_NAME, venv_python

from test_samseg_filter import AFFINE, synthetic_head

REPO_ROOT = Path(__file__).resolve().parents[1]

STATS = """\
# Measure Intra-Cranial, 1568729.326893, mm^3
# Measure Unknown, 214968.661436, mm^3
# Measure Skull, 411069.602734, mm^3
# Measure Soft_Nonbrain_Tissue, 1049401.268478, mm^3
# Measure Left-Cerebral-White-Matter, 210647.515466, mm^3
# Measure Fluid_Inside_Eyes, 15639.453270, mm^3
"""


def make_fake_samseg(folder: Path, exit_status: int = 0) -> Path:
    """An executable that behaves like run_samseg: logs, writes seg.mgz and samseg.stats."""
    seg_path = folder / "fake_seg.mgz"
    nib.save(nib.MGHImage(synthetic_head().astype(np.int32), AFFINE), str(seg_path))
    (folder / "fake.stats").write_text(STATS)
    script = folder / "run_samseg"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import argparse, json, os, shutil, sys
        parser = argparse.ArgumentParser()
        parser.add_argument("--input"); parser.add_argument("--output"); parser.add_argument("--threads", type=int)
        args = parser.parse_args()
        os.makedirs(args.output, exist_ok=True)
        print("performing affine atlas registration", flush=True)
        print("atlas registration complete: 0:00:01", flush=True)
        for level in range(2):
            for iteration in range(4):
                print(f"iterationNumber: {{iteration}}", flush=True)
        if {exit_status}:
            print("Traceback: something broke", flush=True)
            sys.exit({exit_status})
        json.dump({{"input": args.input, "threads": args.threads, "omp": os.environ.get("OMP_NUM_THREADS"),
                   "pythonpath": os.environ.get("PYTHONPATH")}}, open(os.path.join(args.output, "args.json"), "w"))
        shutil.copy({str(seg_path)!r}, os.path.join(args.output, "seg.mgz"))
        shutil.copy({str(folder / "fake.stats")!r}, os.path.join(args.output, "samseg.stats"))
        print("run_samseg complete", flush=True)
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def t1(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), AFFINE), str(path))
    return path


@pytest.fixture
def no_samseg_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    monkeypatch.delenv("SEGSUITE_SAMSEG_PYTHON", raising=False)
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_runner_outputs_volumes_and_progress(tmp_path, t1, monkeypatch):
    fake = make_fake_samseg(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/with/numpy2")
    out = tmp_path / "out" / "sub-01"
    recorder, lines = ProgressRecorder(), []
    result = SamsegRunner(threads=3, executable=fake).segment(str(t1), progress=recorder, output_dir=out, log=lines.append)
    for name in ("seg.mgz", "samseg.stats", BRAIN_MASK_NAME, CLEANED_SEG_NAME, VOLUMES_NAME, LOG_NAME):
        assert (out / name).is_file(), name
    called = json.loads((out / "args.json").read_text())
    assert called["threads"] == 3 and called["omp"] == "3" and called["input"] == str(t1)
    assert called["pythonpath"] is None                          # our numpy-2 path never reaches SAMSEG
    assert "iterationNumber: 3" in lines and "iterationNumber: 3" in (out / LOG_NAME).read_text()
    # volumes come from samseg.stats, with FreeSurferColorLUT names; the ICV is a measure
    assert result.volumes == pytest.approx({"Skull": 411069.602734, "Head-ExtraCerebral": 1049401.268478,
                                            "Left-Cerebral-White-Matter": 210647.515466, "Eye-Fluid": 15639.453270})
    assert result.measures["Intra-Cranial"] == pytest.approx(1568729.326893)
    assert result.subject == "sub-01_T1w"
    assert not np.isin(result.labels, [24, 165, 258, 259]).any()
    mask = nib.load(str(out / BRAIN_MASK_NAME))
    assert np.array_equal(np.asarray(mask.dataobj), result.images["brain_mask"]) and np.allclose(mask.affine, AFFINE)
    fractions = [f for f, _ in recorder.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) > 5
    header, row = (out / VOLUMES_NAME).read_text().splitlines()
    assert header.split(",")[:2] == ["subject", "BrainMask"] and "Intra-Cranial" in header
    assert sorted(os.listdir(tmp_path / "out")) == ["sub-01"]     # no temp folders left


def test_failed_samseg_leaves_nothing(tmp_path, t1):
    fake = make_fake_samseg(tmp_path, exit_status=3)
    out = tmp_path / "out" / "case"
    with pytest.raises(SegSuiteError, match="SAMSEG failed .exit status 3.*something broke"):
        SamsegRunner(executable=fake).segment(str(t1), output_dir=out, log=lambda line: None)
    assert not (tmp_path / "out").exists()  # the parent folder the run made is removed again


def test_existing_output_needs_overwrite(tmp_path, t1):
    fake = make_fake_samseg(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    runner = SamsegRunner(executable=fake)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        runner.segment(str(t1), output_dir=out, log=lambda line: None)
    assert (out / "old.txt").read_text() == "keep me"
    runner.segment(str(t1), output_dir=out, overwrite=True, log=lambda line: None)
    assert not (out / "old.txt").exists() and (out / "seg.mgz").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["fake.stats", "fake_seg.mgz", "out", "run_samseg", t1.name])


def test_in_memory_input_and_no_output_folder(tmp_path):
    fake = make_fake_samseg(tmp_path)
    result = SamsegRunner(executable=fake).segment((np.zeros((8, 8, 8), np.float32), AFFINE), log=lambda line: None)
    assert result.images["brain_mask"].any() and "output_dir" not in result.provenance


def test_find_order(tmp_path, monkeypatch, no_samseg_anywhere):
    with pytest.raises(SegSuiteError, match="segsuite samseg --setup"):
        find_samseg()
    home_venv_python = venv_python(Path(os.environ["SEGSUITE_HOME"]) / "samseg-venv")
    home_venv_python.parent.mkdir(parents=True)
    home_venv_python.write_text("")
    assert find_samseg().uses_python and "segsuite's SAMSEG environment" in find_samseg().origin
    configured = tmp_path / "py" / "python3.11"
    configured.parent.mkdir()
    configured.write_text("")
    monkeypatch.setenv("SEGSUITE_SAMSEG_PYTHON", str(configured))
    assert find_samseg().command[0] == str(configured)
    on_path = tmp_path / "empty_path" / "run_samseg"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert find_samseg().command == [str(on_path)]
    freesurfer = tmp_path / "freesurfer"
    (freesurfer / "bin").mkdir(parents=True)
    (freesurfer / "bin" / "run_samseg").write_text("#!/bin/sh\n")
    monkeypatch.setenv("FREESURFER_HOME", str(freesurfer))
    assert find_samseg().command == [str(freesurfer / "bin" / "run_samseg")]
    with pytest.raises(InputError, match="not found"):
        find_samseg(tmp_path / "nonexistent")


def test_a_python_without_samseg_says_how_to_set_it_up(tmp_path, t1, no_samseg_anywhere, monkeypatch):
    monkeypatch.setenv("SEGSUITE_SAMSEG_PYTHON", sys.executable)   # our own Python: no samseg package
    with pytest.raises(SegSuiteError, match="segsuite samseg --setup"):
        SamsegRunner(threads=1).segment(str(t1), log=lambda line: None)


def test_parse_real_samseg_stats(shared):
    stats = parse_samseg_stats(shared("data", "samseg", "t1_crop_2mm", "samseg.stats"))
    assert list(stats)[0] == "Intra-Cranial" and len(stats) >= 40
    assert stats["Left-Hippocampus"] == pytest.approx(4681.504917)
    volumes, measures = samseg_volumes(stats)
    assert measures == {"Intra-Cranial": stats["Intra-Cranial"]}
    assert volumes["Eye-Fluid"] == stats["Fluid_Inside_Eyes"] and "Unknown" not in volumes


def test_parse_bad_stats(tmp_path):
    bad = tmp_path / "samseg.stats"
    bad.write_text("# Measure Skull, lots, mm^3\n")
    with pytest.raises(InputError, match="line 1"):
        parse_samseg_stats(bad)
    bad.write_text("")
    with pytest.raises(InputError, match="no '# Measure' lines"):
        parse_samseg_stats(bad)


def test_cli_samseg_with_stand_in(tmp_path, t1, capsys):
    fake = make_fake_samseg(tmp_path)
    out = tmp_path / "result"
    assert main(["--progress", "none", "samseg", "--i", str(t1), "--o", str(out), "--samseg", str(fake),
                 "--threads", "2", "--preset", "samseg2recon"]) == 0
    err = capsys.readouterr().err
    assert "165 Skull, 258 Head-ExtraCerebral, 259 Eye-Fluid" in err and "iterationNumber: 1" in err
    assert (np.asarray(nib.load(str(out / CLEANED_SEG_NAME)).dataobj) == 24).any()     # CSF kept
    assert main(["--progress", "none", "samseg", "--i", str(t1), "--o", str(out), "--samseg", str(fake)]) == 1
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["samseg"], ["samseg", "--i", "t1.nii.gz"], ["samseg", "--setup", "--i", "x"],
                                  ["samseg", "--i", "a", "--o", "b", "--venv", "v"]])
def test_cli_samseg_usage_errors(argv):
    assert main(argv) == 2


def test_setup_refuses_an_unsupported_python(tmp_path):
    # The main environment's Python is 3.11 on this machine; pretend a 3.12 by a fake interpreter.
    fake_python = tmp_path / "python3.12"
    fake_python.write_text("#!/bin/sh\necho 3 12\n")
    fake_python.chmod(0o755)
    assert main(["samseg", "--setup", "--venv", str(tmp_path / "venv"), "--python", str(fake_python)]) == 2
    assert not (tmp_path / "venv").exists()


# ---- the real thing (slow: about 5-6 minutes with 2 threads, plus ~1 min to build the environment once) ----

def samseg_python_for_tests() -> Path:
    """SAMSEG's own environment for tests: $SEGSUITE_TEST_SAMSEG_VENV or repo/.venv-samseg, built once."""
    from segsuite.samseg import setup_samseg_venv

    venv = Path(os.environ.get("SEGSUITE_TEST_SAMSEG_VENV", REPO_ROOT / ".venv-samseg"))
    try:
        return setup_samseg_venv(venv, log=lambda line: None)
    except SegSuiteError as error:
        pytest.skip(f"cannot build SAMSEG's environment in {venv}: {error}")


@pytest.mark.slow
def test_samseg_end_to_end_on_the_2mm_t1(tmp_path, monkeypatch):
    from conftest import shared_path

    t1 = shared_path("data", "t1", "t1_crop_2mm.nii.gz")
    reference = shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz")
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    python = samseg_python_for_tests()
    out = tmp_path / "samseg"
    recorder = ProgressRecorder()
    started = time.perf_counter()
    result = SamsegRunner(threads=2, executable=python).segment(str(t1), progress=recorder, output_dir=out,
                                                               log=lambda line: None)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nSAMSEG on {t1.name} with 2 threads: {minutes:.1f} min; brain mask {result.measures['BrainMask'] / 1000:.1f} cm3")
    seg = np.asarray(nib.load(str(out / "seg.mgz")).dataobj)
    assert {165, 258, 259, 24, 2, 41, 17, 53} <= set(np.unique(seg).tolist())
    assert not result.images["brain_mask"][np.isin(seg, [165, 258, 259])].any()
    # Same software, same input: the segmentation matches the stored run almost voxel for voxel.
    stored = np.asarray(nib.load(str(reference)).dataobj)
    assert np.mean(seg != stored) < 0.01
    assert 0.9 < result.measures["BrainMask"] / brain_mask_volume(reference) < 1.1
    assert result.measures["Intra-Cranial"] > 1e6 and "Left-Hippocampus" in result.volumes
    assert recorder.calls[-1][0] == 1.0


def brain_mask_volume(seg_path) -> float:
    from segsuite.samseg import SamsegBrainMask

    return SamsegBrainMask().segment(str(seg_path)).measures["BrainMask"]


def test_setup_command_text_is_documented():
    text = (REPO_ROOT / "docs" / "samseg.md").read_text()
    assert "samseg==0.4a0" in text and "numpy<2" in text and "segsuite samseg --setup" in text
