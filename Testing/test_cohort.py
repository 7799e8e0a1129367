"""segsuite bids on a real Dask LocalCluster (two spawned worker processes) over a BIDS dataset built
from small crops of real scans: derivatives equal a direct engine call, failures isolated, a worker
SIGKILLed mid-run, the whole command killed and resumed, the BIDS validator and PyBIDS on the output,
the manifest mode on a UK-Biobank-style tree, dask-jobqueue job scripts, joining a running scheduler."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("bids2table")
nib = pytest.importorskip("nibabel")
torch = pytest.importorskip("torch")

from synthseg_helpers import write_random_synthseg_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "t1"
SCANS = ["t1_crop.nii.gz", "seg3d_MR_T1_clinical.nii.gz", "stroke_T1_brainextracted.nii.gz"]
ROOT = Path(__file__).resolve().parents[1]
# (participant, session or None, scan index, crop shift in voxels)
GOOD = [("01", None, 0, 0), ("02", None, 1, 0), ("03", None, 2, 0), ("04", "1", 0, 4), ("04", "2", 0, -4),
        ("05", "1", 1, 3), ("06", None, 2, 5), ("07", None, 0, 8)]
BAD = {"08": "unreadable", "09": "4d"}
OPTIONS = ["--fast", "--crop", "64", "--omp-nthreads", "1", "--skip-bids-validation"]

# Real Dask clusters and the BIDS validator: CI's slow step.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/t1 (real scans)")]


def crop_of(scan: int, shift: int, size: int = 64):
    image = nib.load(str(SHARED / SCANS[scan]))
    data = np.asanyarray(image.dataobj)
    centre = [s // 2 + shift for s in data.shape[:3]]
    lower = [max(c - size // 2, 0) for c in centre]
    block = data[lower[0]:lower[0] + size, lower[1]:lower[1] + size, lower[2]:lower[2] + size]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ lower + image.affine[:3, 3]
    return np.ascontiguousarray(block), affine


def build_bids(root: Path) -> Path:
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "crops", "BIDSVersion": "1.10.0"}))
    rows = ["participant_id"]
    for participant, session, scan, shift in GOOD:
        folder = root / f"sub-{participant}" / (f"ses-{session}" if session else "") / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"sub-{participant}" + (f"_ses-{session}" if session else "") + "_T1w.nii.gz"
        data, affine = crop_of(scan, shift)
        nib.save(nib.Nifti1Image(data, affine), str(folder / name))
        rows.append(f"sub-{participant}")
    for participant, kind in BAD.items():
        folder = root / f"sub-{participant}" / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"sub-{participant}_T1w.nii.gz"
        if kind == "unreadable":
            path.write_bytes(b"this is not a NIfTI file")
        else:
            data, affine = crop_of(0, 0)
            nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), affine), str(path))
        rows.append(f"sub-{participant}")
    (root / "participants.tsv").write_text("\n".join(dict.fromkeys(rows)) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_bids(tmp_path_factory.mktemp("bids") / "raw")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_synthseg_model(tmp_path_factory.mktemp("synthseg_model"))


def segsuite(*arguments, **options):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "segsuite", "--progress", "none", *map(str, arguments)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def calls(work: Path) -> list[dict]:
    path = work / "engine-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def bids_validator_errors(dataset: Path, severities=("error",)) -> list:
    """The issues of these severities bids-validator-deno reports on ``dataset``."""
    validator = Path(sys.executable).parent / "bids-validator-deno"
    if not validator.exists():
        validator = shutil.which("bids-validator-deno")
    assert validator, "bids-validator-deno is not installed"
    done = subprocess.run([str(validator), str(dataset), "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    return [issue for issue in report["issues"]["issues"] if issue["severity"] in severities]


def good_keys():
    return [f"sub-{p}" + (f"_ses-{s}" if s else "") for p, s, _, _ in GOOD]


@pytest.fixture(scope="module")
def first_run(dataset, model, tmp_path_factory):
    """The participant level with two workers; one worker SIGKILLed at its first engine call."""
    output = tmp_path_factory.mktemp("out") / "segsuite"
    work = output.parent / "work"
    process = segsuite("bids", dataset, output, "participant", "--nprocs", "2", "-w", work,
                       "--synthseg-model", model, *OPTIONS)
    killed = None
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        found = calls(work)
        if found and killed is None:
            killed = found[0]
            os.kill(killed["pid"], signal.SIGKILL)
        time.sleep(0.05)
    out, err = process.communicate(timeout=240)
    return {"output": output, "work": work, "code": process.returncode, "stderr": err, "killed": killed}


def test_good_subjects_equal_a_direct_engine_call(first_run, dataset, model):
    from segsuite.synthseg import SynthSegEngine

    engine = SynthSegEngine(model=str(model), fast=True, crop=64, device="cpu", threads=1)
    output = first_run["output"]
    for participant, session, _, _ in GOOD:
        rel = f"sub-{participant}" + (f"/ses-{session}" if session else "") + "/anat"
        key = f"sub-{participant}" + (f"_ses-{session}" if session else "")
        source = dataset / rel / f"{key}_T1w.nii.gz"
        expected = engine.segment(str(source), resample_output=True)
        written = nib.load(str(output / rel / f"{key}_seg-synthseg_dseg.nii.gz"))
        assert np.array_equal(np.asanyarray(written.dataobj), expected.labels), key
        assert np.allclose(written.affine, nib.load(str(source)).affine, atol=1e-4)
        sidecar = json.loads((output / rel / f"{key}_seg-synthseg_dseg.json").read_text())
        assert sidecar["Sources"] == [f"bids:raw:{rel}/{key}_T1w.nii.gz"]
        morph = (output / rel / f"{key}_seg-synthseg_morph.tsv").read_text().splitlines()
        assert morph[0] == "index\tname\tvolume-mm3" and len(morph) == 1 + len(expected.volumes)
        name, volume = morph[2].split("\t")[1:]
        assert float(volume) == pytest.approx(expected.volumes[name], abs=0.005)  # written to 0.01 mm3


def test_failures_isolated_with_reasons_and_exit_code(first_run):
    assert first_run["code"] == 1, first_run["stderr"]
    assert "2 subject(s) failed" in first_run["stderr"]
    rows = (first_run["output"] / ".segsuite" / "logs" / "failed.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["participant_id", "session_id", "model", "input", "reason", "log"]
    assert {row.split("\t")[2] for row in rows[1:]} == {"synthseg"}
    reasons = {row.split("\t")[0]: row.split("\t")[4] for row in rows[1:]}
    assert set(reasons) == {"sub-08", "sub-09"}
    assert "cannot read" in reasons["sub-08"]
    assert "2 volumes" in reasons["sub-09"]
    assert not (first_run["output"] / "sub-08").exists() and not (first_run["output"] / "sub-09").exists()


def test_worker_killed_mid_run_still_completes_without_partial_output(first_run):
    assert first_run["killed"] is not None, "no engine call was seen to kill its worker"
    output = first_run["output"]
    assert not (output / ".staging").exists()
    for key in good_keys():
        folder = output / key.replace("_", "/")
        assert (folder / f"{key}_segsuite.json").is_file(), key
    killed_calls = [c for c in calls(first_run["work"]) if c["key"] == first_run["killed"]["key"]]
    assert len(killed_calls) >= 2  # the killed task ran again on a live worker
    loads = [json.loads(line) for line in (first_run["work"] / "model-loads.jsonl").read_text().splitlines()]
    assert len({load["pid"] for load in loads}) == len(loads)  # one load per worker process


def test_output_passes_the_bids_validator_and_pybids_finds_every_output(first_run):
    errors = bids_validator_errors(first_run["output"])
    assert not errors, errors[:5]
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(str(first_run["output"]), validate=False, is_derivative=True)
    found = layout.get(suffix="dseg", extension=".nii.gz")
    entities = {(f.entities["subject"], f.entities.get("session")) for f in found}
    assert entities == {(p, s) for p, s, _, _ in GOOD}
    assert all(f.entities.get("datatype") == "anat" for f in found)


def test_group_level_gathers_the_tables(first_run):
    process = segsuite("bids", "unused", first_run["output"], "group")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    lines = (first_run["output"] / "group_seg-synthseg_morph.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:2] == ["participant_id", "session_id"] and len(lines) == 1 + len(GOOD)
    assert "sub-04\tses-2" in "\n".join(lines)
    failures = (first_run["output"] / "group_failures.tsv").read_text()
    assert "sub-08" in failures and "sub-09" in failures
    assert "2 failed subject(s) (2 (subject, engine) row(s)) in .segsuite/logs/failed.tsv" in out, out


def test_killed_command_restarted_redoes_nothing_complete(dataset, model, tmp_path):
    output, work = tmp_path / "out", tmp_path / "work"
    process = segsuite("bids", dataset, output, "participant", "--nprocs", "2", "-w", work,
                       "--synthseg-model", model, *OPTIONS, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(output.glob("sub-*/**/*_segsuite.json"))) < 3:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    complete = {p.name[:-len("_segsuite.json")] for p in output.glob("sub-*/**/*_segsuite.json")}
    assert len(complete) >= 3
    restart = segsuite("bids", dataset, output, "participant", "--nprocs", "2", "-w", work,
                       "--synthseg-model", model, *OPTIONS)
    out, err = restart.communicate(timeout=300)
    assert restart.returncode == 1, err  # the two bad subjects
    assert f"{len(complete)} skipped" in err
    counts = {}
    for call in calls(work):
        counts[call["key"]] = counts.get(call["key"], 0) + 1
    for key in complete:
        assert counts[key] == 1, key
    for key in good_keys():
        assert (output / key.replace("_", "/") / f"{key}_segsuite.json").is_file()
    assert not (output / ".staging").exists()


def test_manifest_mode_on_a_uk_biobank_tree(model, tmp_path):
    for eid, scan in (("1000001", 0), ("1000002", 1)):
        folder = tmp_path / "ukb" / eid / "T1"
        folder.mkdir(parents=True)
        data, affine = crop_of(scan, 0)
        nib.save(nib.Nifti1Image(data, affine), str(folder / "T1.nii.gz"))
    manifest = tmp_path / "ukb" / "manifest.tsv"
    manifest.write_text("participant_id\tpath\n1000001\t1000001/T1/T1.nii.gz\n1000002\t1000002/T1/T1.nii.gz\n")
    output = tmp_path / "out"
    process = segsuite("bids", manifest, output, "participant", "--nprocs", "1", "--synthseg-model", model, *OPTIONS)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    for eid in ("1000001", "1000002"):
        assert (output / f"sub-{eid}" / "anat" / f"sub-{eid}_seg-synthseg_dseg.nii.gz").is_file()
    assert json.loads((output / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_slurm_config_becomes_the_job_script(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from segsuite.cohort.runner import jobqueue_cluster, read_cluster_config

    config = tmp_path / "slurm.yaml"
    config.write_text("queue: gpu\nwalltime: '04:00:00'\nmemory: 16GB\ncores: 4\njobs: 3\ngpus: 1\n"
                      "account: neuro\n")
    cluster, jobs = jobqueue_cluster("slurm", read_cluster_config(str(config)), 4, "cuda")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 3
    for line in ("#SBATCH -p gpu", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1", "#SBATCH -A neuro",
                 "export OMP_NUM_THREADS=4", "export MALLOC_ARENA_MAX=1"):
        assert line in script, script
    assert "--resources GPU=1" in script and "--nthreads 1" in script


def test_joins_a_running_scheduler(model, tmp_path):
    from distributed import LocalCluster

    data, affine = crop_of(0, 0)
    root = tmp_path / "raw"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "one", "BIDSVersion": "1.10.0"}))
    nib.save(nib.Nifti1Image(data, affine), str(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        process = segsuite("bids", root, tmp_path / "out", "participant", "--scheduler", cluster.scheduler_address,
                           "--synthseg-model", model, *OPTIONS)
        out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_seg-synthseg_dseg.nii.gz").is_file()


def test_input_is_checked_by_the_real_bids_validator(model, tmp_path):
    root = tmp_path / "raw"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bad", "BIDSVersion": "1.10.0"}))
    data, affine = crop_of(0, 0)
    nib.save(nib.Nifti1Image(data, affine), str(root / "sub-01" / "anat" / "sub-01_T1weighted.nii.gz"))
    process = segsuite("bids", root, tmp_path / "out", "participant", "--synthseg-model", model)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1 and "is not valid BIDS" in err, err
    assert not (tmp_path / "out" / "sub-01").exists()
