"""The per-engine commit of one image's derivatives folder: each engine's files come and go on their
own, the others' stay the same files, and a folder moved aside by a commit that died before its
replacement came in is put back by the next run's clear_staging."""

from __future__ import annotations

import json
import os

import pytest

from segsuite.cohort.derivatives import SubjectCommit, clear_staging, missing_engines
from segsuite.cohort.index import CohortItem


def stage(commit: SubjectCommit, files: dict):
    staged = commit.stage()
    for relative, text in files.items():
        (staged / relative).parent.mkdir(parents=True, exist_ok=True)
        (staged / relative).write_text(text)
    return staged


def entry(fingerprint: str) -> dict:
    return {"fingerprint": fingerprint, "status": "done", "seconds": 1.0, "notes": []}


def test_each_engine_commits_and_is_redone_on_its_own(tmp_path):
    item = CohortItem("01", "1", str(tmp_path / "sub-01_ses-1_T1w.nii.gz"))
    folder = tmp_path / "sub-01" / "ses-1"
    synthseg = {"anat/sub-01_ses-1_seg-synthseg_dseg.nii.gz": "a", "anat/sub-01_ses-1_seg-synthseg_morph.tsv": "b"}
    commit = SubjectCommit(tmp_path, item)
    commit.commit_engine("synthseg", stage(commit, synthseg), entry("s1"))
    commit.commit_engine("sclimbic", stage(commit, {"anat/sub-01_ses-1_seg-sclimbic_dseg.nii.gz": "c"}), entry("c1"))
    kept = (folder / "anat/sub-01_ses-1_seg-synthseg_dseg.nii.gz").stat()
    assert missing_engines(tmp_path, item, {"synthseg": "s1", "sclimbic": "c1"}) == []
    assert missing_engines(tmp_path, item, {"synthseg": "s1", "sclimbic": "c2"}) == ["sclimbic"]

    # ScLimbic redone with other options and fewer files: its old file goes, SynthSeg's stay the same files
    again = SubjectCommit(tmp_path, item)
    again.commit_engine("sclimbic", stage(again, {"anat/sub-01_ses-1_seg-sclimbic_probseg.nii.gz": "d"}), entry("c2"))
    assert sorted(p.name for p in (folder / "anat").iterdir()) == [
        "sub-01_ses-1_seg-sclimbic_probseg.nii.gz", "sub-01_ses-1_seg-synthseg_dseg.nii.gz",
        "sub-01_ses-1_seg-synthseg_morph.tsv"]
    after = (folder / "anat/sub-01_ses-1_seg-synthseg_dseg.nii.gz").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    record = json.loads((folder / "sub-01_ses-1_segsuite.json").read_text())
    assert record["engines"]["sclimbic"]["files"] == ["anat/sub-01_ses-1_seg-sclimbic_probseg.nii.gz"]
    assert sorted(record["engines"]["synthseg"]["files"]) == sorted(synthseg)
    assert missing_engines(tmp_path, item, {"synthseg": "s1", "sclimbic": "c2"}) == []
    # a committed file gone from disk makes its engine missing again
    os.unlink(folder / "anat/sub-01_ses-1_seg-synthseg_morph.tsv")
    assert missing_engines(tmp_path, item, {"synthseg": "s1", "sclimbic": "c2"}) == ["synthseg"]
    assert [p.name for p in (tmp_path / ".staging").iterdir()] == []


@pytest.mark.parametrize("session", [None, "1"])
def test_a_folder_moved_aside_by_a_dying_commit_is_put_back(tmp_path, session):
    item = CohortItem("01", session, str(tmp_path / "T1w.nii.gz"))
    commit = SubjectCommit(tmp_path, item)
    dseg = f"anat/{item.key}_seg-synthseg_dseg.nii.gz"
    commit.commit_engine("synthseg", stage(commit, {dseg: "a"}), entry("s1"))
    # what a process killed between the two renames of _swap leaves: the folder aside, a next version staged
    aside = tmp_path / ".staging" / "swap-dead" / item.folder
    aside.parent.mkdir(parents=True)
    os.rename(tmp_path / item.folder, aside)
    stage(SubjectCommit(tmp_path, item), {f"anat/{item.key}_seg-sclimbic_dseg.nii.gz": "half"})
    clear_staging(tmp_path)
    assert (tmp_path / item.folder / dseg).read_text() == "a"
    assert not (tmp_path / ".staging").exists()
    assert missing_engines(tmp_path, item, {"synthseg": "s1"}) == []
