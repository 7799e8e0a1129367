"""segsuite bids --models synthseg sclimbic --morphometry on a BIDS dataset of real scans at mixed
resolutions, with sessions (t1_crop 1 mm, the seg3d clinical T1 at 1 x 0.898 x 0.898 mm,
t1_crop_2mm at 2 mm): outcomes per (subject, engine). Without --sclimbic-conform every (subject,
engine) that can run is done, ScLimbic's refusals are failed.tsv rows naming the bids flag, logged
before the subject's networks ran (work/engine-checks.jsonl against work/engine-calls.jsonl), and the
subject's SynthSeg outputs are kept; with --sclimbic-conform only ScLimbic runs again, on all. The
labels equal each engine's own command with the same options (folder input), and `segsuite
sclimbic --i FOLDER` keeps its good outputs and reports the refused images.

SynthSeg runs the fixture weights (../shared/fixtures/synthseg: the real network, random weights) on
a centred 64^3 crop, ScLimbic the real model (../shared/models)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("bids2table")
nib = pytest.importorskip("nibabel")
pytest.importorskip("torch")

from conftest import shared_path  # noqa: E402
from synthseg_helpers import unpack_fixture_synthseg  # noqa: E402

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCLIMBIC_MODEL = ("models", "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5")
# image key -> (BIDS folder, scan in ../shared/data/t1)
SCANS = {"sub-01": ("sub-01", "t1_crop.nii.gz"),                               # 1 mm
         "sub-02_ses-1": ("sub-02/ses-1", "seg3d_MR_T1_clinical.nii.gz"),     # 1 x 0.898 x 0.898 mm
         "sub-02_ses-2": ("sub-02/ses-2", "t1_crop_2mm.nii.gz")}              # 2 mm
NOT_1MM = ["sub-02_ses-1", "sub-02_ses-2"]
SYNTHSEG_OPTIONS = ["--fast", "--crop", "64"]
COMMON = ["--models", "synthseg", "sclimbic", "--morphometry", *SYNTHSEG_OPTIONS, "--nprocs", "1",
          "--omp-nthreads", "1", "--skip-bids-validation"]


def segsuite(*arguments, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", *map(str, arguments)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def dseg(output: Path, key: str, seg: str) -> Path:
    return output / SCANS[key][0] / "anat" / f"{key}_seg-{seg}_dseg.nii.gz"


def failed_rows(output: Path) -> list[dict]:
    lines = (output / ".segsuite" / "logs" / "failed.tsv").read_text().splitlines()
    return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]


@pytest.fixture(scope="module")
def synthseg_model(tmp_path_factory):
    """The fixture's SynthSeg 2.0 weights (full-size network, deterministic random weights), unpacked."""
    return unpack_fixture_synthseg(tmp_path_factory.mktemp("synthseg_fixture"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthseg_model):
    """The run without --sclimbic-conform, then the same command with it into the same output."""
    root = tmp_path_factory.mktemp("mixed")
    raw = root / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "mixed", "BIDSVersion": "1.10.0"}))
    (raw / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    for key, (folder, scan) in SCANS.items():
        (raw / folder / "anat").mkdir(parents=True)
        shutil.copy(shared_path("data", "t1", scan), raw / folder / "anat" / f"{key}_T1w.nii.gz")
    output, work = root / "out", root / "work"
    model = shared_path(*SCLIMBIC_MODEL)
    first = segsuite("bids", raw, output, "participant", *COMMON, "-w", work, "--synthseg-model", synthseg_model,
                     "--sclimbic-model", model)
    after_first = {"calls": jsonl(work / "engine-calls.jsonl"), "checks": jsonl(work / "engine-checks.jsonl"),
                   "failed": failed_rows(output),
                   "record": json.loads((output / "sub-02/ses-1/sub-02_ses-1_segsuite.json").read_text()),
                   "sclimbic": {key: np.asanyarray(nib.load(str(dseg(output, key, "sclimbic"))).dataobj)
                                for key in SCANS if dseg(output, key, "sclimbic").exists()},
                   "synthseg_stat": {key: dseg(output, key, "synthseg").stat() for key in SCANS}}
    second = segsuite("bids", raw, output, "participant", *COMMON, "-w", work, "--synthseg-model", synthseg_model,
                      "--sclimbic-model", model, "--sclimbic-conform")
    return {"raw": raw, "output": output, "work": work, "first": first, "second": second, **after_first}


def test_every_engine_that_can_run_is_done_and_each_refusal_is_one_row(runs):
    first, output = runs["first"], runs["output"]
    assert first.returncode == 1, first.stderr
    assert "3 done (2 partly), 0 skipped, 0 failed" in first.stderr
    assert "per engine: synthseg 3 done; sclimbic 1 done, 2 failed" in first.stderr
    assert "2 subject(s) failed" in first.stderr and "Traceback" not in first.stderr
    rows = runs["failed"]
    assert sorted((r["participant_id"], r["session_id"], r["model"]) for r in rows) == [
        ("sub-02", "ses-1", "sclimbic"), ("sub-02", "ses-2", "sclimbic")]
    for row in rows:  # the hint names the flag of segsuite bids, not that of segsuite sclimbic
        assert "--sclimbic-conform" in row["reason"] and " --conform " not in row["reason"], row
    assert "1.00 x 0.90 x 0.90 mm" in next(r["reason"] for r in rows if r["session_id"] == "ses-1")
    assert set(runs["sclimbic"]) == {"sub-01"}
    # the refused subjects keep SynthSeg's segmentation and morphometry, recorded as its own outcome
    record = runs["record"]
    assert list(record["engines"]) == ["synthseg"] and record["engines"]["synthseg"]["status"] == "done"
    files = record["engines"]["synthseg"]["files"]
    assert "anat/sub-02_ses-1_seg-synthseg_dseg.nii.gz" in files
    assert any(name.endswith("_label-GM_probseg.nii.gz") for name in files), files
    assert all((output / "sub-02/ses-1" / name).is_file() for name in files)


def test_a_refusal_is_reported_before_the_subjects_networks_ran(runs):
    checks, calls = runs["checks"], runs["calls"]
    for key in SCANS:
        first_call = min(call["time"] for call in calls if call["key"] == key)
        key_checks = [check for check in checks if check["key"] == key]
        assert {check["model"] for check in key_checks} == {"synthseg", "sclimbic"}
        assert all(check["time"] < first_call for check in key_checks), key  # every check before any network
        outcome = {check["model"]: check["outcome"] for check in key_checks}
        assert outcome == {"synthseg": "ok", "sclimbic": "refused" if key in NOT_1MM else "ok"}, key
        assert sorted(call["model"] for call in calls if call["key"] == key) == (
            ["synthseg"] if key in NOT_1MM else ["sclimbic", "synthseg"])


def test_with_sclimbic_conform_only_sclimbic_runs_again_on_all(runs):
    second, output = runs["second"], runs["output"]
    assert second.returncode == 0, second.stderr
    assert "3 done, 0 skipped, 0 failed" in second.stderr
    assert "per engine: synthseg 3 skipped; sclimbic 3 done" in second.stderr
    new_calls = jsonl(runs["work"] / "engine-calls.jsonl")[len(runs["calls"]):]
    assert sorted((call["key"], call["model"]) for call in new_calls) == [(key, "sclimbic") for key in sorted(SCANS)]
    assert failed_rows(output) == []
    for key in SCANS:
        assert dseg(output, key, "sclimbic").is_file(), key
        stat = dseg(output, key, "synthseg").stat()  # SynthSeg's files kept as they were (the same inode)
        assert (stat.st_ino, stat.st_mtime_ns) == (runs["synthseg_stat"][key].st_ino,
                                                   runs["synthseg_stat"][key].st_mtime_ns), key
        record = json.loads((output / SCANS[key][0] / f"{key}_segsuite.json").read_text())
        assert record["models"]["sclimbic"]["options"]["conform"] is True
        assert set(record["engines"]) == {"synthseg", "sclimbic"}
    assert not (output / ".staging").exists() and not (output / ".segsuite.lock").exists()


def test_labels_equal_each_engines_own_command_with_the_same_options(runs, synthseg_model, tmp_path):
    output = runs["output"]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for key in SCANS:
        shutil.copy(runs["raw"] / SCANS[key][0] / "anat" / f"{key}_T1w.nii.gz", inputs / f"{key}.nii.gz")
    done = segsuite("synthseg", "--i", inputs, "--o", tmp_path / "synthseg", *SYNTHSEG_OPTIONS, "--keepgeom",
                    "--model", synthseg_model, "--threads", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    # ScLimbic with --conform on the two images that need it (on the 1 mm one it changes nothing:
    # checked below against the run without it)
    conform_inputs = tmp_path / "conform_inputs"
    conform_inputs.mkdir()
    for key in NOT_1MM:
        shutil.copy(inputs / f"{key}.nii.gz", conform_inputs)
    done = segsuite("sclimbic", "--i", conform_inputs, "--o", tmp_path / "sclimbic", "--conform", "--model",
                    shared_path(*SCLIMBIC_MODEL), "--threads", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    for key in SCANS:
        source = nib.load(str(inputs / f"{key}.nii.gz"))
        ours = nib.load(str(dseg(output, key, "synthseg")))
        direct = nib.load(str(tmp_path / "synthseg" / f"{key}_synthseg.nii.gz"))
        assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(direct.dataobj)), key
        assert np.allclose(ours.affine, source.affine, atol=1e-4)
        ours = np.asanyarray(nib.load(str(dseg(output, key, "sclimbic"))).dataobj)
        if key in NOT_1MM:
            direct = np.asanyarray(nib.load(str(tmp_path / "sclimbic" / f"{key}.sclimbic.nii.gz")).dataobj)
            assert ours.shape == source.shape and np.count_nonzero(ours) > 200, key  # 2 mm: few voxels
        else:
            direct = runs["sclimbic"][key]
        assert np.array_equal(ours, direct), key


def test_sclimbic_folder_input_keeps_its_good_outputs_and_reports_the_refused_ones(runs, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for key in SCANS:
        shutil.copy(runs["raw"] / SCANS[key][0] / "anat" / f"{key}_T1w.nii.gz", inputs / f"{key}.nii.gz")
    done = segsuite("sclimbic", "--i", inputs, "--o", tmp_path / "out", "--write_volumes", "--model",
                    shared_path(*SCLIMBIC_MODEL), "--threads", "1", "--device", "cpu")
    assert done.returncode == 1 and "2 of 3 images failed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    for key in NOT_1MM:
        assert f"segsuite sclimbic: {inputs / (key + '.nii.gz')}: the input has" in done.stderr
        assert "--conform" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "sclimbic_volumes_all.csv", "sub-01.sclimbic.nii.gz", "sub-01.sclimbic.stats"]
    written = np.asanyarray(nib.load(str(tmp_path / "out" / "sub-01.sclimbic.nii.gz")).dataobj)
    assert np.array_equal(written, runs["sclimbic"]["sub-01"])  # = segsuite bids without --sclimbic-conform
    volumes = (tmp_path / "out" / "sclimbic_volumes_all.csv").read_text().splitlines()
    assert len(volumes) == 2 and volumes[1].startswith("sub-01,")
