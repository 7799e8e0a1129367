"""segsuite bids ... participant --morphometry and the group level's morphometry step, on a real Dask
LocalCluster over a BIDS dataset built from crops of real scans: the BIDS-named tissue maps equal a
direct compute_morphometry on a direct engine call, everything commits with the subject, the real BIDS
validator passes, PyBIDS finds the maps by label; the group level writes the TIV-corrected tables, the
flags and ranking and the HTML report into the output dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("bids2table")
nib = pytest.importorskip("nibabel")
pytest.importorskip("torch")

from synthseg_helpers import write_random_synthseg_model  # noqa: E402
from test_cohort import SHARED, bids_validator_errors, crop_of, segsuite  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/t1 (real scans)")]

SUBJECTS = [("01", None, 0, 0), ("02", "1", 1, 0), ("03", None, 2, 4)]  # participant, session, scan, shift
OPTIONS = ["--fast", "--crop", "64", "--omp-nthreads", "1", "--skip-bids-validation", "--nprocs", "1"]


def _key(participant, session):
    return f"sub-{participant}" + (f"_ses-{session}" if session else "")


def _anat(participant, session):
    return f"sub-{participant}" + (f"/ses-{session}" if session else "") + "/anat"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # random weights alone label everything background: one tissue channel wins instead, inside SynthSeg's
    # centred 64^3 crop of the 88^3 inputs (air around it)
    return write_random_synthseg_model(tmp_path_factory.mktemp("synthseg_model"), winning_channel=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("bids") / "raw"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "crops", "BIDSVersion": "1.10.0"}))
    for participant, session, scan, shift in SUBJECTS:
        folder = root / _anat(participant, session)
        folder.mkdir(parents=True)
        data, affine = crop_of(scan, shift, size=88)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"{_key(participant, session)}_T1w.nii.gz"))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{p}\n" for p, *_ in SUBJECTS))
    output = root.parent / "segsuite"
    process = segsuite("bids", root, output, "participant", "-w", root.parent / "work", "--synthseg-model", model,
                       "--morphometry", *OPTIONS)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    process = segsuite("bids", root, output, "group")
    group_out, group_err = process.communicate(timeout=120)
    assert process.returncode == 0, group_err
    return {"raw": root, "output": output, "group_stdout": group_out}


def test_tissue_maps_in_bids_naming_equal_a_direct_computation(cohort, model):
    from segsuite.morphometry.subject import compute_morphometry
    from segsuite.synthseg import SynthSegEngine

    engine = SynthSegEngine(model=str(model), fast=True, crop=64, posteriors=True, device="cpu", threads=1)
    for participant, session, _, _ in SUBJECTS:
        key, anat = _key(participant, session), cohort["output"] / _anat(participant, session)
        source = cohort["raw"] / _anat(participant, session) / f"{key}_T1w.nii.gz"
        expected = compute_morphometry(str(source), engine.segment(str(source), resample_output=True))
        # the maps keep the posteriors' 1 mm grid: res-1mm where that is not the input's grid
        image = nib.load(str(source))
        on_input_grid = expected.dseg.shape == image.shape and np.allclose(expected.affine, image.affine, atol=1e-4)
        stem = anat / (key if on_input_grid else f"{key}_res-1mm")
        for tissue in ("GM", "WM", "CSF"):
            written = nib.load(f"{stem}_label-{tissue}_probseg.nii.gz")
            assert np.allclose(written.affine, expected.affine, atol=1e-4)
            assert np.max(np.abs(np.asanyarray(written.dataobj) - expected.tissue_maps[tissue])) < 1e-5, (key, tissue)
            sidecar = json.loads(Path(f"{stem}_label-{tissue}_probseg.json").read_text())
            assert sidecar["Sources"] == [f"bids:raw:{_anat(participant, session)}/{key}_T1w.nii.gz"]
            assert ("Resolution" in sidecar) != on_input_grid
        dseg = np.asanyarray(nib.load(f"{stem}_dseg.nii.gz").dataobj)
        assert np.array_equal(dseg, expected.dseg) and set(np.unique(dseg)) <= {0, 1, 2, 3}
        assert Path(f"{stem}_dseg.tsv").read_text().splitlines()[1:] == ["1\tGM", "2\tWM", "3\tCSF"]
        mask = np.asanyarray(nib.load(f"{stem}_desc-brain_mask.nii.gz").dataobj)
        assert np.array_equal(mask > 0, dseg > 0)
        assert json.loads(Path(f"{stem}_desc-brain_mask.json").read_text())["Type"] == "Brain"
        table = Path(f"{stem}_morphometry.tsv").read_text().splitlines()
        row = dict(zip(table[0].split("\t"), table[1].split("\t")))
        assert row["participant_id"] == f"sub-{participant}"
        assert row["session_id"] == (f"ses-{session}" if session else "n/a")  # BIDS's one missing-value marker
        for name in ("spec_snr", "spec_snr_air", "spec_cnr", "mriqc_snr_wm", "mriqc_cjv", "mriqc_efc", "mriqc_fber"):
            written_value = float("nan") if row[name] == "n/a" else float(row[name])  # n/a: NaN (a tissue absent)
            # written to 6 significant digits (segsuite/table_values.py)
            assert written_value == pytest.approx(expected.metrics[name], rel=5e-6, nan_ok=True), (key, name)
        assert np.isfinite(float(row["spec_snr"])) and np.isfinite(float(row["mriqc_efc"])), key
        assert float(row["TIV"]) == pytest.approx(expected.tiv, rel=1e-6)
        provenance = json.loads((anat.parent / f"{key}_segsuite.json").read_text())
        assert provenance["models"]["synthseg"]["options"]["morphometry"] is True
    assert not (cohort["output"] / ".staging").exists()


def test_output_with_morphometry_passes_the_bids_validator_and_pybids(cohort):
    issues = bids_validator_errors(cohort["output"], ("error", "warning"))
    assert not [issue for issue in issues if issue["severity"] == "error"], issues[:5]
    ours = [issue for issue in issues if "seg-" not in str(issue.get("location"))  # not the engines' own
            and any(part in str(issue.get("location")) for part in ("probseg", "dseg", "brain_mask"))]
    assert not ours, ours[:5]  # no warning either (units, Description) on the morphometry files
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(str(cohort["output"]), validate=False, is_derivative=True)
    maps = layout.get(suffix="probseg", extension=".nii.gz")
    assert {(f.entities["subject"], f.entities["label"]) for f in maps} == \
        {(p, tissue) for p, *_ in SUBJECTS for tissue in ("GM", "WM", "CSF")}
    masks = layout.get(suffix="mask", desc="brain", extension=".nii.gz")
    assert {f.entities["subject"] for f in masks} == {p for p, *_ in SUBJECTS}


def test_group_level_writes_the_morphometry_group_step(cohort):
    import pandas as pd

    output = cohort["output"]
    wide = pd.read_csv(output / "group_volumes.tsv", sep="\t")
    proportional = pd.read_csv(output / "group_volumes_tiv-proportional.tsv", sep="\t")
    residual = pd.read_csv(output / "group_volumes_tiv-residual.tsv", sep="\t")
    fit = pd.read_csv(output / "group_tiv-residual_fit.tsv", sep="\t")
    assert sorted(wide["participant_id"]) == [f"sub-{p}" for p, *_ in SUBJECTS]
    region = "tissue-GM"
    assert np.allclose(proportional[region], wide[region] / wide["TIV"] * 1.5e6)
    slope, intercept = fit.set_index("region").loc[region, ["slope", "intercept"]]
    # (TIV without spread across these crops leaves no fit: NaN on both sides)
    assert np.allclose(residual[region], wide[region] - (intercept + slope * wide["TIV"]), equal_nan=True)
    ranking = pd.read_csv(output / "group_qc_ranking.tsv", sep="\t")
    assert list(ranking["rank"]) == [1, 2, 3] and {"n_flags", "reasons"} <= set(ranking.columns)
    assert (output / "group_qc_flags.tsv").is_file()
    from segsuite.review.page import read_page_data

    report = read_page_data(output / "group_qc_report.html")
    assert sorted(s["p"] for s in report["subjects"]) == sorted(f"sub-{p}" for p, *_ in SUBJECTS)
    # every subject's SynthSeg views, each a base, filled and outlined layer beside the report
    assert all([v["e"] for v in s["views"]] == ["synthseg"] for s in report["subjects"])
    assert all((output / f).is_file() for s in report["subjects"] for f in s["views"][0]["f"].values())
    assert "group_qc_report.html" in (output / ".bidsignore").read_text().split()
    assert "group_qc_report.html" in cohort["group_stdout"]
    # the engines' own group tables are still there
    assert (output / "group_seg-synthseg_morph.tsv").is_file()
