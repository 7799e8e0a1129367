"""segsuite bids --cluster sge on a real one-host Grid Engine started by the tests on this machine
(Debian's gridengine-master, gridengine-exec and gridengine-client 8.1.9, as root): a cell of its own
in a temporary SGE_ROOT (the package's util/, utilbin/ and lib/ linked in; spool, configuration and
execd spool there), sge_qmaster and sge_execd on private ports, so that the machine's own cell is
never touched. Two worker jobs over the BIDS dataset of real scan crops that test_cohort_slurm.py
uses, SynthSeg with the fixture weights: the workers arrive as jobs (qstat), every subject equals a
direct engine call and the runner's h_vmem request is each job's address-space limit, a job deleted
with qdel mid-subject has its subject redone by the other (nothing partial), the whole command
SIGKILLed and restarted redoes no committed subject, and no job is left afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import xml.etree.ElementTree as ElementTree
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

PACKAGE_ROOT = Path("/var/lib/gridengine")   # the packages' SGE_ROOT: util/, utilbin/, lib/
TOOLS = Path("/usr/lib/gridengine")          # spoolinit, spooldefaults
DAEMONS = ("/usr/sbin/sge_qmaster", "/usr/sbin/sge_execd", "/usr/bin/qconf", "/usr/bin/qsub", "/usr/bin/qstat",
           str(TOOLS / "spoolinit"), str(TOOLS / "spooldefaults"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(os.access(d, os.X_OK) for d in DAEMONS),
                                 reason="needs Debian's gridengine-master, gridengine-exec and gridengine-client"),
              pytest.mark.skipif(os.geteuid() != 0, reason="the cell runs its daemons and jobs as root: needs root")]


def bootstrap(root: Path) -> str:
    """The cell's bootstrap: daemons as root (admin_user none), Berkeley DB spool in the cell."""
    return "\n".join([
        "admin_user none", "default_domain none", "ignore_fqdn true",
        "spooling_method berkeleydb", "spooling_lib libspoolb", f"spooling_params {root / 'spooldb'}",
        "binary_path /usr/sbin", f"qmaster_spool_dir {root / 'qmaster'}", "security_mode none",
        "listener_threads 2", "worker_threads 2", "scheduler_threads 1", ""])


def global_configuration(root: Path) -> str:
    """The package's default configuration with the execd spool in the cell, jobs of root allowed
    (min_uid/min_gid 0: the tests run as root) and load reports every 2 s instead of 40 s."""
    changes = {"execd_spool_dir": str(root / "execd"), "min_uid": "0", "min_gid": "0",
               "load_report_time": "00:00:02", "mailer": "/bin/true"}
    lines = Path("/usr/share/gridengine/default-configuration").read_text().splitlines()
    return "\n".join(f"{line.split()[0]} {changes[line.split()[0]]}"
                     if line.split() and line.split()[0] in changes else line for line in lines) + "\n"


def queue(host: str) -> str:
    """all.q: this host, 2 slots, no load threshold (a loaded 2-core machine would put the queue in alarm
    state), no parallel environments; h_vmem and the other limits as the package's template (INFINITY)."""
    limits = [f"{kind}_{name} INFINITY" for name in ("rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem")
              for kind in ("s", "h")]
    return "\n".join([
        "qname all.q", f"hostlist {host}", "seq_no 0", "load_thresholds NONE", "suspend_thresholds NONE",
        "nsuspend 1", "suspend_interval 00:05:00", "priority 0", "min_cpu_interval 00:05:00",
        "processors UNDEFINED", "qtype BATCH INTERACTIVE", "ckpt_list NONE", "pe_list NONE", "rerun FALSE",
        "slots 2", "tmpdir /tmp", "shell /bin/sh", "prolog NONE", "epilog NONE", "shell_start_mode posix_compliant",
        "starter_method NONE", "suspend_method NONE", "resume_method NONE", "terminate_method NONE",
        "notify 00:00:60", "owner_list NONE", "user_lists NONE", "xuser_lists NONE", "subordinate_list NONE",
        "complex_values NONE", "projects NONE", "xprojects NONE", "calendar NONE", "initial_state default",
        *limits, ""])


