"""Cohort runs beyond one machine and what users watch: SGE and PBS job scripts from a YAML config
(dask-jobqueue's own job_script()), GPU workers declaring a GPU resource on a real LocalCluster, and the
progress over subjects (counts, ETA, subjects per hour) as plain lines when stderr is not a terminal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")

from segsuite.cohort.runner import (ClusterConfig, CohortProgress, RunSummary, jobqueue_cluster,  # noqa: E402
                                    read_cluster_config, start_client)
from segsuite.errors import UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def job_script(kind: str, tmp_path: Path, yaml_text: str, threads: int = 4, device: str = "cuda"):
    config = tmp_path / f"{kind}.yaml"
    config.write_text(yaml_text)
    cluster, jobs = jobqueue_cluster(kind, read_cluster_config(str(config)), threads, device)
    try:
        return cluster.job_script(), jobs
    finally:
        cluster.close()


def test_sge_config_becomes_the_job_script(tmp_path):
    script, jobs = job_script("sge", tmp_path, "queue: gpu.q\nwalltime: '04:00:00'\nmemory: 16GB\ncores: 4\n"
                                               "jobs: 5\ngpus: 2\nproject: neuro\n")
    assert jobs == 5
    for line in ("#$ -q gpu.q", "#$ -l h_rt=04:00:00", "#$ -l h_vmem=16G", "#$ -l gpu=2", "#$ -P neuro",
                 "export OMP_NUM_THREADS=4", "export MALLOC_ARENA_MAX=1"):
        assert line in script, script
    assert "--resources GPU=2" in script and "--nthreads 1" in script


def test_sge_site_gpu_directive_and_resource_spec_win(tmp_path):
    script, _ = job_script("sge", tmp_path, "queue: all.q\nmemory: 8GB\nresource_spec: mem_free=8G\n"
                                            "gpus: 1\ngpu_directive: '-l gpu_card={gpus}'\n")
    assert "#$ -l mem_free=8G" in script and "#$ -l gpu_card=1" in script, script
    assert "h_vmem" not in script and "-l gpu=1" not in script


def test_pbs_config_becomes_the_job_script(tmp_path):
    script, jobs = job_script("pbs", tmp_path, "queue: gpuq\nwalltime: '02:30:00'\nmemory: 16GB\ncores: 4\n"
                                               "jobs: 2\ngpus: 1\naccount: neuro\n")
    assert jobs == 2
    for line in ("#PBS -q gpuq", "#PBS -l walltime=02:30:00", "#PBS -A neuro", "export OMP_NUM_THREADS=4",
                 "export MALLOC_ARENA_MAX=1"):
        assert line in script, script
    select = [line for line in script.splitlines() if line.startswith("#PBS -l select=")]
    assert len(select) == 1 and ":ncpus=4:" in select[0] and ":ngpus=1:" in select[0] and ":mem=15GB" in select[0]
    assert "--resources GPU=1" in script


def test_pbs_site_resource_spec_gets_the_gpus(tmp_path):
    script, _ = job_script("pbs", tmp_path, "resource_spec: select=1:ncpus=8:mem=32gb\ngpus: 2\n", threads=8)
    assert "#PBS -l select=1:ncpus=8:mem=32gb:ngpus=2" in script, script


def test_cpu_jobs_ask_for_no_gpu(tmp_path):
    for kind in ("slurm", "sge", "pbs"):
        script, _ = job_script(kind, tmp_path, "memory: 8GB\ncores: 2\n", threads=2, device="cpu")
        assert "gpu" not in script.lower() and "GPU=" not in script, script


def test_cuda_jobs_default_to_one_gpu_and_refuse_none(tmp_path):
    script, _ = job_script("slurm", tmp_path, "memory: 8GB\n")
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    with pytest.raises(UsageError, match="gpus: 1"):
        job_script("pbs", tmp_path, "memory: 8GB\ngpus: 0\n")


def test_local_gpu_workers_declare_a_gpu_resource():
    """--device cuda: the local workers declare GPU=1 and a task that asks for a GPU runs on them."""
    client, cluster = start_client(ClusterConfig(nprocs=1, omp_nthreads=1, device="cuda", retries=0))
    try:
        client.wait_for_workers(1, timeout=120)
        workers = client.scheduler_info()["workers"].values()
        assert [worker["resources"] for worker in workers] == [{"GPU": 1}]
        assert client.submit(os.getpid, resources={"GPU": 1}, pure=False).result(timeout=60) != os.getpid()
    finally:
        client.close()
        cluster.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_lines_count_done_skipped_failed_with_eta_and_throughput():
    clock, stream = Clock(), io.StringIO()
    summary = RunSummary(skipped=["sub-01", "sub-02"])
    progress = CohortProgress(6, "bar", initial=2, stream=stream, clock=clock)   # not a terminal: lines
    assert progress.mode == "lines"
    progress.update(summary)
    clock.now += 100.0
    summary.done.append("sub-03")
    progress.update(summary)
    clock.now += 100.0
    summary.failed.append({"key": "sub-04"})
    progress.update(summary)
    progress.update(summary)                      # nothing new: no second line
    lines = stream.getvalue().splitlines()
    assert lines == [
        "segsuite bids: 2/6 subjects (done 0, skipped 2, failed 0), 0 subjects/hour, ETA unknown",
        "segsuite bids: 3/6 subjects (done 1, skipped 2, failed 0), 36 subjects/hour, ETA 0:05:00",
        "segsuite bids: 4/6 subjects (done 1, skipped 2, failed 1), 18 subjects/hour, ETA 0:03:20",
    ]
    assert "\r" not in stream.getvalue()


def test_progress_json_and_none_modes():
    stream = io.StringIO()
    summary = RunSummary(done=["sub-01"])
    CohortProgress(4, "json", stream=stream, clock=Clock()).update(summary)
    prefix, _, payload = stream.getvalue().strip().partition(" ")
    record = json.loads(payload)
    assert prefix == "SEGSUITE_PROGRESS" and record["fraction"] == 0.25 and "done 1" in record["message"]
    quiet = io.StringIO()
    CohortProgress(4, "none", stream=quiet).update(summary)
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_run_prints_progress_lines_and_a_throughput_summary_off_a_terminal(tmp_path):
    """segsuite bids with its default progress, stderr a pipe: one line per subject, then the summary;
    run again, every finished subject is counted as skipped."""
    nib = pytest.importorskip("nibabel")
    import test_cohort
    from synthseg_helpers import write_random_synthseg_model

    if not test_cohort.SHARED.is_dir():
        pytest.skip(f"needs {test_cohort.SHARED} (real scans)")
    (tmp_path / "model").mkdir()
    model = write_random_synthseg_model(tmp_path / "model")
    root = tmp_path / "raw"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "three", "BIDSVersion": "1.10.0"}))
    for number in range(2):
        data, affine = test_cohort.crop_of(number, 0)
        (root / f"sub-0{number}" / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, affine), str(root / f"sub-0{number}" / "anat" / f"sub-0{number}_T1w.nii.gz"))
    (root / "sub-09" / "anat").mkdir(parents=True)
    (root / "sub-09" / "anat" / "sub-09_T1w.nii.gz").write_bytes(b"not a NIfTI file")

    def run():
        done = subprocess.run([sys.executable, "-m", "segsuite", "bids", str(root), str(tmp_path / "out"),
                               "participant", "--synthseg-model", str(model), *test_cohort.OPTIONS],
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1"))
        return done.returncode, [line for line in done.stderr.splitlines() if line.startswith("segsuite bids: ")]

    code, lines = run()
    assert code == 1
    progress = [line for line in lines if " subjects (done " in line]
    assert progress[0] == "segsuite bids: 0/3 subjects (done 0, skipped 0, failed 0), 0 subjects/hour, ETA unknown"
    assert [line.split(" subjects (")[0] for line in progress] == [f"segsuite bids: {n}/3" for n in range(4)]
    assert progress[-1].startswith("segsuite bids: 3/3 subjects (done 2, skipped 0, failed 1)")
    assert progress[-1].endswith("ETA 0:00:00") and all("ETA " in line for line in progress)
    summary = [line for line in lines if " done, " in line]
    assert len(summary) == 1 and summary[0].startswith("segsuite bids: 2 done, 0 skipped, 1 failed in ")
    assert float(summary[0].split("(")[1].split(" subjects/hour")[0]) > 0
    code, lines = run()
    assert code == 1
    assert any(line.startswith("segsuite bids: 3/3 subjects (done 0, skipped 2, failed 1)") for line in lines), lines
    assert any(line.startswith("segsuite bids: 0 done, 2 skipped, 1 failed in ") for line in lines), lines


def test_dask_jobqueue_import_keeps_our_sigint_handler_and_the_cluster_starts_in_a_thread():
    """dask_jobqueue's runner sets a SIGINT handler when imported: imported in the thread that starts
    the cluster this failed ('signal only works in main thread'), and it replaced the command's policy."""
    code = """
import signal, sys, threading
def ours(*_):
    pass
signal.signal(signal.SIGINT, ours)
from segsuite.cohort.runner import import_jobqueue, jobqueue_cluster
import_jobqueue()
assert "dask_jobqueue" in sys.modules and signal.getsignal(signal.SIGINT) is ours
scripts = []
def start():
    cluster, jobs = jobqueue_cluster("slurm", {"memory": "1GB"}, 1, "cpu")
    scripts.append(cluster.job_script())
    cluster.close()
thread = threading.Thread(target=start)
thread.start()
thread.join()
assert scripts and "#SBATCH" in scripts[0], scripts
assert signal.getsignal(signal.SIGINT) is ours
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentationSuite"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
