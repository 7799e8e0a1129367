"""segsuite bids with the engines beyond SynthSeg, on a real Dask LocalCluster (two spawned workers):
ScLimbic with the real trained model on real 1 mm T1s, sc_epi (a tiny nnU-Net model) on the mean of
real spinal-cord BOLD series, the SAMSEG filter on real SAMSEG outputs given as --derivatives.
Outputs equal direct engine calls, a folder without an engine's input is skipped for it (not
failed), the root look-up tables are written, the BIDS validator finds no error and PyBIDS finds
every output with its entities."""

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
pytest.importorskip("nnunetv2", reason="sc_epi needs nnunetv2 (requirements-scepi*.txt)")
nib = pytest.importorskip("nibabel")

from conftest import shared_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCLIMBIC_MODEL = ("models", "sclimbic.fsm+ad.t1.nstd00-50.nstd32-50.h5")
EPI_4D = ("data", "spinal_cord", "sct_testing_fmri_EPI_4d.nii.gz")
EPI_MEAN = ("data", "spinal_cord", "sub-leipzigR01_task-rest_desc-mocomean_bold.nii.gz")
SAMSEG_SEG = ("data", "samseg", "t1_crop_1mm", "seg.mgz")
MODELS = ["sclimbic", "scepi", "samseg-filter"]
# sub-01: T1w (t1_crop), two BOLD runs, SAMSEG outputs; sub-02/ses-1: T1w (stroke) only;
# sub-03: one BOLD series, no T1w.
T1 = {"sub-01": ("data", "t1", "t1_crop.nii.gz"), "sub-02/ses-1": ("data", "t1", "stroke_T1_brainextracted.nii.gz")}

pytestmark = [pytest.mark.slow]


