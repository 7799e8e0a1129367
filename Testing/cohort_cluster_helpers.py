"""What the tests on a real batch system (test_cohort_slurm.py, test_cohort_sge.py) share: the BIDS
dataset of real scan crops, the `segsuite bids --cluster` command, the run with one job cancelled
mid-subject, what the run committed and the timeline printed for the record."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import pytest

from conftest import shared_path
from synthseg_helpers import unpack_fixture_synthseg
from test_cohort import crop_of  # 64^3 crops of the real scans in ../shared/data/t1

ROOT = Path(__file__).resolve().parents[1]
# (participant, session or None, scan index, crop shift in voxels)
SUBJECTS = [("01", None, 0, 0), ("02", None, 1, 0), ("03", "1", 2, 0), ("03", "2", 0, 5), ("04", None, 1, 4)]
OPTIONS = ["--fast", "--crop", "64", "--omp-nthreads", "1", "--skip-bids-validation", "--progress", "none"]


def free_port() -> int:
    """A port free now on 127.0.0.1, for the daemons of a batch system of our own."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def key_of(participant: str, session) -> str:
    return f"sub-{participant}" + (f"_ses-{session}" if session else "")


def all_keys() -> set:
    return {key_of(participant, session) for participant, session, _, _ in SUBJECTS}


def write_dataset(raw: Path) -> Path:
    raw.mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "crops", "BIDSVersion": "1.10.0"}))
    for participant, session, scan, shift in SUBJECTS:
        folder = raw / f"sub-{participant}" / (f"ses-{session}" if session else "") / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        data, affine = crop_of(scan, shift)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"{key_of(participant, session)}_T1w.nii.gz"))
    participants = dict.fromkeys(f"sub-{p}" for p, _, _, _ in SUBJECTS)
    (raw / "participants.tsv").write_text("participant_id\n" + "\n".join(participants) + "\n")
    return raw


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The BIDS dataset of SUBJECTS (imported by the test modules as a fixture)."""
    shared_path("data", "t1")
    return write_dataset(tmp_path_factory.mktemp("bids") / "raw")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The fixture's SynthSeg 2.0 weights (full-size network, deterministic random weights), unpacked."""
    return unpack_fixture_synthseg(tmp_path_factory.mktemp("synthseg_fixture"))


def segsuite_bids(kind: str, config: Path, dataset: Path, output: Path, work: Path, model: Path, env: dict,
                  **options):
    env = dict(env, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "segsuite", "bids", str(dataset), str(output), "participant", "-w", str(work),
               "--cluster", kind, "--cluster-config", str(config), "--synthseg-model", str(model), *OPTIONS]
    return subprocess.Popen(command, env=env, cwd=work.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **options)


def calls(work: Path) -> list[dict]:
    path = work / "engine-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def committed(output: Path) -> dict:
    """{key: provenance record} of the subject folders committed in ``output``."""
    return {path.name[:-len("_segsuite.json")]: json.loads(path.read_text())
            for path in output.glob("sub-*/**/*_segsuite.json")}


def environment_variable(pid: int, name: str) -> str:
    """A variable of a running process's environment (the batch job a worker runs in)."""
    prefix = name.encode() + b"="
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(item[len(prefix):].decode() for item in environ if item.startswith(prefix))


def run_with_first_job_cancelled(start: Callable, running_jobs: Callable, cancel: Callable, job_variable: str,
                                 queue_empty: Callable, output: Path, work: Path) -> dict:
    """Runs ``start()`` (the segsuite bids process) to its end, noting when each job runs
    (``running_jobs()``: {job id: name}) and cancelling (``cancel(job)``) the job of the first
    engine call as soon as it is seen; ``queue_empty()`` returns the jobs still queued after the run."""
    began = time.time()
    process = start()
    timeline = {"running": {}, "cancelled": None}
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        for job, name in running_jobs().items():
            timeline["running"].setdefault(job, (name, time.time() - began))
        found = calls(work)
        if found and timeline["cancelled"] is None:
            first = found[0]
            job = environment_variable(first["pid"], job_variable)
            limits = Path(f"/proc/{first['pid']}/limits").read_text()   # what the batch system set
            cancel(job)
            timeline["cancelled"] = {"key": first["key"], "pid": first["pid"], "job": job, "limits": limits,
                                     "after": time.time() - began}
        time.sleep(0.2)
    out, err = process.communicate(timeout=60)
    ended = time.time() - began
    left = queue_empty()
    return {"output": output, "work": work, "code": process.returncode, "stderr": err, "timeline": timeline,
            "seconds": ended, "left": left, "began": began}


