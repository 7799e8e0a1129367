"""segsuite bids ... participant --preprocess on a real Dask LocalCluster over a BIDS dataset built from a
crop of a real scan, then the group level. SynthSeg runs with random fixture weights (its maps cannot
drive a meaningful registration), so this checks the wiring: every preprocessing output commits with the
subject under BIDS names, the engine's brain mask is kept, a second run resumes with nothing to do, and
the group level writes the cohort maps and the QC table."""

from __future__ import annotations

import json

import numpy as np
import pytest

for needed in ("distributed", "bids2table", "torch"):  # the cohort runner and SynthSeg
    pytest.importorskip(needed)
import nibabel as nib  # noqa: E402
from synthseg_helpers import write_random_synthseg_model  # noqa: E402
from test_cohort import SHARED, calls, crop_of, segsuite  # noqa: E402

from segsuite.preprocess.subject import output_paths  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/t1")]

SPACE = "MNI152NLin2009aSym"
OPTIONS = ["--fast", "--crop", "64", "--omp-nthreads", "1", "--skip-bids-validation", "--nprocs", "1"]


def test_participant_preprocess_commits_resumes_and_feeds_the_group_level(tmp_path):
    (tmp_path / "model").mkdir()
    model = write_random_synthseg_model(tmp_path / "model", winning_channel=1)
    root = tmp_path / "raw"
    folder = root / "sub-01" / "anat"
    folder.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "crop", "BIDSVersion": "1.10.0"}))
    data, affine = crop_of(0, 0, size=88)
    nib.save(nib.Nifti1Image(data, affine), str(folder / "sub-01_T1w.nii.gz"))
    output = tmp_path / "segsuite"
    arguments = ["bids", root, output, "participant", "-w", tmp_path / "work", "--synthseg-model", model,
                 "--preprocess", "--preprocess-template", SPACE, "--preprocess-resolution", "2",
                 "--preprocess-registration", "t1w", *OPTIONS]
    process = segsuite(*arguments)
    _, err = process.communicate(timeout=540)
    assert process.returncode == 0, err
    anat = output / "sub-01" / "anat"
    expected = output_paths(str(anat), "sub-01", SPACE)
    for key, path in expected.items():
        assert (anat / path.split("/")[-1]).is_file(), key
    record = json.loads((anat / "sub-01_desc-preproc_qc.json").read_text())
    assert record["provenance"]["template"] == SPACE
    assert record["provenance"]["registration"].endswith("on T1w)")  # --preprocess-registration t1w reached the worker
    modulated = nib.load(expected["modulated_GM"])
    assert np.allclose(np.linalg.norm(modulated.affine[:3, :3], axis=0), 2.0)
    assert not list(output.rglob(".staging/*"))
    engine_calls, written_at = len(calls(tmp_path / "work")), (anat / "sub-01_desc-preproc_qc.json").stat().st_mtime_ns
    again = segsuite(*arguments)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(calls(tmp_path / "work")) == engine_calls  # resumed: nothing segmented or preprocessed again
    assert (anat / "sub-01_desc-preproc_qc.json").stat().st_mtime_ns == written_at
    group = segsuite("bids", root, output, "group")
    out, err = group.communicate(timeout=120)
    assert group.returncode == 0, err
    assert (output / f"group_space-{SPACE}_desc-cohort_mask.nii.gz").is_file()
    assert (output / "group_desc-preproc_qc.tsv").read_text().splitlines()[1].startswith("sub-01\t")
    from segsuite.review.page import read_page_data

    views = read_page_data(output / "group_qc_report.html")["subjects"][0]["views"]
    assert {"synthseg", "preprocess"} <= {view["e"] for view in views}  # the registration is reviewed beside the labels


def test_preprocess_needs_synthseg(tmp_path):
    process = segsuite("bids", tmp_path, tmp_path / "out", "participant", "--models", "sclimbic", "--preprocess",
                       "--skip-bids-validation")
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "--preprocess needs --models synthseg" in err
