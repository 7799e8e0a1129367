"""The cohort engines' inputs other than the T1w (segsuite.cohort.engines_inputs), without a cluster:
--derivatives parsing, where SAMSEG outputs and BOLD series are found, func-only folders, skip notes."""

from __future__ import annotations

import json

import pytest

from segsuite.cohort.engines_inputs import (SAMSEG_ATLAS_LABELS, ModelSkipped, bold_series, find_samseg_seg,
                                            func_only_items, has_no_t1w, note_skips, parse_derivatives,
                                            root_label_table, rows_to_table, select_with_func, table_to_rows)
from segsuite.cohort.index import CohortItem
from segsuite.errors import InputError, UsageError


def bids_item(root, participant, session=None):
    folder = f"sub-{participant}" + (f"/ses-{session}" if session else "")
    key = folder.replace("/", "_")
    relative = f"{folder}/anat/{key}_T1w.nii.gz"
    return CohortItem(participant, session, str(root / relative), (), f"bids:raw:{relative}")


def test_derivatives_take_name_equals_an_existing_folder(tmp_path):
    assert parse_derivatives([f"samseg={tmp_path}"]) == {"samseg": str(tmp_path.resolve())}
    assert parse_derivatives(None) == {}
    for value, message in (("samseg", "NAME=PATH"), (f"fmriprep={tmp_path}", "only 'samseg'"),
                           (f"samseg={tmp_path / 'absent'}", "no such folder")):
        with pytest.raises(UsageError, match=message):
            parse_derivatives([value])


def test_samseg_outputs_are_found_in_either_layout(tmp_path):
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / "seg.mgz").write_bytes(b"")
    (tmp_path / "sub-02" / "ses-1" / "anat").mkdir(parents=True)
    (tmp_path / "sub-02" / "ses-1" / "anat" / "seg.mgz").write_bytes(b"")
    raw = tmp_path / "raw"
    assert find_samseg_seg(bids_item(raw, "01"), str(tmp_path)) == (tmp_path / "sub-01" / "seg.mgz",
                                                                    "bids:samseg:sub-01/seg.mgz")
    path, uri = find_samseg_seg(bids_item(raw, "02", "1"), str(tmp_path))
    assert path == tmp_path / "sub-02/ses-1/anat/seg.mgz" and uri == "bids:samseg:sub-02/ses-1/anat/seg.mgz"
    with pytest.raises(ModelSkipped, match="no SAMSEG segmentation for sub-03"):
        find_samseg_seg(bids_item(raw, "03"), str(tmp_path))
    with pytest.raises(ModelSkipped, match="--derivatives samseg=PATH"):
        find_samseg_seg(bids_item(raw, "01"), None)


def test_bold_series_of_a_folder_and_manifest_items(tmp_path):
    func = tmp_path / "sub-01" / "ses-2" / "func"
    func.mkdir(parents=True)
    for name in ("sub-01_ses-2_task-rest_run-2_bold.nii.gz", "sub-01_ses-2_task-rest_run-1_bold.nii",
                 "sub-01_ses-2_task-rest_run-1_bold.json", "sub-01_ses-2_task-rest_sbref.nii.gz",
                 "sub-01_ses-2_task-rest_run-1_events.tsv"):
        (func / name).write_bytes(b"")
    found = bold_series(bids_item(tmp_path, "01", "2"))
    assert [(path.name, stem) for path, stem in found] == [
        ("sub-01_ses-2_task-rest_run-1_bold.nii", "sub-01_ses-2_task-rest_run-1"),
        ("sub-01_ses-2_task-rest_run-2_bold.nii.gz", "sub-01_ses-2_task-rest_run-2")]
    with pytest.raises(ModelSkipped, match="no func/"):
        bold_series(bids_item(tmp_path, "02"))
    manifest_item = CohortItem("1000001", None, str(tmp_path / "T1.nii.gz"), (), (tmp_path / "T1.nii.gz").as_uri())
    with pytest.raises(ModelSkipped, match="manifest mode"):
        bold_series(manifest_item)


