"""The process runner: start, progress lines, cancel kills the process tree, error propagation.

Runs real child processes on this machine (no Slicer needed).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segsuite import cli
from segsuite.result_io import load_result_bundle
from segsuite.runner import (FinishedEvent, LogEvent, ProcessCancelled, ProcessError, ProcessRunner, ProgressEvent,
                             error_message_from_log, parse_progress_line)

HELPERS = Path(__file__).resolve().parent / "helpers"


def _script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _drain(runner, timeout=30.0):
    events = []
    deadline = time.monotonic() + timeout
    while runner.running and time.monotonic() < deadline:
        events += runner.poll()
        time.sleep(0.02)
    events += runner.poll()
    return events


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped) counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return True


def test_parse_progress_and_error_lines():
    event = parse_progress_line('SEGSUITE_PROGRESS {"fraction": 0.25, "message": "Predicting"}')
    assert event == ProgressEvent(0.25, "Predicting")
    assert parse_progress_line("SEGSUITE_PROGRESS {broken") is None
    assert parse_progress_line("some other line") is None
    assert parse_progress_line(cli.PROGRESS_PREFIX + json.dumps({"fraction": 1.5, "message": ""})).fraction == 1.0
    log = ["loading", "segsuite synthseg: error: input not found: a.nii", "bye"]
    assert error_message_from_log(log) == "input not found: a.nii"
    assert error_message_from_log(["ok", "fine"]) is None


def test_progress_and_output_in_order(tmp_path):
    command = _script(tmp_path, """
        import json, sys
        for i in range(5):
            print("SEGSUITE_PROGRESS " + json.dumps({"fraction": i / 4, "message": f"step {i}"}), file=sys.stderr, flush=True)
            print(f"out {i}", flush=True)
    """)
    runner = ProcessRunner(command).start()
    events = _drain(runner)
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert [e.fraction for e in progress] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [e.message for e in progress] == [f"step {i}" for i in range(5)]
    assert [e.line for e in events if isinstance(e, LogEvent)] == [f"out {i}" for i in range(5)]
    assert isinstance(events[-1], FinishedEvent) and events[-1].returncode == 0
    assert runner.fraction == 1.0 and runner.message == "step 4"
    runner.check()


def test_error_propagates_with_the_childs_message(tmp_path):
    command = _script(tmp_path, """
        import sys
        print("working", file=sys.stderr)
        print("segsuite synthseg: error: cannot read x.nii as an image; give a NIfTI file", file=sys.stderr)
        sys.exit(1)
    """)
    runner = ProcessRunner(command)
    with pytest.raises(ProcessError) as caught:
        runner.run(timeout=30)
    assert str(caught.value) == "cannot read x.nii as an image; give a NIfTI file"
    assert caught.value.returncode == 1


def test_crash_without_error_line_reports_status_and_tail(tmp_path):
    command = _script(tmp_path, """
        import os
        print("last words", flush=True)
        os._exit(3)
    """)
    with pytest.raises(ProcessError, match=r"status 3: last words"):
        ProcessRunner(command).run(timeout=30)


def test_missing_executable_is_a_clear_error(tmp_path):
    with pytest.raises(ProcessError, match="cannot start"):
        ProcessRunner([str(tmp_path / "no-such-python")]).start()


@pytest.mark.skipif(os.name == "nt", reason="process-group check uses POSIX signals")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    command = _script(tmp_path, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("SEGSUITE_PROGRESS {{\\"fraction\\": 0.1, \\"message\\": \\"busy\\"}}", file=sys.stderr, flush=True)
        time.sleep(120)
    """)
    runner = ProcessRunner(command).start()
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild) and _alive(runner.pid)
    started = time.monotonic()
    runner.cancel(grace=2.0)
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 10
    while (_alive(grandchild) or _alive(runner.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(runner.pid), "the child survived cancel"
    assert not _alive(grandchild), "the grandchild survived cancel"
    _drain(runner)
    with pytest.raises(ProcessCancelled):
        runner.check()


def test_run_with_cancel_event(tmp_path):
    command = _script(tmp_path, """
        import time
        time.sleep(120)
    """)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(ProcessCancelled):
        ProcessRunner(command).run(cancel_event=cancel, timeout=60)
    assert time.monotonic() - started < 20


# ---------------------------------------------------------------- segsuite run-engine in a child


def _image(path: Path, shape=(12, 10, 8), seed=0) -> Path:
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 5], [0, 0, 1.0, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _segsuite_runner(arguments, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), env.get("PYTHONPATH", "")])
    return ProcessRunner.for_segsuite(arguments, env=env)


