"""segsuite bids --cluster slurm on a real one-node SLURM started by the tests on this machine (Debian's
slurm-wlm and munge, as root): munged, slurmctld and slurmd with a generated slurm.conf (this host as
the one node, 2 CPUs, its memory), on private ports and a private munge socket so that nothing of the
machine's own is touched. Two worker jobs over a BIDS dataset of real scan crops, SynthSeg with the
fixture weights (the full-size network): the workers arrive as jobs (squeue), every subject equals a
direct engine call, a job cancelled with scancel mid-subject has its subject redone by the other
(nothing partial), the whole command SIGKILLed and restarted redoes no committed subject, and no job
is left afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")
pytest.importorskip("bids2table")
nib = pytest.importorskip("nibabel")

from conftest import shared_path  # noqa: E402
from synthseg_helpers import unpack_fixture_synthseg  # noqa: E402
from test_cohort import crop_of  # noqa: E402  (64^3 crops of the real scans in ../shared/data/t1)

ROOT = Path(__file__).resolve().parents[1]
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
# (participant, session or None, scan index, crop shift in voxels)
SUBJECTS = [("01", None, 0, 0), ("02", None, 1, 0), ("03", "1", 2, 0), ("03", "2", 0, 5), ("04", None, 1, 4)]
OPTIONS = ["--fast", "--crop", "64", "--omp-nthreads", "1", "--skip-bids-validation", "--progress", "none"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(os.access(d, os.X_OK) for d in DAEMONS),
                                 reason="needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs jobs as root here: needs root")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        total_kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.8)


def slurm_conf(root: Path, host: str) -> str:
    return "\n".join([
        "ClusterName=segsuitetest", f"SlurmctldHost={host}",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", f"AuthInfo=socket={root / 'munge.socket'}", "CredType=cred/munge",
        "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        # no cgroups in a container: processes tracked by their parents, no task binding
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU_Memory",
        "ReturnToService=2", "KillWait=5",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory_mb()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


def squeue(env) -> list[tuple[str, str, str]]:
    """(job id, name, state) of every job in the queue."""
    done = subprocess.run(["squeue", "--noheader", "--format=%i %j %T"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return [tuple(line.split()) for line in done.stdout.splitlines() if line.strip()]


def wait_for_empty_queue(env, seconds: float) -> list:
    deadline = time.time() + seconds
    jobs = squeue(env)
    while jobs and time.time() < deadline:
        time.sleep(0.5)
        jobs = squeue(env)
    return jobs


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM of this machine; yields the environment its commands need (SLURM_CONF)."""
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))   # a key of its own: never the machine's
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host))
    env = dict(os.environ, SLURM_CONF=str(conf))
    pid_files = [root / "slurmd.pid", root / "slurmctld.pid", root / "munged.pid"]
    try:
        subprocess.run(["/usr/sbin/munged", "--force", f"--key-file={key}", f"--socket={root / 'munge.socket'}",
                        f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                        f"--seed-file={root / 'munged.seed'}"], check=True, timeout=30)
        subprocess.run(["/usr/sbin/slurmctld", "-f", str(conf), "-i"], env=env, check=True, timeout=30)
        subprocess.run(["/usr/sbin/slurmd", "-f", str(conf)], env=env, check=True, timeout=30)
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        if state != "idle":
            logs = "".join((root / name).read_text()[-2000:] for name in ("slurmctld.log", "slurmd.log")
                           if (root / name).exists())
            pytest.fail(f"the one-node SLURM did not come up (sinfo: {state!r}):\n{logs}")
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True, timeout=30)
        for pid_file in pid_files:   # slurmd, slurmctld, then munged: each stopped by its own pid
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                deadline = time.time() + 20
                while time.time() < deadline and os.path.exists(f"/proc/{pid}") and not _zombie(pid):
                    time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def key_of(participant: str, session) -> str:
    return f"sub-{participant}" + (f"_ses-{session}" if session else "")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    shared_path("data", "t1")
    raw = tmp_path_factory.mktemp("bids") / "raw"
    raw.mkdir()
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
def model(tmp_path_factory):
    """The fixture's SynthSeg 2.0 weights (full-size network, deterministic random weights), unpacked."""
    return unpack_fixture_synthseg(tmp_path_factory.mktemp("synthseg_fixture"))


def cluster_config(folder: Path) -> Path:
    """The configuration docs/cohort.md shows: two one-core jobs; death_timeout lets the workers of a
    killed driver end their jobs by themselves."""
    path = folder / "slurm.yaml"
    path.write_text(f"jobs: 2\ncores: 1\nmemory: 3GB\nwalltime: '00:15:00'\ndeath_timeout: 15\n"
                    f"log_directory: {folder / 'job-logs'}\n")
    return path


def segsuite_bids(dataset: Path, output: Path, work: Path, model: Path, env: dict, **options):
    env = dict(env, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "segsuite", "bids", str(dataset), str(output), "participant", "-w", str(work),
               "--cluster", "slurm", "--cluster-config", str(cluster_config(work.parent)),
               "--synthseg-model", str(model), *OPTIONS]
    return subprocess.Popen(command, env=env, cwd=work.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **options)


def calls(work: Path) -> list[dict]:
    path = work / "engine-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def committed(output: Path) -> dict:
    """{key: provenance record} of the subject folders committed in ``output``."""
    return {path.name[:-len("_segsuite.json")]: json.loads(path.read_text())
            for path in output.glob("sub-*/**/*_segsuite.json")}


