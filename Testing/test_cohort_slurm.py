"""segsuite bids --cluster slurm on a real one-node SLURM started by the tests on this machine (Debian's
slurm-wlm and munge, as root): munged, slurmctld and slurmd with a generated slurm.conf (this host as
the one node, 2 CPUs, its memory), on private ports and a private munge socket so that nothing of the
machine's own is touched. Two worker jobs over a BIDS dataset of real scan crops, SynthSeg with the
fixture weights (the full-size network): the workers arrive as jobs (squeue), every subject equals a
direct engine call, a job cancelled with scancel mid-subject has its subject redone by the other
(nothing partial), the whole command SIGKILLed and restarted redoes no committed subject, and no job
is left afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")
pytest.importorskip("bids2table")
pytest.importorskip("nibabel")

from cohort_cluster_helpers import dataset, model  # noqa: E402,F401  (module fixtures)
from cohort_cluster_helpers import (assert_cancelled_subject_redone_in_full,  # noqa: E402
                                    assert_every_subject_equals_a_direct_call, check_killed_command_restarted,
                                    free_port, report_timeline, run_with_first_job_cancelled, segsuite_bids,
                                    stop_daemons, wait_for_no_jobs)

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(os.access(d, os.X_OK) for d in DAEMONS),
                                 reason="needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs jobs as root here: needs root")]


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
    return wait_for_no_jobs(lambda: squeue(env), seconds)


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
        stop_daemons(pid_files)   # slurmd, slurmctld, then munged


def cluster_config(folder: Path) -> Path:
    """The configuration docs/cohort.md shows: two one-core jobs; death_timeout lets the workers of a
    killed driver end their jobs by themselves."""
    path = folder / "slurm.yaml"
    path.write_text(f"jobs: 2\ncores: 1\nmemory: 3GB\nwalltime: '00:15:00'\ndeath_timeout: 15\n"
                    f"log_directory: {folder / 'job-logs'}\n")
    return path


def slurm_bids(dataset: Path, output: Path, work: Path, model: Path, env: dict, **options):
    return segsuite_bids("slurm", cluster_config(work.parent), dataset, output, work, model, env, **options)


def running(env) -> dict:
    return {job: name for job, name, state in squeue(env) if state == "RUNNING"}


@pytest.fixture(scope="module")
def cancelled_run(slurm, dataset, model, tmp_path_factory):
    """The participant level on two SLURM jobs; the job of the first engine call is scancelled at once."""
    base = tmp_path_factory.mktemp("slurm_run")
    output, work = base / "segsuite", base / "work"
    return run_with_first_job_cancelled(
        lambda: slurm_bids(dataset, output, work, model, slurm), lambda: running(slurm),
        lambda job: subprocess.run(["scancel", job], env=slurm, check=True, timeout=30), "SLURM_JOB_ID",
        lambda: wait_for_empty_queue(slurm, 30), output, work)


def test_workers_arrive_as_jobs_and_every_subject_equals_a_direct_call(cancelled_run, dataset, model):
    assert cancelled_run["code"] == 0, cancelled_run["stderr"]
    running = cancelled_run["timeline"]["running"]
    assert len(running) >= 2 and all(name == "dask-worker" for name, _ in running.values()), running
    assert_every_subject_equals_a_direct_call(cancelled_run, dataset, model)
    report_timeline("SLURM", cancelled_run, "scancelled")


def test_scancelled_job_has_its_subject_redone_elsewhere_without_partial_output(cancelled_run):
    assert_cancelled_subject_redone_in_full(cancelled_run)
    cancelled = cancelled_run["timeline"]["cancelled"]
    assert job_of_log(cancelled_run["work"].parent / "job-logs", cancelled["job"]), "the cancelled job left no log"


def job_of_log(folder: Path, job: str) -> bool:
    return any(job in path.name for path in folder.iterdir()) if folder.is_dir() else False


def test_no_job_is_left_after_the_run(cancelled_run):
    assert cancelled_run["left"] == [], cancelled_run["left"]


def test_killed_command_restarted_redoes_no_committed_subject(slurm, dataset, model, tmp_path):
    output, work = tmp_path / "segsuite", tmp_path / "work"
    check_killed_command_restarted(lambda **options: slurm_bids(dataset, output, work, model, slurm, **options),
                                   lambda seconds: wait_for_empty_queue(slurm, seconds), output, work)