def assert_cancelled_subject_redone_in_full(run: dict) -> None:
    """The cancelled job's subject was segmented again by another worker, and its folder holds what
    every other subject's does, nothing partial and no staging left."""
    cancelled = run["timeline"]["cancelled"]
    assert cancelled is not None, "no engine call was seen to cancel its job"
    again = [call for call in calls(run["work"]) if call["key"] == cancelled["key"]]
    assert len(again) >= 2 and again[-1]["pid"] != cancelled["pid"], again
    output = run["output"]
    assert not (output / ".staging").exists()
    suffixes = {key: sorted(path.name[len(key):] for path in (output / key.replace("_", "/")).rglob("*"))
                for key in committed(output)}
    others = {tuple(names) for key, names in suffixes.items() if key != cancelled["key"]}
    assert others == {tuple(suffixes[cancelled["key"]])}, suffixes


def wait_for_no_jobs(jobs: Callable, seconds: float) -> list:
    """``jobs()`` (the queue's jobs) polled until empty or ``seconds`` have passed; what is left."""
    deadline = time.time() + seconds
    left = jobs()
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = jobs()
    return left


def stop_daemons(pid_files: list) -> None:
    """Each daemon we started, in the order given, stopped by the pid its pid file holds."""
    for pid_file in pid_files:
        if pid_file.exists():
            stop_by_pid(int(pid_file.read_text().split()[0]))


def stop_by_pid(pid: int, seconds: float = 20) -> None:
    """SIGTERM to one daemon we started, then wait until it is gone (or a zombie)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + seconds
    while time.time() < deadline and os.path.exists(f"/proc/{pid}") and not _zombie(pid):
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def report_timeline(system: str, run: dict, cancel_command: str) -> None:
    """Printed for the record (pytest -s): submission to the first job, first subject, per-subject time."""
    records = committed(run["output"])
    first_call = min(call["time"] for call in calls(run["work"])) - run["began"]
    first_commit = min(path.stat().st_mtime for path in run["output"].glob("sub-*/**/*_segsuite.json")) - run["began"]
    seconds = sorted(record["seconds"] for record in records.values())
    jobs = sorted(started for _, started in run["timeline"]["running"].values())
    print(f"\n{system} timeline: command start -> first job running {jobs[0]:.1f} s, second {jobs[1]:.1f} s; "
          f"first engine call {first_call:.1f} s; first subject committed {first_commit:.1f} s; "
          f"per subject {', '.join(f'{s:.1f}' for s in seconds)} s; whole run {run['seconds']:.1f} s "
          f"({len(records)} subjects, one job {cancel_command} at {run['timeline']['cancelled']['after']:.1f} s)")


def assert_every_subject_equals_a_direct_call(run: dict, dataset: Path, model: Path) -> None:
    import numpy as np
    from segsuite.synthseg import SynthSegEngine

    engine = SynthSegEngine(model=str(model), fast=True, crop=64, device="cpu", threads=1)
    output = run["output"]
    assert set(committed(output)) == all_keys()
    for key in sorted(all_keys()):
        anat = dataset / key.replace("_", "/") / "anat"
        expected = engine.segment(str(anat / f"{key}_T1w.nii.gz"), resample_output=True)
        written = nib.load(str(output / key.replace("_", "/") / "anat" / f"{key}_seg-synthseg_dseg.nii.gz"))
        assert np.array_equal(np.asanyarray(written.dataobj), expected.labels), key


def check_killed_command_restarted(start: Callable, queue_empty: Callable, output: Path, work: Path) -> None:
    """The command SIGKILLed after two commits: nobody is left to cancel its jobs, so their workers
    lose the scheduler and end them (death_timeout), committing the subject they were segmenting (at
    most one each) first; restarted, it redoes no committed subject. ``start(**popen_options)`` runs
    the command, ``queue_empty(seconds)`` returns the jobs still queued after waiting."""
    process = start(start_new_session=True)
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and len(committed(output)) < 2:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert queue_empty(90) == []
    done_before = set(committed(output))
    assert 2 <= len(done_before) < len(SUBJECTS), done_before
    assert not list((output / ".staging").glob("*/*_segsuite.json"))
    restart = start()
    out, err = restart.communicate(timeout=240)
    assert restart.returncode == 0, err
    assert f"{len(done_before)} skipped" in err, err
    counts: dict = {}
    for call in calls(work):
        counts[call["key"]] = counts.get(call["key"], 0) + 1
    assert all(counts[key] == 1 for key in done_before), counts
    assert set(committed(output)) == all_keys()
    assert not (output / ".staging").exists()
    assert queue_empty(30) == []