def job_of(pid: int) -> str:
    """The SLURM job a worker process runs in (SLURM_JOB_ID of its environment)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"SLURM_JOB_ID="))


@pytest.fixture(scope="module")
def cancelled_run(slurm, dataset, model, tmp_path_factory):
    """The participant level on two SLURM jobs; the job of the first engine call is scancelled at once."""
    base = tmp_path_factory.mktemp("slurm_run")
    output, work = base / "segsuite", base / "work"
    began = time.time()
    process = segsuite_bids(dataset, output, work, model, slurm)
    timeline = {"running": {}, "cancelled": None}
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        for job, name, state in squeue(slurm):
            if state == "RUNNING":
                timeline["running"].setdefault(job, (name, time.time() - began))
        found = calls(work)
        if found and timeline["cancelled"] is None:
            first = found[0]
            job = job_of(first["pid"])
            subprocess.run(["scancel", job], env=slurm, check=True, timeout=30)
            timeline["cancelled"] = {"key": first["key"], "pid": first["pid"], "job": job,
                                     "after": time.time() - began}
        time.sleep(0.2)
    out, err = process.communicate(timeout=60)
    ended = time.time() - began
    left = wait_for_empty_queue(slurm, 30)
    return {"output": output, "work": work, "code": process.returncode, "stderr": err, "timeline": timeline,
            "seconds": ended, "left": left, "began": began}


def test_workers_arrive_as_jobs_and_every_subject_equals_a_direct_call(cancelled_run, dataset, model):
    from segsuite.synthseg import SynthSegEngine

    assert cancelled_run["code"] == 0, cancelled_run["stderr"]
    running = cancelled_run["timeline"]["running"]
    assert len(running) >= 2 and all(name == "dask-worker" for name, _ in running.values()), running
    engine = SynthSegEngine(model=str(model), fast=True, crop=64, device="cpu", threads=1)
    output = cancelled_run["output"]
    assert set(committed(output)) == {key_of(p, s) for p, s, _, _ in SUBJECTS}
    for participant, session, _, _ in SUBJECTS:
        key = key_of(participant, session)
        anat = dataset / key.replace("_", "/") / "anat"
        expected = engine.segment(str(anat / f"{key}_T1w.nii.gz"), resample_output=True)
        written = nib.load(str(output / key.replace("_", "/") / "anat" / f"{key}_seg-synthseg_dseg.nii.gz"))
        assert np.array_equal(np.asanyarray(written.dataobj), expected.labels), key
    _report_timeline(cancelled_run)


def test_scancelled_job_has_its_subject_redone_elsewhere_without_partial_output(cancelled_run):
    cancelled = cancelled_run["timeline"]["cancelled"]
    assert cancelled is not None, "no engine call was seen to cancel its job"
    again = [call for call in calls(cancelled_run["work"]) if call["key"] == cancelled["key"]]
    assert len(again) >= 2 and again[-1]["pid"] != cancelled["pid"], again
    assert job_of_log(cancelled_run["work"].parent / "job-logs", cancelled["job"]), "the cancelled job left no log"
    output = cancelled_run["output"]
    assert not (output / ".staging").exists()
    # the redone subject's folder holds what every other subject's does, no more and no less
    suffixes = {key: sorted(path.name[len(key):] for path in (output / key.replace("_", "/")).rglob("*"))
                for key in committed(output)}
    others = {tuple(names) for key, names in suffixes.items() if key != cancelled["key"]}
    assert others == {tuple(suffixes[cancelled["key"]])}, suffixes


def job_of_log(folder: Path, job: str) -> bool:
    return any(job in path.name for path in folder.iterdir()) if folder.is_dir() else False


def test_no_job_is_left_after_the_run(cancelled_run):
    assert cancelled_run["left"] == [], cancelled_run["left"]


def test_killed_command_restarted_redoes_no_committed_subject(slurm, dataset, model, tmp_path):
    output, work = tmp_path / "segsuite", tmp_path / "work"
    process = segsuite_bids(dataset, output, work, model, slurm, start_new_session=True)
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and len(committed(output)) < 2:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    # nobody is left to cancel the jobs: their workers lose the scheduler and end them (death_timeout),
    # committing the subject they were segmenting (at most one each) first
    assert wait_for_empty_queue(slurm, 90) == []
    done_before = set(committed(output))
    assert 2 <= len(done_before) < len(SUBJECTS), done_before
    assert not list((output / ".staging").glob("*/*_segsuite.json"))
    restart = segsuite_bids(dataset, output, work, model, slurm)
    out, err = restart.communicate(timeout=240)
    assert restart.returncode == 0, err
    assert f"{len(done_before)} skipped" in err, err
    counts: dict = {}
    for call in calls(work):
        counts[call["key"]] = counts.get(call["key"], 0) + 1
    assert all(counts[key] == 1 for key in done_before), counts
    assert set(committed(output)) == {key_of(p, s) for p, s, _, _ in SUBJECTS}
    assert not (output / ".staging").exists()
    assert wait_for_empty_queue(slurm, 30) == []


def _report_timeline(run) -> None:
    """Printed for the record (pytest -s): submission to the first job, first subject, per-subject time."""
    records = committed(run["output"])
    first_call = min(call["time"] for call in calls(run["work"])) - run["began"]
    first_commit = min(path.stat().st_mtime for path in run["output"].glob("sub-*/**/*_segsuite.json")) - run["began"]
    seconds = sorted(record["seconds"] for record in records.values())
    jobs = sorted(started for _, started in run["timeline"]["running"].values())
    print(f"\nSLURM timeline: command start -> first job RUNNING {jobs[0]:.1f} s, second {jobs[1]:.1f} s; "
          f"first engine call {first_call:.1f} s; first subject committed {first_commit:.1f} s; "
          f"per subject {', '.join(f'{s:.1f}' for s in seconds)} s; whole run {run['seconds']:.1f} s "
          f"({len(records)} subjects, one job scancelled at {run['timeline']['cancelled']['after']:.1f} s)")