def build_dataset(root: Path) -> dict:
    raw = root / "raw"
    raw.mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "engines", "BIDSVersion": "1.10.0"}))
    (raw / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    for folder, parts in T1.items():
        (raw / folder / "anat").mkdir(parents=True)
        shutil.copy(shared_path(*parts), raw / folder / "anat" / f"{folder.replace('/', '_')}_T1w.nii.gz")
    func = raw / "sub-01" / "func"
    func.mkdir()
    shutil.copy(shared_path(*EPI_4D), func / "sub-01_task-rest_run-1_bold.nii.gz")
    mean = nib.load(str(shared_path(*EPI_MEAN)))  # a real 3D mean, as a 3-volume series whose mean is itself
    series = np.stack([np.asarray(mean.dataobj, dtype=np.float32)] * 3, axis=-1)
    image = nib.Nifti1Image(series, mean.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    nib.save(image, str(func / "sub-01_task-rest_run-2_bold.nii.gz"))
    for run, tr in (("1", 1.13), ("2", 2.0)):
        (func / f"sub-01_task-rest_run-{run}_bold.json").write_text(json.dumps({"TaskName": "rest", "RepetitionTime": tr}))
    (raw / "sub-03" / "func").mkdir(parents=True)
    shutil.copy(shared_path(*EPI_4D), raw / "sub-03" / "func" / "sub-03_task-rest_bold.nii.gz")
    (raw / "sub-03" / "func" / "sub-03_task-rest_bold.json").write_text(json.dumps({"TaskName": "rest", "RepetitionTime": 1.13}))
    samseg = root / "samseg"
    (samseg / "sub-01").mkdir(parents=True)
    (samseg / "dataset_description.json").write_text(json.dumps(
        {"Name": "SAMSEG", "BIDSVersion": "1.10.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "samseg"}]}))
    os.symlink(shared_path(*SAMSEG_SEG), samseg / "sub-01" / "seg.mgz")  # run_samseg --output sub-01
    return {"raw": raw, "samseg": samseg}


def segsuite(*arguments, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", *map(str, arguments)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_scepi(tmp_path_factory):
    from segsuite.scepi.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("scepi_model") / "model", patch_size=(8, 32, 32))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_scepi):
    root = tmp_path_factory.mktemp("engines")
    paths = build_dataset(root)
    output = root / "out"
    done = segsuite("bids", paths["raw"], output, "participant", "--models", *MODELS, "--nprocs", "2",
                    "--omp-nthreads", "1", "--skip-bids-validation", "-w", root / "work",
                    "--sclimbic-model", shared_path(*SCLIMBIC_MODEL), "--scepi-model", tiny_scepi,
                    "--derivatives", f"samseg={paths['samseg']}")
    return {**paths, "output": output, "done": done, "work": root / "work"}


def test_run_succeeds_and_skips_folders_without_the_input(run):
    assert run["done"].returncode == 0, run["done"].stderr
    assert "3 done, 0 skipped, 0 failed" in run["done"].stderr
    failed = (run["output"] / ".segsuite" / "logs" / "failed.tsv").read_text().splitlines()
    assert failed == ["participant_id\tsession_id\tmodel\tinput\treason\tlog"]
    skipped = (run["output"] / ".segsuite" / "logs" / "skipped.tsv").read_text().splitlines()
    assert skipped[0] == "participant_id\tsession_id\tmodel\treason"
    rows = sorted(line.split("\t")[:3] for line in skipped[1:])
    assert rows == [["sub-02", "ses-1", "samseg-filter"], ["sub-02", "ses-1", "scepi"],
                    ["sub-03", "n/a", "samseg-filter"], ["sub-03", "n/a", "sclimbic"]]
    assert "no func/*_bold" in "\n".join(skipped) and "no T1w image in sub-03" in "\n".join(skipped)
    notes = json.loads((run["output"] / "sub-02/ses-1/sub-02_ses-1_segsuite.json").read_text())["notes"]
    assert any(note.startswith("scepi: skipped: no func/") for note in notes), notes
    assert (run["output"] / "sub-02/ses-1/anat/sub-02_ses-1_seg-sclimbic_dseg.nii.gz").is_file()
    assert not (run["output"] / "sub-02/ses-1/func").exists()
    assert sorted(p.name for p in (run["output"] / "sub-03").iterdir()) == ["func", "sub-03_segsuite.json"]


def test_sclimbic_equals_a_direct_engine_call(run):
    from segsuite.labels import LabelTable
    from segsuite.sclimbic import ScLimbicEngine

    model = shared_path(*SCLIMBIC_MODEL)
    engine = ScLimbicEngine(model=model, device="cpu", threads=1)
    for folder in T1:
        key = folder.replace("/", "_")
        source = run["raw"] / folder / "anat" / f"{key}_T1w.nii.gz"
        expected = engine.segment(str(source))
        written = nib.load(str(run["output"] / folder / "anat" / f"{key}_seg-sclimbic_dseg.nii.gz"))
        assert np.array_equal(np.asanyarray(written.dataobj), expected.labels), key
        assert np.allclose(written.affine, nib.load(str(source)).affine, atol=1e-4)
        assert {26, 58, 819, 820} <= set(np.unique(np.asanyarray(written.dataobj)).tolist())
        sidecar = json.loads((run["output"] / folder / "anat" / f"{key}_seg-sclimbic_dseg.json").read_text())
        assert sidecar["Sources"] == [f"bids:raw:{folder}/anat/{key}_T1w.nii.gz"]
        morph = (run["output"] / folder / "anat" / f"{key}_seg-sclimbic_morph.tsv").read_text().splitlines()
        assert len(morph) == 1 + len(expected.volumes)
        name, volume = morph[1].split("\t")[1:]
        assert float(volume) == pytest.approx(expected.volumes[name], abs=0.005)  # written to 0.01 mm3
    lut = (run["output"] / "seg-sclimbic_dseg.tsv").read_text().splitlines()
    ctab = LabelTable.from_ctab(model.parent / "sclimbic.ctab")
    assert lut[0] == "index\tname\tabbreviation\tcolor" and len(lut) == 1 + len(ctab)
    assert [int(row.split("\t")[0]) for row in lut[1:]] == list(ctab.values)
    assert "Left-Nucleus-Accumbens" in "\n".join(lut)


def test_scepi_on_the_mean_of_each_bold_series(run, tiny_scepi):
    from segsuite.scepi import ScEpiEngine

    engine = ScEpiEngine(tiny_scepi, device="cpu", threads=1, mean=True)
    for bold in sorted(run["raw"].glob("sub-0[13]/func/*_bold.nii.gz")):
        func = run["output"] / bold.parent.relative_to(run["raw"])
        subject = bold.parent.parent.name
        stem = bold.name[: -len("_bold.nii.gz")]
        series = np.asarray(nib.load(str(bold)).dataobj, dtype=np.float64)
        mean = nib.load(str(func / f"{stem}_desc-mean_bold.nii.gz"))
        assert mean.shape == series.shape[:3] + (1,)
        np.testing.assert_allclose(np.asarray(mean.dataobj)[..., 0], series.mean(axis=3), rtol=1e-5, atol=1e-3)
        expected = engine.segment(str(bold))
        seg = nib.load(str(func / f"{stem}_seg-scepi_dseg.nii.gz"))
        labels = np.asanyarray(seg.dataobj)
        assert np.array_equal(labels, expected.labels), stem
        assert 0 < np.count_nonzero(labels) < labels.size
        assert np.allclose(seg.affine, nib.load(str(bold)).affine, atol=1e-4)
        sidecar = json.loads((func / f"{stem}_seg-scepi_dseg.json").read_text())
        assert sidecar["Sources"] == [f"bids::{subject}/func/{stem}_desc-mean_bold.nii.gz",
                                      f"bids:raw:{subject}/func/{bold.name}"]
        assert sidecar["SpatialReference"] == sidecar["Sources"][0]
        mean_sidecar = json.loads((func / f"{stem}_desc-mean_bold.json").read_text())
        assert mean_sidecar["Sources"] == [f"bids:raw:{subject}/func/{bold.name}"]
        morph = (func / f"{stem}_seg-scepi_morph.tsv").read_text().splitlines()
        assert morph[1].split("\t")[:2] == ["1", "Spinal-Cord"]
        assert float(morph[1].split("\t")[2]) == pytest.approx(expected.volumes["Spinal-Cord"], abs=0.005)
    assert (run["output"] / "seg-scepi_dseg.tsv").read_text().splitlines()[1:] == [
        "0\tBackground\tBackground\t#000000", "1\tSpinal-Cord\tSpinal-Cord\t#85cbe5"]


def test_samseg_filter_reads_the_samseg_derivatives(run):
    from segsuite.samseg import SamsegBrainMask

    expected = SamsegBrainMask().segment(str(shared_path(*SAMSEG_SEG)))
    anat = run["output"] / "sub-01" / "anat"
    seg = nib.load(str(anat / "sub-01_seg-samseg_dseg.nii.gz"))
    labels = np.asanyarray(seg.dataobj)
    assert np.array_equal(labels, expected.labels)
    assert not set(np.unique(labels).tolist()) & {24, 165, 258, 259}
    assert np.allclose(seg.affine, nib.load(str(shared_path(*SAMSEG_SEG))).affine, atol=1e-4)
    mask = np.asanyarray(nib.load(str(anat / "sub-01_desc-brain_mask.nii.gz")).dataobj)
    assert np.array_equal(mask, expected.images["brain_mask"])
    assert 1.0e6 < np.count_nonzero(mask) < 1.8e6  # a brain, not the head (1 mm voxels)
    uri = "bids:samseg:sub-01/seg.mgz"
    assert json.loads((anat / "sub-01_desc-brain_mask.json").read_text()) == {"Sources": [uri], "Type": "Brain"}
    assert json.loads((anat / "sub-01_seg-samseg_dseg.json").read_text())["Sources"] == [uri]
    lut = (run["output"] / "seg-samseg_dseg.tsv").read_text().splitlines()
    values = [int(row.split("\t")[0]) for row in lut[1:]]
    assert 17 in values and 53 in values and not set(values) & {24, 165, 258, 259}
    assert set(np.unique(labels).tolist()) <= set(values)
    description = json.loads((run["output"] / "dataset_description.json").read_text())
    assert description["DatasetLinks"]["samseg"] == run["samseg"].resolve().as_uri()
    assert {"URL": run["samseg"].resolve().as_uri()} in description["SourceDatasets"]


def test_resume_skips_and_the_validator_and_pybids_accept_the_outputs(run, tiny_scepi):
    validator = Path(sys.executable).parent / "bids-validator-deno"
    validator = str(validator) if validator.exists() else shutil.which("bids-validator-deno")
    assert validator, "bids-validator-deno is not installed"
    done = subprocess.run([validator, str(run["output"]), "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    errors = [issue for issue in report["issues"]["issues"] if issue["severity"] == "error"]
    assert not errors, errors[:5]
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(str(run["output"]), validate=False, is_derivative=True)
    dsegs = {(f.entities["subject"], f.entities.get("session"), f.entities["datatype"], f.entities["segmentation"],
              f.entities.get("task"), f.entities.get("run")) for f in layout.get(suffix="dseg", extension=".nii.gz")}
    assert dsegs == {("01", None, "anat", "sclimbic", None, None), ("02", "1", "anat", "sclimbic", None, None),
                     ("01", None, "anat", "samseg", None, None),
                     ("01", None, "func", "scepi", "rest", 1), ("01", None, "func", "scepi", "rest", 2),
                     ("03", None, "func", "scepi", "rest", None)}
    means = layout.get(suffix="bold", desc="mean", extension=".nii.gz")
    assert sorted((f.entities["subject"], f.entities.get("run", 0)) for f in means) == [("01", 1), ("01", 2), ("03", 0)]
    assert all(f.entities["datatype"] == "func" for f in means)
    masks = layout.get(suffix="mask", desc="brain", extension=".nii.gz")
    assert [(f.entities["subject"], f.entities["datatype"]) for f in masks] == [("01", "anat")]
    assert layout.get_metadata(masks[0].path)["Type"] == "Brain"
    # the same command again: both folders match their fingerprints, no engine is called
    calls = (run["work"] / "engine-calls.jsonl").read_text().splitlines()
    again = segsuite("bids", run["raw"], run["output"], "participant", "--models", *MODELS, "--nprocs", "1",
                     "--omp-nthreads", "1", "--skip-bids-validation", "-w", run["work"],
                     "--sclimbic-model", shared_path(*SCLIMBIC_MODEL), "--scepi-model", tiny_scepi,
                     "--derivatives", f"samseg={run['samseg']}")
    assert again.returncode == 0, again.stderr
    assert "0 done, 3 skipped" in again.stderr
    assert (run["work"] / "engine-calls.jsonl").read_text().splitlines() == calls


def test_samseg_filter_without_derivatives_is_a_usage_error(tmp_path):
    (tmp_path / "raw").mkdir()
    done = segsuite("bids", tmp_path / "raw", tmp_path / "out", "participant", "--models", "samseg-filter",
                    timeout=120)
    assert done.returncode == 2 and "--derivatives samseg=PATH" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_group_level_gathers_every_engine_table(run):
    done = segsuite("bids", run["raw"], run["output"], "group", timeout=120)
    assert done.returncode == 0, done.stderr

    def rows(name):
        lines = (run["output"] / name).read_text().splitlines()
        return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]

    sclimbic = rows("group_seg-sclimbic_morph.tsv")
    assert [(r["participant_id"], r["session_id"]) for r in sclimbic] == [("sub-01", "n/a"), ("sub-02", "ses-1")]
    assert 200 < float(sclimbic[0]["Left-Nucleus-Accumbens"]) < 900
    assert len(rows("group_seg-sclimbic_qc.tsv")) == 2
    scepi = rows("group_seg-scepi_morph.tsv")
    assert sorted((r["participant_id"], r["entities"]) for r in scepi) == [
        ("sub-01", "task-rest_run-1"), ("sub-01", "task-rest_run-2"), ("sub-03", "task-rest")]
    assert all(float(r["Spinal-Cord"]) > 0 for r in scepi)
    samseg = rows("group_seg-samseg_morph.tsv")
    assert [r["participant_id"] for r in samseg] == ["sub-01"] and "CSF" not in samseg[0]


def test_group_review_report_shows_every_engine_and_the_tables_obey_the_ratings(run, tmp_path):
    """group_qc_report.html: per image folder the views of each engine (ScLimbic centred on its
    structures, sc_epi's cord per BOLD series, the SAMSEG filter's mask over the head with SAMSEG's labels
    before the filter); --qc-ratings leaves the failed (subject, engine) rows' numbers out."""
    from segsuite.review.page import read_page_data

    ratings = tmp_path / "ratings.tsv"
    ratings.write_text("participant_id\tsession_id\tengine\trating\tnote\trater\ttime\n"
                       "sub-01\tn/a\tsclimbic\tfail\taccumbens leaks into the caudate\tr1\t2026-12-07T08:00:00Z\n"
                       "sub-01\tn/a\tscepi[task-rest_run-1]\tfail\t\tr1\t2026-12-07T08:01:00Z\n"
                       "sub-02\tses-1\tsclimbic\tpass\t\tr1\t2026-12-07T08:02:00Z\n")
    done = segsuite("bids", run["raw"], run["output"], "group", "--qc-ratings", ratings, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "kB per subject" in done.stderr and "group_qc_report.html" in done.stdout
    data = read_page_data(run["output"] / "group_qc_report.html")
    panels = {(s["p"], s["s"]): [(v["e"], v["r"]) for v in s["views"]] for s in data["subjects"]}
    assert panels == {("sub-01", ""): [("sclimbic", True), ("samseg", True), ("samseg", False),
                                       ("scepi[task-rest_run-1]", True), ("scepi[task-rest_run-2]", True)],
                      ("sub-02", "ses-1"): [("sclimbic", True)], ("sub-03", ""): [("scepi[task-rest]", True)]}
    for subject in data["subjects"]:
        for view in subject["views"]:
            assert all((run["output"] / path).is_file() for path in view["f"].values())
            planes = {tile[0] for tile in view["tiles"]}
            assert planes == {"axial", "coronal", "sagittal"}
            if view["e"] == "sclimbic":  # 90 mm windows around its structures on the 1 mm grid
                assert all(tile[4] == 90 and tile[5] == 90 for tile in view["tiles"])
                assert {"Left-Nucleus-Accumbens", "Right-Fornix"} <= {data["legends"]["sclimbic"][str(v)][0] for v in view["l"]}
            if view["e"] == "samseg" and view["r"]:  # the mask after the filter and SAMSEG's labels outside it
                assert [data["legends"]["samseg"][str(v)][0] for v in view["l"]] == [
                    "brain mask (after the filter)", "SAMSEG labels outside the mask (before the filter)"]
            if view["e"] == "samseg" and not view["r"]:  # SAMSEG's own labels, with their own legend
                assert data["legends"]["samseg:reference"]["2"][0] == "Left-Cerebral-White-Matter"
            if view["e"].startswith("scepi"):  # axial windows along the cord, as SCT's QC
                assert sum(tile[0] == "axial" for tile in view["tiles"]) >= 3
    summary = {(s["p"], s["s"]): dict(zip(data["columns"], s["v"])) for s in data["subjects"]}
    assert summary[("sub-02", "ses-1")]["sclimbic_max_abs_z"] > 0
    assert 0 < summary[("sub-02", "ses-1")]["sclimbic_min_confidence"] <= 1
    assert 1.0e6 < summary[("sub-01", "")]["samseg_brain_mask_mm3"] < 1.8e6

    def rows(name):
        lines = (run["output"] / name).read_text().splitlines()
        return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]

    sclimbic = {r["participant_id"]: r for r in rows("group_seg-sclimbic_morph.tsv")}
    assert sclimbic["sub-01"]["review_rating"] == "fail" and sclimbic["sub-01"]["Left-Nucleus-Accumbens"] == "n/a"
    assert sclimbic["sub-01"]["review_status"].startswith("excluded: rated fail by r1") and "leaks" in sclimbic["sub-01"]["review_status"]
    assert sclimbic["sub-02"]["review_status"].startswith("kept: rated pass") and float(sclimbic["sub-02"]["Left-Nucleus-Accumbens"]) > 0
    z = {r["participant_id"]: r for r in rows("group_seg-sclimbic_qc.tsv")}
    assert z["sub-01"]["Left-Fornix"] == "n/a" and z["sub-01"]["confidence-Left-Fornix"] == "n/a"
    assert float(z["sub-02"]["confidence-Left-Fornix"]) > 0.3 and -10 < float(z["sub-02"]["Left-Fornix"]) < 10
    scepi = {(r["participant_id"], r["entities"]): r for r in rows("group_seg-scepi_morph.tsv")}
    assert scepi[("sub-01", "task-rest_run-1")]["Spinal-Cord"] == "n/a"
    assert float(scepi[("sub-01", "task-rest_run-2")]["Spinal-Cord"]) > 0
    assert scepi[("sub-03", "task-rest")]["review_rating"] == "unrated"
    samseg = rows("group_seg-samseg_morph.tsv")
    assert samseg[0]["review_rating"] == "unrated" and float(samseg[0]["Left-Hippocampus"]) > 0
