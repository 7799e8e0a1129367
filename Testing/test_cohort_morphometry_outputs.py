"""The cohort runner's morphometry files without a cluster: BIDS names and sidecars staged in the subject's
folder, res-1mm only off the input's grid, and the group step over a cohort output dataset (fast; the
end-to-end run on Dask and the BIDS validator are in test_cohort_morphometry.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("pandas")

from segsuite.cohort.index import CohortItem  # noqa: E402
from segsuite.cohort.morphometry_outputs import write_morphometry_derivatives, write_morphometry_group  # noqa: E402
from segsuite.labels import freesurfer_lut  # noqa: E402
from segsuite.result import SegmentationResult  # noqa: E402

from test_morphometry import _phantom  # noqa: E402

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _subject(tmp_path, participant, session, scale, posteriors_affine=AFFINE):
    image, labels = _phantom(seed=int(participant), noise=3.0 + scale)
    image = np.round(np.clip(image * scale, 0, None)).astype(np.int16)
    raw = tmp_path / "raw" / f"sub-{participant}" / "anat"
    raw.mkdir(parents=True, exist_ok=True)
    path = raw / f"sub-{participant}_T1w.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), str(path))
    channels = [0, 2, 3, 4]
    posteriors = 0.9 * np.stack([(labels == v).astype(np.float32) for v in channels], axis=-1) + 0.025
    result = SegmentationResult(labels=labels, affine=AFFINE, label_table=freesurfer_lut().subset(channels),
                                posteriors=posteriors, posterior_labels=channels, posteriors_affine=posteriors_affine,
                                qc={"general grey matter": 0.9}, measures={"total intracranial": 1.0e5 * scale},
                                volumes={"left cerebral cortex": 4.0e4 * scale}, subject=f"sub-{participant}")
    item = CohortItem(participant, session, str(path), source_uri=f"bids:raw:sub-{participant}/anat/{path.name}")
    return item, result


def test_files_in_bids_naming_with_sidecars_staged_in_the_subject_folder(tmp_path):
    item, result = _subject(tmp_path, "01", "2", 1.0)
    folder = tmp_path / "staging"
    written = write_morphometry_derivatives(folder, item, "synthseg", result)
    key = "sub-01_ses-2"
    expected = {f"{key}_label-{tissue}_probseg.{ext}" for tissue in ("GM", "WM", "CSF") for ext in ("nii.gz", "json")}
    expected |= {f"{key}_dseg.nii.gz", f"{key}_dseg.json", f"{key}_dseg.tsv", f"{key}_desc-brain_mask.nii.gz",
                 f"{key}_desc-brain_mask.json", f"{key}_morphometry.tsv", f"{key}_morphometry.json",
                 f"{key}_aseg.stats", f"{key}_desc-qc_mosaic.webp"}
    assert set(written) == expected
    assert {path.name for path in (folder / "anat").iterdir()} == expected  # committed: no temporaries left
    gm = np.asanyarray(nib.load(str(folder / "anat" / f"{key}_label-GM_probseg.nii.gz")).dataobj)
    assert np.allclose(gm, result.posteriors[..., 2], atol=1e-6)  # label 3 (cortex) is the only GM channel
    sidecar = json.loads((folder / "anat" / f"{key}_label-GM_probseg.json").read_text())
    assert sidecar["Sources"] == [item.source_uri] and "Resolution" not in sidecar
    assert json.loads((folder / "anat" / f"{key}_desc-brain_mask.json").read_text())["Type"] == "Brain"
    row = (folder / "anat" / f"{key}_morphometry.tsv").read_text().splitlines()
    values = dict(zip(row[0].split("\t"), row[1].split("\t")))
    assert values["participant_id"] == "sub-01" and values["session_id"] == "ses-2"
    # TIV: the non-background posterior mass (1 mm voxels), as from SynthSeg's files (not the engine's own
    # figure), written to 0.01 mm3 as every table volume
    assert values["TIV"] == f"{float(np.sum(result.posteriors[..., 1:], dtype=np.float64)):.2f}"


def test_a_brain_mask_of_another_engine_keeps_its_name(tmp_path):
    item, result = _subject(tmp_path, "03", None, 1.0)
    anat = tmp_path / "staging" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-03_desc-brain_mask.nii.gz").write_bytes(b"the SAMSEG filter's mask")
    written = write_morphometry_derivatives(tmp_path / "staging", item, "synthseg", result)
    assert "sub-03_desc-brain_mask.nii.gz" not in written and "sub-03_dseg.nii.gz" in written
    assert (anat / "sub-03_desc-brain_mask.nii.gz").read_bytes() == b"the SAMSEG filter's mask"


def test_maps_off_the_input_grid_are_named_res_1mm(tmp_path):
    shifted = AFFINE.copy()
    shifted[:3, 3] = [0.5, 0, 0]  # SynthSeg's 1 mm grid, not the input's
    item, result = _subject(tmp_path, "02", None, 1.0, posteriors_affine=shifted)
    written = write_morphometry_derivatives(tmp_path / "staging", item, "synthseg", result)
    assert "sub-02_res-1mm_label-WM_probseg.nii.gz" in written and "sub-02_res-1mm_dseg.nii.gz" in written
    sidecar = json.loads((tmp_path / "staging" / "anat" / "sub-02_res-1mm_label-WM_probseg.json").read_text())
    assert "1 mm" in sidecar["Resolution"]


def test_group_step_over_a_cohort_output_dataset(tmp_path):
    import pandas as pd

    output = tmp_path / "segsuite"
    for number, scale in enumerate((0.9, 1.0, 1.1, 1.3), start=1):
        item, result = _subject(tmp_path, f"{number:02d}", None, scale)
        write_morphometry_derivatives(output / item.folder, item, "synthseg", result)
    (output / "logs").mkdir()  # what else lies in a cohort dataset is not read
    written = write_morphometry_group(output)
    assert {"group_volumes.tsv", "group_volumes_tiv-proportional.tsv", "group_volumes_tiv-residual.tsv",
            "group_tiv-residual_fit.tsv", "group_qc_flags.tsv", "group_qc_ranking.tsv"} <= set(written.names)
    wide = pd.read_csv(output / "group_volumes.tsv", sep="\t")
    proportional = pd.read_csv(output / "group_volumes_tiv-proportional.tsv", sep="\t")
    assert list(wide["participant_id"]) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert np.allclose(proportional["Left-Cerebral-Cortex"], wide["Left-Cerebral-Cortex"] / wide["TIV"] * 1.5e6)
    from segsuite.cohort.group import collect_cohort_tables
    from segsuite.cohort.review import write_cohort_review
    from segsuite.review.page import read_page_data

    review = write_cohort_review(output, collect_cohort_tables(output), written.tables)
    data = read_page_data(output / review["name"])
    assert [s["p"] for s in sorted(data["subjects"], key=lambda s: s["p"])] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    tiv = {s["p"]: dict(zip(data["columns"], s["v"]))["TIV"] for s in data["subjects"]}
    assert tiv == pytest.approx(dict(zip(wide["participant_id"], wide["TIV"])))
    empty = write_morphometry_group(tmp_path / "empty")
    assert empty.names == [] and empty.tables is None