def test_func_only_folders_become_items(tmp_path):
    pytest.importorskip("bids2table")
    from segsuite.cohort.index import index_bids, select_t1w

    raw = tmp_path / "raw"
    (raw / "dataset_description.json").parent.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    for relative in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/func/sub-01_task-rest_bold.nii.gz",
                     "sub-02/func/sub-02_task-rest_run-1_bold.nii.gz", "sub-02/func/sub-02_task-rest_run-2_bold.nii.gz",
                     "sub-03/ses-1/func/sub-03_ses-1_task-a_bold.nii.gz", "sub-04/anat/sub-04_T1w.nii.gz"):
        (raw / relative).parent.mkdir(parents=True, exist_ok=True)
        (raw / relative).write_bytes(b"")
    index = index_bids(raw, tmp_path / "work")
    t1w = select_t1w(index, raw)
    extra = func_only_items(index, raw, t1w)
    assert [(item.key, item.folder) for item in extra] == [("sub-02", "sub-02"), ("sub-03_ses-1", "sub-03/ses-1")]
    assert all(has_no_t1w(item) for item in extra) and not any(has_no_t1w(item) for item in t1w)
    assert [stem for _, stem in bold_series(extra[0])] == ["sub-02_task-rest_run-1", "sub-02_task-rest_run-2"]
    assert [item.key for item in func_only_items(index, raw, t1w, participants={"03"})] == ["sub-03_ses-1"]
    assert func_only_items(index, raw, t1w, sessions={"9"}) == []
    # what segsuite bids selects with scepi: T1w folders and func-only folders, by participant label too
    assert [item.key for item in select_with_func(index, raw)] == ["sub-01", "sub-02", "sub-03_ses-1", "sub-04"]
    assert [item.key for item in select_with_func(index, raw, participants={"02", "04"})] == ["sub-02", "sub-04"]
    with pytest.raises(InputError, match="no T1w image or BOLD series found for participant\\(s\\) sub-09"):
        select_with_func(index, raw, participants={"01", "09"})


def test_samseg_root_table_leaves_out_the_removed_labels():
    from segsuite.samseg import SamsegBrainMask

    table = root_label_table("samseg-filter", SamsegBrainMask())
    assert set(table.values) == set(SAMSEG_ATLAS_LABELS) - {24, 165, 258, 259}
    assert table.name(17) == "Left-Hippocampus"
    kept_csf = root_label_table("samseg-filter", SamsegBrainMask(preset="samseg2recon"))
    assert 24 in kept_csf.values and 165 not in kept_csf.values
    back = rows_to_table(json.loads(json.dumps(table_to_rows(table))))
    assert list(back.values) == list(table.values) and back.get(17).color == table.get(17).color


def test_skip_notes_append_under_one_header_each_row_once(tmp_path):
    note_skips(str(tmp_path), bids_item(tmp_path, "01"), [("scepi", "no func/*_bold.nii[.gz] series in sub-01")])
    note_skips(str(tmp_path), bids_item(tmp_path, "02", "1"), [("samseg-filter", "no SAMSEG\nsegmentation")])
    note_skips(str(tmp_path), bids_item(tmp_path, "03"), [])
    # a rerun of sub-01 (e.g. --overwrite) with the same skip and one new one
    note_skips(str(tmp_path), bids_item(tmp_path, "01"), [("scepi", "no func/*_bold.nii[.gz] series in sub-01"),
                                                          ("samseg-filter", "no SAMSEG segmentation")])
    assert (tmp_path / ".segsuite" / "logs" / "skipped.tsv").read_text().splitlines() == [
        "participant_id\tsession_id\tmodel\treason",
        "sub-01\tn/a\tscepi\tno func/*_bold.nii[.gz] series in sub-01",
        "sub-02\tses-1\tsamseg-filter\tno SAMSEG segmentation",
        "sub-01\tn/a\tsamseg-filter\tno SAMSEG segmentation"]


def test_bids_without_the_cohort_packages_says_what_to_install(tmp_path, monkeypatch, capsys):
    import sys

    from segsuite.cli import main

    image = tmp_path / "s1.nii.gz"
    image.write_bytes(b"")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"participant_id,path\n01,{image}\n")
    monkeypatch.setitem(sys.modules, "distributed", None)  # an import of it now fails, as in Slicer's Python
    out = tmp_path / "out"
    assert main(["--progress", "none", "bids", str(manifest), str(out), "participant"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "distributed" in error[0].split("needs", 1)[-1] and "requirements-cohort.txt" in error[0], error
    assert not out.exists()
