"""One segsuite bids run per output dataset (a lock naming its holder, taken over from a dead one),
the truthful end line of an interrupted run, the bids flags in engine hints, and the engine layer
as the cohort worker's only way to build engines."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "SegmentationSuite" / "segsuite"


def test_the_lock_names_its_holder_and_is_taken_over_from_a_dead_one(tmp_path):
    from segsuite.cohort.lock import LOCK_NAME, OutputLock, OutputLocked

    output = tmp_path / "derivatives"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        output.mkdir()
        started = time.time() - 3600
        (output / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid,
                                                     "started": started}))
        with pytest.raises(OutputLocked) as refused:
            OutputLock(output).acquire()
        message = str(refused.value)
        assert f"pid {sleeper.pid} on {socket.gethostname()} since " in message and "\n" not in message
        assert time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) in message
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone now (same host, pid not running): the next run takes the lock over
    with OutputLock(output) as lock:
        holder = json.loads((output / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and lock.held
    assert not (output / LOCK_NAME).exists()
    # a holder on another host cannot be checked: refused, with what to do
    (output / LOCK_NAME).write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "started": time.time()}))
    with pytest.raises(OutputLocked, match=r"pid 1 on elsewhere\.example .*remove .*\.segsuite\.lock"):
        OutputLock(output).acquire()


def test_a_lock_taken_for_a_new_output_folder_leaves_nothing_when_released(tmp_path):
    from segsuite.cohort.lock import OutputLock

    with OutputLock(tmp_path / "new" / "derivatives"):
        assert (tmp_path / "new" / "derivatives" / ".segsuite.lock").is_file()
    assert not (tmp_path / "new" / "derivatives").exists()


def test_engine_hints_name_the_flags_of_segsuite_bids(tmp_path):
    pytest.importorskip("distributed")
    from segsuite.cli import build_parser
    from segsuite.cohort.worker import EngineSet
    from segsuite.commands.bids import model_plan
    from segsuite.errors import ModelError

    empty = tmp_path / "models"
    empty.mkdir()
    args = build_parser().parse_args(["bids", "raw", "out", "participant", "--synthseg-model", str(empty)])
    with pytest.raises(ModelError) as error:
        EngineSet(model_plan(args), "cpu", 1)
    assert "--synthseg-model" in str(error.value) and not re.search(r"--model\b", str(error.value)), error.value


def test_the_cohort_worker_builds_engines_through_the_engine_layer():
    tree = ast.parse((PACKAGE / "cohort" / "worker.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("commands" in (module or "") for module in imported), imported
    assert "engine" in imported


@pytest.mark.slow
def test_a_second_run_stops_at_once_and_sigterm_ends_with_what_was_done(tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("bids2table")
    pytest.importorskip("torch")
    nib = pytest.importorskip("nibabel")
    from synthseg_helpers import write_random_synthseg_model
    from test_cohort import OPTIONS, SHARED, crop_of, segsuite

    if not SHARED.is_dir():
        pytest.skip("needs ../shared/data/t1 (real scans)")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "four", "BIDSVersion": "1.10.0"}))
    subjects = ["01", "02", "03", "04"]
    for number, participant in enumerate(subjects):
        (raw / f"sub-{participant}" / "anat").mkdir(parents=True)
        data, affine = crop_of(number % 3, 0)
        nib.save(nib.Nifti1Image(data, affine), str(raw / f"sub-{participant}" / "anat" / f"sub-{participant}_T1w.nii.gz"))
    model = write_random_synthseg_model(tmp_path)
    output = tmp_path / "out"
    command = ["bids", raw, output, "participant", "--nprocs", "1", "--synthseg-model", model, *OPTIONS]
    first = segsuite(*command)
    deadline = time.time() + 120
    while not (output / ".segsuite.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    started = time.time()
    second = segsuite(*command)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 1, err
    assert time.time() - started < 30 and first.poll() is None
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"is in use by another segsuite bids run (pid {first.pid} on {socket.gethostname()}" \
        in lines[0], err
    # SIGTERM once a subject is committed: the end line says what is on disk
    while not list(output.glob("sub-*/*_segsuite.json")) and time.time() < deadline + 180:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err
    match = re.search(r"interrupted by SIGTERM after [\d.]+ s: (\d+) committed, (\d+) skipped, (\d+) failed, "
                      r"(\d+) not started; committed outputs are kept", err)
    assert match, err
    committed, skipped, failed, not_started = map(int, match.groups())
    on_disk = len(list(output.glob("sub-*/*_segsuite.json")))
    assert committed == on_disk >= 1 and (skipped, failed) == (0, 0) and committed + not_started == len(subjects), err
    assert "no output written" not in err
    assert not (output / ".segsuite.lock").exists() and not (output / ".staging").exists()
    # the same command again: the committed subjects are skipped, the rest done
    again = segsuite(*command)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"{len(subjects) - committed} done, {committed} skipped, 0 failed" in err
    assert not (output / ".segsuite.lock").exists()