def scheduler_configuration(env) -> str:
    """The running scheduler configuration with a 1 s interval, scheduling at each submission and end,
    and no load adjustment (which would keep the second job waiting on a loaded machine)."""
    changes = {"schedule_interval": "0:0:1", "flush_submit_sec": "1", "flush_finish_sec": "1",
               "job_load_adjustments": "NONE", "load_adjustment_decay_time": "0:0:0"}
    current = qconf(env, "-ssconf").splitlines()
    return "\n".join(f"{line.split()[0]} {changes[line.split()[0]]}"
                     if line.split() and line.split()[0] in changes else line for line in current) + "\n"


def run_in_cell(command: list, env, root: Path) -> None:
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"


def qconf(env, *arguments) -> str:
    done = subprocess.run(["qconf", *arguments], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"qconf {' '.join(arguments)}: {done.stdout}{done.stderr}"
    return done.stdout


def qstat(env) -> list[tuple[str, str, str]]:
    """(job id, name, state) of every job of the cell (qstat's XML: names are not cut at 10 characters)."""
    done = subprocess.run(["qstat", "-u", "*", "-xml"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [(job.findtext("JB_job_number"), job.findtext("JB_name"), job.findtext("state"))
            for job in ElementTree.fromstring(done.stdout).iter("job_list")]


def wait_for_empty_queue(env, seconds: float) -> list:
    return wait_for_no_jobs(lambda: qstat(env), seconds)


def wait_for_qmaster(env, root: Path) -> None:
    """sge_qmaster goes to the background before it listens: wait until it answers."""
    deadline = time.time() + 60
    while time.time() < deadline:
        if subprocess.run(["qconf", "-sh"], env=env, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(0.5)
    messages = (root / "qmaster" / "messages").read_text()[-2000:] if (root / "qmaster" / "messages").exists() else ""
    pytest.fail(f"sge_qmaster did not answer within 60 s:\n{messages}")


def queue_states(env) -> str:
    """all.q@host's line of qstat -f: its states column is empty once the execd reports."""
    done = subprocess.run(["qstat", "-f", "-q", "all.q"], env=env, capture_output=True, text=True, timeout=30)
    return next((line for line in done.stdout.splitlines() if line.startswith("all.q@")), "")


@pytest.fixture(scope="module")
def sge(tmp_path_factory):
    """A one-host Grid Engine cell of its own; yields the environment its commands need."""
    root = tmp_path_factory.mktemp("sge")
    common = root / "default" / "common"
    common.mkdir(parents=True)
    for folder in ("qmaster", "execd", "spooldb"):
        (root / folder).mkdir()
    for folder in ("util", "utilbin", "lib"):
        (root / folder).symlink_to(PACKAGE_ROOT / folder)
    host = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(host)
    except OSError:
        pytest.skip(f"this host's name {host!r} does not resolve (add it to /etc/hosts): Grid Engine needs it")
    (common / "bootstrap").write_text(bootstrap(root))
    (common / "act_qmaster").write_text(host + "\n")
    # the execd's connections come from 127.0.0.1, which resolves to localhost here: the same host
    (common / "host_aliases").write_text(f"{host} localhost\n")
    (root / "global.conf").write_text(global_configuration(root))
    env = dict(os.environ, SGE_ROOT=str(root), SGE_CELL="default", SGE_QMASTER_PORT=str(free_port()),
               SGE_EXECD_PORT=str(free_port()))
    try:
        for command in ([TOOLS / "spoolinit", "berkeleydb", "libspoolb", root / "spooldb", "init"],
                        [TOOLS / "spooldefaults", "configuration", root / "global.conf"],
                        [TOOLS / "spooldefaults", "complexes", PACKAGE_ROOT / "util/resources/centry"],
                        [TOOLS / "spooldefaults", "usersets", PACKAGE_ROOT / "util/resources/usersets"],
                        [TOOLS / "spooldefaults", "managers", "root"],
                        ["/usr/sbin/sge_qmaster"]):
            run_in_cell([str(part) for part in command], env, root)
        wait_for_qmaster(env, root)
        qconf(env, "-as", host)
        (root / "exechost").write_text(f"hostname {host}\nload_scaling NONE\ncomplex_values NONE\n"
                                       "user_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\n"
                                       "usage_scaling NONE\nreport_variables NONE\n")
        qconf(env, "-Ae", str(root / "exechost"))
        (root / "scheduler").write_text(scheduler_configuration(env))
        qconf(env, "-Msconf", str(root / "scheduler"))
        (root / "queue").write_text(queue(host))
        qconf(env, "-Aq", str(root / "queue"))
        run_in_cell(["/usr/sbin/sge_execd"], env, root)
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline:
            line = queue_states(env)
            if line and len(line.split()) == 5:   # name, type, slots, load, arch: no state (a, u, E ...)
                break
            time.sleep(0.5)
        else:
            messages = "".join(path.read_text()[-2000:] for path in root.glob("**/messages"))
            pytest.fail(f"the one-host Grid Engine did not come up (qstat -f: {line!r}):\n{messages}")
        yield env
    finally:
        # the daemons are stopped whatever qdel and qstat say
        with contextlib.suppress(AssertionError, subprocess.SubprocessError, ElementTree.ParseError):
            subprocess.run(["qdel", "-u", "root"], env=env, capture_output=True, timeout=30)
            if (root / "qmaster" / "qmaster.pid").exists():
                wait_for_empty_queue(env, 20)
        # the execd, then the qmaster; the execd spools under the name it resolves itself to (localhost here)
        stop_daemons([*root.glob("execd/*/execd.pid"), root / "qmaster" / "qmaster.pid"])


def cluster_config(folder: Path) -> Path:
    """The configuration docs/cohort.md shows for SGE: two one-core jobs in all.q; the runner asks
    h_vmem=3G (memory), which the queue grants as a per-job limit; -V hands the driver's environment
    (PYTHONPATH to this tree) to the jobs as SLURM does by default."""
    path = folder / "sge.yaml"
    path.write_text(f"jobs: 2\ncores: 1\nmemory: 3GB\nqueue: all.q\nwalltime: '00:15:00'\ndeath_timeout: 15\n"
                    f"job_extra_directives: ['-V']\nlog_directory: {folder / 'job-logs'}\n")
    return path


def running(env) -> dict:
    return {job: name for job, name, state in qstat(env) if state == "r"}


@pytest.fixture(scope="module")
def deleted_run(sge, dataset, model, tmp_path_factory):
    """The participant level on two SGE jobs; the job of the first engine call is deleted (qdel) at once."""
    base = tmp_path_factory.mktemp("sge_run")
    output, work = base / "segsuite", base / "work"
    return run_with_first_job_cancelled(
        lambda: segsuite_bids("sge", cluster_config(base), dataset, output, work, model, sge),
        lambda: running(sge),
        lambda job: subprocess.run(["qdel", job], env=sge, check=True, capture_output=True, timeout=30),
        "JOB_ID", lambda: wait_for_empty_queue(sge, 30), output, work)


def test_workers_arrive_as_jobs_and_every_subject_equals_a_direct_call(deleted_run, dataset, model):
    assert deleted_run["code"] == 0, deleted_run["stderr"]
    running_jobs = deleted_run["timeline"]["running"]
    assert len(running_jobs) >= 2 and all(name == "dask-worker" for name, _ in running_jobs.values()), running_jobs
    assert_every_subject_equals_a_direct_call(deleted_run, dataset, model)
    # the runner's resource_spec h_vmem=3G (memory: 3GB) became the job's address-space limit
    limits = deleted_run["timeline"]["cancelled"]["limits"]
    assert any(line.startswith("Max address space") and line.split()[3:5] == [str(3 * 1024 ** 3)] * 2
               for line in limits.splitlines()), limits
    report_timeline("SGE", deleted_run, "deleted (qdel)")


def test_deleted_job_has_its_subject_redone_elsewhere_without_partial_output(deleted_run):
    assert_cancelled_subject_redone_in_full(deleted_run)
    job = deleted_run["timeline"]["cancelled"]["job"]
    logs = deleted_run["work"].parent / "job-logs"
    assert (logs / f"dask-worker.o{job}").exists(), sorted(path.name for path in logs.iterdir())


def test_no_job_is_left_after_the_run(deleted_run):
    assert deleted_run["left"] == [], deleted_run["left"]


def test_killed_command_restarted_redoes_no_committed_subject(sge, dataset, model, tmp_path):
    output, work = tmp_path / "segsuite", tmp_path / "work"
    check_killed_command_restarted(
        lambda **options: segsuite_bids("sge", cluster_config(tmp_path), dataset, output, work, model, sge, **options),
        lambda seconds: wait_for_empty_queue(sge, seconds), output, work)
