"""The cohort index: our os.scandir crawl gives the rows bids2table's own index_dataset gives (same
Arrow schema), in one process or spread over spawned ones; the parquet cache in the work folder is
reused while the dataset is unchanged and rebuilt when a subject, a session or an image is added."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

bids2table = pytest.importorskip("bids2table")
pytest.importorskip("pyarrow")

from segsuite.cohort import index as cohort_index  # noqa: E402
from segsuite.cohort.index import index_bids, select_t1w  # noqa: E402


def touch(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mixed_dataset(root: Path, subjects: int = 6) -> Path:
    """Sessions, sidecars, a BOLD series, a coordsystem JSON (data, not a sidecar), files BIDS does not
    index (participants.tsv, scans.tsv, hidden files), a derivatives folder, an invalid run entity."""
    touch(root, "dataset_description.json", json.dumps({"Name": "mixed", "BIDSVersion": "1.10.0"}))
    touch(root, "participants.tsv", "participant_id\n")
    touch(root, "T1w.json", "{}")
    for number in range(subjects):
        sub = f"sub-{number:02d}"
        if number % 3 == 0:
            for session in ("1", "2"):
                touch(root, f"{sub}/ses-{session}/anat/{sub}_ses-{session}_acq-mprage_T1w.nii.gz")
                touch(root, f"{sub}/ses-{session}/anat/{sub}_ses-{session}_acq-mprage_T1w.json", "{}")
                touch(root, f"{sub}/ses-{session}/{sub}_ses-{session}_scans.tsv")
        else:
            touch(root, f"{sub}/anat/{sub}_run-1_T1w.nii")
            touch(root, f"{sub}/anat/{sub}_T2w.nii.gz")
            touch(root, f"{sub}/func/{sub}_task-rest_bold.nii.gz")
            touch(root, f"{sub}/func/{sub}_task-rest_bold.json", "{}")
            touch(root, f"{sub}/anat/.{sub}_T1w.nii.gz")
    touch(root, "sub-01/ieeg/sub-01_space-ACPC_coordsystem.json", "{}")
    touch(root, "sub-02/anat/sub-02_run-x_T1w.nii.gz")
    touch(root, "sub-03/ses-1/anat/sub-03_ses-1_run-02_T1w.nii.gz")
    touch(root, "derivatives/other/sub-00/anat/sub-00_desc-x_T1w.nii.gz")
    return root


def frame(table):
    data = table.to_pandas() if hasattr(table, "to_pandas") else table
    data = data.sort_values("path").reset_index(drop=True)
    data["extra_entities"] = data["extra_entities"].astype(str)
    return data


def test_crawl_gives_the_rows_and_schema_of_bids2table(tmp_path):
    root = mixed_dataset(tmp_path / "raw")
    names = [entry.name for entry in cohort_index._subject_dirs(root)]
    ours = cohort_index.index_subjects(str(root), names)
    reference = bids2table.index_dataset(root)
    assert ours.schema.equals(reference.schema)
    assert len(ours) == len(reference) > 20
    assert frame(ours).equals(frame(reference))
    paths = set(frame(ours)["path"])
    assert "sub-01/ieeg/sub-01_space-ACPC_coordsystem.json" in paths
    assert not any(path.endswith("_T1w.json") or "/." in path for path in paths)


def test_crawl_spread_over_processes_gives_the_same_rows(tmp_path, monkeypatch):
    root = mixed_dataset(tmp_path / "raw", subjects=12)
    names = [entry.name for entry in cohort_index._subject_dirs(root)]
    monkeypatch.setattr(cohort_index, "PARALLEL_MIN_SUBJECTS", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    spread = cohort_index._crawl(root, names, max_workers=2)
    assert frame(spread).equals(frame(cohort_index.index_subjects(str(root), names)))


def test_index_is_cached_in_the_work_dir_and_rebuilt_when_the_dataset_changes(tmp_path, monkeypatch):
    root = mixed_dataset(tmp_path / "raw")
    work = tmp_path / "work"
    crawls = []
    crawl = cohort_index._crawl
    monkeypatch.setattr(cohort_index, "_crawl", lambda *args: crawls.append(args[1]) or crawl(*args))

    def keys():
        return [item.key for item in select_t1w(index_bids(root, work), root)]

    first = keys()
    assert len(crawls) == 1 and list(work.glob("bids2table-*.parquet"))
    assert keys() == first and len(crawls) == 1          # unchanged: read from the cache
    time.sleep(0.01)
    touch(root, "sub-90/anat/sub-90_T1w.nii.gz")          # a new subject
    assert "sub-90" in keys() and len(crawls) == 2
    touch(root, "sub-90/ses-3/anat/sub-90_ses-3_T1w.nii.gz")   # a new session of a known subject
    assert "sub-90_ses-3" in keys() and len(crawls) == 3
    assert "sub-04" not in first
    touch(root, "sub-04/anat/sub-04_T1w.nii.gz")            # a new image in a known anat folder
    assert "sub-04" in keys() and len(crawls) == 4
    os.remove(root / "sub-04" / "anat" / "sub-04_T1w.nii.gz")   # and removed again
    assert "sub-04" not in keys() and len(crawls) == 5
    assert keys() and len(crawls) == 5
    monkeypatch.setattr(cohort_index, "INDEX_FORMAT", cohort_index.INDEX_FORMAT + 1)   # a newer crawler
    assert keys() and len(crawls) == 6


def test_select_t1w_keeps_entities_sessions_and_bids_uris(tmp_path):
    root = mixed_dataset(tmp_path / "raw")
    items = {item.key: item for item in select_t1w(index_bids(root, tmp_path / "work"), root)}
    assert "sub-00_ses-1_acq-mprage" in items and "sub-01_run-1" in items and "sub-05_run-1" in items
    item = items["sub-00_ses-2_acq-mprage"]
    assert (item.participant, item.session, item.entities) == ("00", "2", (("acq", "mprage"),))
    assert item.source_uri == "bids:raw:sub-00/ses-2/anat/sub-00_ses-2_acq-mprage_T1w.nii.gz"
    assert Path(item.path).is_file()
    # entity values as the file spells them (the index holds run as a number; pandas makes it 2.0)
    assert items["sub-03_ses-1_run-02"].entities == (("run", "02"),)
    assert not any("T2w" in item.path or "derivatives" in item.path for item in items.values())