def test_segsuite_child_progress_and_bundle(tmp_path):
    image = _image(tmp_path / "sub-01.nii.gz")
    out = tmp_path / "out"
    runner = _segsuite_runner(["run-engine", "--engine", "fake_engine:FakeEngine", "--input", str(image),
                               "--output-dir", str(out), "--options", json.dumps({"steps": 3})], tmp_path)
    seen = []
    runner.run(progress=lambda f, m: seen.append((f, m)), timeout=120)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("step 2 of 3" in m for _, m in seen)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["subject"] for r in manifest["results"]] == ["sub-01"] and manifest["failures"] == []
    result = load_result_bundle(out / "sub-01")
    source = nib.load(str(image))
    assert result.subject == "sub-01"
    assert np.allclose(result.affine, source.affine)
    assert set(result.present_labels) <= {17, 53} and result.volumes


def test_segsuite_child_user_error_reaches_the_caller(tmp_path):
    image = _image(tmp_path / "sub-01.nii.gz")
    runner = _segsuite_runner(["run-engine", "--engine", "fake_engine:FakeEngine", "--input", str(image),
                               "--output-dir", str(tmp_path / "out"),
                               "--options", json.dumps({"fail_with": "the image is not a T1; choose a T1 scan"})],
                              tmp_path)
    with pytest.raises(ProcessError) as caught:
        runner.run(timeout=120)
    assert str(caught.value) == "the image is not a T1; choose a T1 scan"
    assert not (tmp_path / "out" / "sub-01").exists()


@pytest.mark.skipif(os.name == "nt", reason="process-group check uses POSIX signals")
def test_segsuite_child_cancel_kills_engine_subprocesses(tmp_path):
    image = _image(tmp_path / "sub-01.nii.gz")
    pid_file = tmp_path / "engine-child.pid"
    options = {"steps": 100, "delay": 0.5, "child_pid_file": str(pid_file)}
    runner = _segsuite_runner(["run-engine", "--engine", "fake_engine:FakeEngine", "--input", str(image),
                               "--output-dir", str(tmp_path / "out"), "--options", json.dumps(options)], tmp_path)
    runner.start()
    deadline = time.monotonic() + 60
    while runner.fraction <= 0.0 and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    assert runner.fraction > 0.0, "no progress line arrived"
    grandchild = int(pid_file.read_text())
    runner.cancel(grace=2.0)
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild) and not _alive(runner.pid)
    assert not (tmp_path / "out" / "sub-01").exists()


def test_run_engine_batch_folder_in_process(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))
    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate(["b", "a"]):
        _image(folder / f"{name}.nii.gz", seed=index)
    out = tmp_path / "out"
    args = ["--progress", "none", "run-engine", "--engine", "fake_engine:FakeEngine", "-i", str(folder), "-o", str(out)]
    assert cli.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["subject"] for r in manifest["results"]] == ["a", "b"]
    assert cli.main(args) == 1  # existing bundles are not overwritten silently
    assert cli.main(args + ["--overwrite"]) == 0


def test_run_engine_usage_errors(tmp_path, capsys):
    image = _image(tmp_path / "x.nii.gz")
    base = ["--progress", "none", "run-engine", "-i", str(image), "-o", str(tmp_path / "o")]
    assert cli.main(base + ["--engine", "nonsense"]) == 2
    assert "unknown engine" in capsys.readouterr().err
    assert cli.main(base + ["--engine", "synthseg", "--options", "[1]"]) == 2
