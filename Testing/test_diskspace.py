"""The free-space pre-flight: output sizes estimated from input headers, grouped by file system.

The estimates must bound what the commands really write (checked against real runs) and the
check must name the user's path, the need and what is free."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from segsuite import diskspace
from segsuite.diskspace import SpacePlan, image_bytes, input_grid, one_mm_voxels, text_bytes
from segsuite.errors import SegSuiteError


def test_image_sizes_follow_grid_dtype_and_compression():
    voxels = 100 * 100 * 100
    assert image_bytes("a.nii", voxels, 4) == 4_000_000 + diskspace.HEADER_BYTES
    assert image_bytes("a.nii.gz", voxels, 4) == 1_000_000 + diskspace.HEADER_BYTES       # labels: a quarter
    assert image_bytes("a.mgz", voxels, 4, integer=False) == 4_000_000 + diskspace.HEADER_BYTES  # floats: all
    assert image_bytes("a.nii.gz", voxels, 4, integer=False, channels=33) == 132_000_000 + diskspace.HEADER_BYTES
    assert text_bytes(10) > text_bytes(1) >= 16 * 1024


def test_grid_from_the_header_and_its_1mm_cover(tmp_path):
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 7), np.float32), np.diag([2.0, 1.5, 3.0, 1.0])), str(path))
    shape, zooms = input_grid(path)
    assert shape == (10, 12, 7) and zooms == (2.0, 1.5, 3.0)
    assert one_mm_voxels(shape, zooms) == 20 * 18 * 21
    four_d = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 3), np.float32), np.eye(4)), str(four_d))
    assert input_grid(four_d)[0] == (6, 5, 4)


def test_every_file_takes_whole_blocks_and_one_file_system_sums(tmp_path):
    block = os.statvfs(tmp_path).f_frsize
    plan = SpacePlan()
    for index in range(10):
        plan.add(tmp_path / f"small{index}.csv", 1)
    plan.add(tmp_path / "new" / "deeper" / "big.nii", block + 1)   # missing folders: their nearest existing one
    (path, folder, need), = plan.needs().values()
    assert need == 10 * block + 2 * block
    assert path == str(tmp_path / "small0.csv") and folder == str(tmp_path)


def test_not_enough_space_names_the_path_the_need_and_what_is_free(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    plan = SpacePlan()
    plan.add(tmp_path / "seg.nii.gz", free + 10 ** 9)
    with pytest.raises(SegSuiteError) as caught:
        plan.check()
    message = str(caught.value)
    assert str(tmp_path / "seg.nii.gz") in message and "free" in message and "\n" not in message
    assert diskspace.format_bytes(free + 10 ** 9)[:3] in message
    SpacePlan().check()                       # nothing to write: nothing to check
    small = SpacePlan()
    small.add(tmp_path / "seg.nii.gz", 1000)
    small.check()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs mounted by the test (root only; skipped with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_staging_location_counts_where_the_bytes_land(tmp_path, small_tmpfs):
    plan = SpacePlan()
    plan.add(tmp_path / "out" / "seg.mgz", 200_000, staged_in=small_tmpfs / "work")   # lands on the tmpfs
    plan.add(tmp_path / "out" / "vol.csv", 1000)                                    # lands on tmp_path's disk
    assert len(plan.needs()) == 2
    with pytest.raises(SegSuiteError, match="not enough free space for .*seg.mgz.*64.0 KiB free"):
        plan.check()


def _written_bytes(folder: Path) -> int:
    block = os.statvfs(folder).f_frsize
    return sum(-(-p.stat().st_size // block) * block for p in folder.rglob("*") if p.is_file())


def _estimated_bytes(space: SpacePlan) -> int:
    return sum(need for _, _, need in space.needs().values())


def test_samseg_filter_estimate_bounds_what_it_writes(tmp_path, capsys):
    from segsuite.cli import main
    from segsuite.commands import samseg_filter

    seg = np.zeros((40, 44, 36), dtype=np.int32)
    seg[5:35, 5:39, 5:31] = 2
    seg[3:8, :, :] = 165
    source = tmp_path / "seg.mgz"
    nib.save(nib.MGHImage(seg, np.eye(4)), str(source))
    out = tmp_path / "out"
    argv = ["--i", str(source), "--o", str(out / "mask.nii.gz"), "--cleaned-aseg", str(out / "clean.mgz"),
            "--volumes", str(out / "vol.csv")]
    assert main(["--progress", "none", "samseg-filter", *argv]) == 0
    args = SimpleNamespace(input=str(source), output=str(out / "mask.nii.gz"), cleaned_aseg=str(out / "clean.mgz"),
                           volumes=str(out / "vol.csv"), subject_dir=None)
    estimate = _estimated_bytes(samseg_filter.expected_space(args))
    assert _written_bytes(out) <= estimate < 100 * _written_bytes(out) + 10 ** 6


def test_synthseg_estimate_bounds_what_it_writes(tmp_path):
    from synthseg_helpers import write_random_synthseg_model

    from segsuite.cli import build_parser, main
    from segsuite.commands import synthseg
    from segsuite.synthseg.outputs import plan_outputs

    (tmp_path / "model").mkdir()
    model = write_random_synthseg_model(tmp_path / "model")
    rng = np.random.default_rng(0)
    t1 = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image((rng.random((20, 22, 12)) * 100).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), str(t1))
    out = tmp_path / "out"
    argv = ["synthseg", "--i", str(t1), "--o", str(out / "seg.nii.gz"), "--post", str(out / "post.nii.gz"),
            "--resample", str(out / "res.nii.gz"), "--vol", str(out / "vol.csv"), "--model", str(model),
            "--cpu", "--threads", "1", "--fast"]
    assert main(["--progress", "none", *argv]) == 0
    args = build_parser().parse_args(argv)
    plan = plan_outputs(args.input, {"seg": args.output, "post": args.post, "resample": args.resample,
                                     "vol": args.vol, "qc": args.qc})
    estimate = _estimated_bytes(synthseg.expected_space(args, plan))
    written = _written_bytes(out)
    assert {p.name for p in out.iterdir()} == {"seg.nii.gz", "post.nii.gz", "res.nii.gz", "vol.csv"}
    assert written <= estimate < 40 * written


def _cohort(tmp_path, count=2):
    rows = ["participant_id,path"]
    for index in range(count):
        image = tmp_path / "scans" / f"s{index}.nii.gz"
        image.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((40, 40, 20), np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), str(image))
        rows.append(f"{index + 1:02d},{image}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_cohort_estimate_counts_only_the_subjects_still_to_do(tmp_path):
    from segsuite.cli import build_parser
    from segsuite.cohort.derivatives import provenance_path
    from segsuite.cohort.index import read_manifest
    from segsuite.commands import bids

    manifest = _cohort(tmp_path, 3)
    out = tmp_path / "derivatives"
    items = read_manifest(manifest)
    args = build_parser().parse_args(["bids", str(manifest), str(out), "participant", "--posteriors"])
    three = _estimated_bytes(bids.expected_space(args, items, out))
    assert three >= 3 * 33 * 40 * 40 * 40 * 4          # posteriors: 33 float32 maps on the 1 mm cover
    record = provenance_path(out, items[0])
    record.parent.mkdir(parents=True)
    record.write_text("{}")                            # a subject done earlier is skipped, so not counted
    assert _estimated_bytes(bids.expected_space(args, items, out)) == three * 2 // 3
    args.overwrite = True
    assert _estimated_bytes(bids.expected_space(args, items, out)) == three


def test_cohort_runner_stops_before_the_cluster_when_the_output_disk_is_too_small(tmp_path, small_tmpfs, capsys):
    pytest.importorskip("distributed", reason="the cohort runner needs requirements-cohort.txt (absent in Slicer's Python)")
    from segsuite.cli import main

    manifest = _cohort(tmp_path)
    out = small_tmpfs
    weights = tmp_path / "synthseg_2.0.h5"  # the start-up checks want the weights; the disk check stops the run first
    weights.write_bytes(b"")
    assert main(["--progress", "none", "bids", str(manifest), str(out), "participant",
                 "--synthseg-model", str(weights)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    # 60 of the 64 KiB: the run's lock file (.segsuite.lock) holds one block while it checks
    assert len(error) == 1 and f"not enough free space for {out}" in error[0] and "60.0 KiB free" in error[0]
    assert list(out.iterdir()) == []               # no work folder, no dataset files, no cluster, no lock
