"""segsuite bids checks before any work, like the other commands: a read-only output or work folder,
--device cuda on a machine without a GPU, a model missing while offline and an invalid BIDS input
each end in one line (the bids flag named, the validator's own error codes and files), exit 1, no
traceback, no worker started and nothing left behind; a worker that cannot build its engines (a
batch job or a joined scheduler, which the driver cannot check) reports one line, not a plugin
traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("bids2table")
nib = pytest.importorskip("nibabel")
torch = pytest.importorskip("torch")

from model_server import file_entry, tiny_registry, write_registry  # noqa: E402
from synthseg_helpers import write_random_synthseg_model  # noqa: E402
from test_cohort import SHARED, crop_of  # noqa: E402
from test_faults import mounts  # noqa: E402,F401  (read-only tmpfs mounts, root only)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/t1 (real scans)")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    raw = tmp_path_factory.mktemp("bids") / "raw"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    data, affine = crop_of(0, 0)
    nib.save(nib.Nifti1Image(data, affine), str(raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "crops", "BIDSVersion": "1.10.0"}))
    (raw / "participants.tsv").write_text("participant_id\nsub-01\n")
    return raw


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_synthseg_model(tmp_path_factory.mktemp("synthseg_model"))


def bids(*arguments, env=None):
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT / "SegmentationSuite"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "segsuite", "--progress", "none", "bids", *map(str, arguments)],
                          env=env, capture_output=True, text=True, timeout=300)


def one_line_error(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert "failed to setup" not in done.stderr, done.stderr  # no Dask worker plugin was started
    assert len(lines) == 1 and lines[0].startswith("segsuite bids: error: "), done.stderr
    return lines[0]


def test_read_only_output_folder(dataset, model, tmp_path, mounts):  # noqa: F811
    read_only = mounts(tmp_path / "ro", "ro,size=1m")
    line = one_line_error(bids(dataset, read_only / "segsuite", "participant", "--synthseg-model", model,
                               "--skip-bids-validation"))
    assert f"cannot write {read_only / 'segsuite'}" in line and "read-only" in line, line


def test_read_only_work_folder_leaves_no_output_folder(dataset, model, tmp_path, mounts):  # noqa: F811
    read_only = mounts(tmp_path / "ro", "ro,size=1m")
    output = tmp_path / "out" / "segsuite"
    line = one_line_error(bids(dataset, output, "participant", "-w", read_only / "work", "--synthseg-model", model,
                               "--skip-bids-validation"))
    assert str(read_only / "work") in line and "read-only" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a CUDA GPU")
def test_cuda_without_a_gpu_before_any_work_and_an_existing_output_folder_kept(dataset, model, tmp_path):
    output = tmp_path / "segsuite"
    output.mkdir()  # made by the user: kept, and nothing is added to it
    line = one_line_error(bids(dataset, output, "participant", "--device", "cuda", "--synthseg-model", model,
                               "--skip-bids-validation"))
    assert "no CUDA GPU" in line and "--device cpu" in line, line
    assert output.is_dir() and not list(output.iterdir())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_missing_model_offline_names_the_bids_flag(dataset, tmp_path):
    """SynthSeg's weights are not installed and their only source does not answer."""
    url = f"http://127.0.0.1:{closed_port()}/synthseg_2.0.h5"
    registry = tiny_registry([file_entry("synthseg_2.0.h5", b"weights", [url])], model_id="synthseg-2.0")
    env = dict(os.environ, SEGSUITE_REGISTRY=str(write_registry(tmp_path / "registry.json", registry)))
    Path(env["SEGSUITE_CONFIG"]).write_text(json.dumps({"download": {"retries": 1, "backoff": 0.01}}))
    output = tmp_path / "segsuite"
    done = bids(dataset, output, "participant", "--skip-bids-validation", env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "failed to setup" not in done.stderr, done.stderr
    assert done.stderr.startswith("segsuite bids: error: could not download synthseg_2.0.h5"), done.stderr
    assert "--synthseg-model" in done.stderr and "--model" not in done.stderr.replace("--synthseg-model", ""), done.stderr
    assert not output.exists()


def test_invalid_dataset_prints_the_validator_error_lines(model, tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub-01" / "anat").mkdir(parents=True)  # no dataset_description.json, and a name BIDS does not have
    data, affine = crop_of(0, 0)
    nib.save(nib.Nifti1Image(data, affine), str(raw / "sub-01" / "anat" / "sub-01_T1weighted.nii.gz"))
    output = tmp_path / "segsuite"
    done = bids(raw, output, "participant", "--synthseg-model", model)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"segsuite bids: error: {raw} is not valid BIDS") and "--skip-bids-validation" in lines[0]
    codes = {line.split()[1]: line for line in lines[1:] if line.strip().startswith("[ERROR]")}
    assert "/dataset_description.json" in codes["MISSING_DATASET_DESCRIPTION"], done.stderr
    assert "/sub-01/anat/sub-01_T1weighted.nii.gz" in codes["NOT_INCLUDED"], done.stderr
    assert not output.exists()


def test_worker_that_cannot_build_its_engines_reports_one_line(tmp_path):
    """What a batch job or a joined scheduler meets (the driver checked its own machine only)."""
    from distributed import Client, LocalCluster

    from segsuite.cohort.worker import EnginePlugin, model_entries
    from segsuite.errors import SegSuiteError

    empty = tmp_path / "models"
    empty.mkdir()
    plan = {"synthseg": {"model": str(empty), "options": {}}}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.register_plugin(EnginePlugin(plan, "cpu", 1))
        with pytest.raises(SegSuiteError) as raised:
            client.submit(model_entries, pure=False).result()
    message = str(raised.value)
    assert message.startswith("a Dask worker could not build the engines: ") and "has no synthseg_2.0.h5" in message
    assert "\n" not in message
