"""Issue 29: what a run's end means to the GUI, the output folder's manifest, the Models module's
Cancel and requirement errors, the spinal-cord self-test's skip, the device index and the model
box, without the Slicer GUI (real run-engine processes; the Slicer code paths named per test)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import types
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

from conftest import stand_in_module_files  # noqa: E402

from segsuite import cli  # noqa: E402
from segsuite.runner import ProcessRunner  # noqa: E402
from segsuite_slicer import run_rules  # noqa: E402

HELPERS = Path(__file__).resolve().parent / "helpers"
AFFINE = np.array([[-1.0, 0, 0, 5], [0, 0, 1.0, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])


def _images(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        data = np.random.default_rng(index).random((10, 9, 8)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, AFFINE), str(folder / f"{name}.nii.gz"))
    return folder


# ----------------------------------------------------------------------------- defect 3: one rule

def test_run_outcome_rule(tmp_path):
    manifest = tmp_path / "manifest.json"
    assert run_rules.run_outcome(0, str(manifest)).kind == "failed"  # exit 0 but nothing written
    failed = run_rules.run_outcome(1, str(manifest), "sub-01: not a T1")
    assert (failed.kind, failed.message) == ("failed", "sub-01: not a T1")
    manifest.write_text(json.dumps({"results": [{"subject": "a", "bundle": "a"}],
                                    "failures": [{"subject": "b", "error": "bad"}]}))
    partly = run_rules.run_outcome(1, str(manifest), "1 of 2 subjects failed")
    assert partly.kind == "done" and [f["subject"] for f in partly.failures] == ["b"]
    assert run_rules.run_outcome(0, str(manifest)).kind == "done"
    assert run_rules.run_outcome(2, str(manifest), "usage").kind == "failed"  # a usage error never wrote it
    assert run_rules.run_outcome(1, str(manifest), cancelled=True).kind == "cancelled"
    stopped = run_rules.run_outcome(None, str(manifest), stopped_reason="the scene was closed")
    assert stopped.kind == "stopped" and stopped.message.startswith("Stopped: the scene was closed")
    manifest.write_text(json.dumps({"results": [], "failures": [{"subject": "b", "error": "bad"}]}))
    assert run_rules.run_outcome(1, str(manifest), "all failed").kind == "failed"
    assert run_rules.finished_status([]) == "Done."
    assert run_rules.finished_status([{"subject": "b"}], ["cortex"]) == \
        "Done; 1 subject(s) failed (see the log). Flagged by QC: cortex."
    assert run_rules.failure_lines([{"subject": "b", "error": "bad"}]) == ["b: bad"]


def test_partial_batch_exits_1_and_its_manifest_lists_what_was_written(tmp_path, monkeypatch):
    """run-engine's side of the rule: exit 1, the good bundles and a manifest in both places."""
    monkeypatch.syspath_prepend(str(HELPERS))
    folder = _images(tmp_path / "in", ["sub-01", "sub-02"])
    out, own = tmp_path / "out", tmp_path / "work" / "manifest.json"
    own.parent.mkdir()
    status = cli.main(["--progress", "none", "run-engine", "--engine", "fake_engine:FakeEngine", "-i", str(folder),
                       "-o", str(out), "--manifest", str(own), "--options", json.dumps({"fail_on": "sub-02"})])
    assert status == 1
    for path in (out / "manifest.json", own):
        manifest = json.loads(path.read_text())
        assert [r["subject"] for r in manifest["results"]] == ["sub-01"]
        assert [f["subject"] for f in manifest["failures"]] == ["sub-02"]
    assert run_rules.run_outcome(status, str(own)).kind == "done"


# ----------------------------------------------------------------------------- defect 11: the manifest

def test_run_engine_keeps_an_existing_manifest_without_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(HELPERS))
    folder = _images(tmp_path / "in", ["sub-01"])
    out = tmp_path / "out"
    out.mkdir()
    theirs = '{"dataset": "not ours"}'
    (out / "manifest.json").write_text(theirs)
    base = ["--progress", "none", "run-engine", "--engine", "fake_engine:FakeEngine", "-i", str(folder), "-o", str(out)]
    assert cli.main(base) == 1
    assert "manifest.json exists; use --overwrite" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == theirs and not (out / "sub-01").exists()
    assert cli.main(base + ["--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["results"][0]["subject"] == "sub-01"


def test_the_plan_lists_an_existing_manifest(tmp_path):
    from segsuite_slicer.engine_run import EngineRunLogic

    class FakeLogic(EngineRunLogic):
        engine = "fake_engine:FakeEngine"

    folder = _images(tmp_path / "in", ["sub-01"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    logic = FakeLogic()
    plan = logic.prepare({"outputFolder": str(out)}, input_folder=str(folder))
    try:
        assert plan.existing == [str(out / "manifest.json")]
        assert str(out / "manifest.json") in run_rules.overwrite_question(plan.existing)
        with pytest.raises(PermissionError):
            run_rules.overwrite_arguments(plan.existing, consent=False)
        command = logic.build_arguments(plan.inputs, plan.output.folder, {}, manifest=logic.run_manifest_path())
        assert command[command.index("--manifest") + 1] == os.path.join(plan.work_dir, "manifest.json")
    finally:
        logic.cleanup()


# ----------------------------------------------------------------------------- defect 8: Models module

def _stub_slicer_gui(monkeypatch):
    class Test(unittest.TestCase):  # Slicer's ScriptedLoadableModuleTest is a unittest.TestCase
        shown: list = []

        def delayDisplay(self, message, msec=1000):
            self.shown.append(message)

    stand_in_module_files(monkeypatch, ("SegmentationSuiteModels", "SpinalCordEPI"), test_base=Test)
    return Test


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM is POSIX")
def test_models_cancel_returns_at_once(monkeypatch):
    """Defect 8: the Models module's Cancel called runner.cancel() on the GUI thread: 3 s of grace
    before SIGKILL and up to 10 s more of waiting."""
    _stub_slicer_gui(monkeypatch)
    module = importlib.import_module("SegmentationSuiteModels")
    logic = module.SegmentationSuiteModelsLogic()
    script = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(60)")
    logic.runner = ProcessRunner([sys.executable, "-c", script]).start()
    while not logic.runner.log:
        logic.runner.poll()
        time.sleep(0.02)
    started = time.monotonic()
    logic.cancel()
    assert time.monotonic() - started < 0.5, "Cancel blocked the GUI thread"
    assert logic.runner.cancelled  # the widget's poll shows "Cancelled."
    logic.stop()  # cleanup / application exit: waits until the process is gone
    assert logic.runner.process.returncode == -signal.SIGKILL


def test_models_requirement_failure_is_a_message(monkeypatch, tmp_path):
    """Defect 8: ensure_requirements("models") outside try/except turned a failed pip into a traceback."""
    _stub_slicer_gui(monkeypatch)
    module = importlib.import_module("SegmentationSuiteModels")
    logic = module.SegmentationSuiteModelsLogic()

    def failing(engine):
        raise RuntimeError("pip exited with status 1 (no network)")

    assert logic.start("verify", ensure_requirements=failing) == \
        "Could not install the Python packages the model manager needs: pip exited with status 1 (no network)"
    assert logic.runner is None
    assert "were not installed" in logic.start("verify", ensure_requirements=lambda engine: False)
    monkeypatch.setenv("SEGSUITE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(module, "slicer_python", lambda: sys.executable)
    assert logic.start("verify", ensure_requirements=lambda engine: True) is None
    assert logic.runner.wait(120) == 0


# ----------------------------------------------------------------------------- defect 12: the skip

def test_spinal_cord_self_test_skip_is_not_a_failure_under_reload_and_test(monkeypatch):
    """Slicer's "Reload and Test" (ScriptedLoadableModuleWidget.onReloadAndTest, v5.10.0) calls
    runTest inside slicer.util.tryWithErrorDisplay("Reload and Test failed."), which showed the
    SkipTest as a failure. runTest runs the factory-safe tests, then the full Apply, which skips
    without a spinal-cord EPI; ctest (slicer.testing.runUnitTest) collects only the factory-safe ones."""
    from segsuite_slicer import self_test

    test_class = _stub_slicer_gui(monkeypatch)
    monkeypatch.delenv("SEGSUITE_TEST_SCEPI_INPUT", raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: False), raising=False)
    errors, widget_checks = [], []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)
    # the widget check needs the application's module widgets (selectModule); it runs on real MRML in
    # test_slicer_widget_lifecycle.py; the other two factory-safe tests run here as they are
    monkeypatch.setattr(self_test, "check_widget_and_parameter_node",
                        lambda test_case, module_name: widget_checks.append(module_name))
    module = importlib.import_module("SpinalCordEPI")
    test_class.shown = []
    raised = None
    try:
        with slicer.util.tryWithErrorDisplay("Reload and Test failed."):  # what onReloadAndTest does
            module.SpinalCordEPITest().runTest()
    except Exception as error:  # unittest.SkipTest included: it shows the dialog, then re-raises
        raised = error
    assert raised is None and errors == []
    assert widget_checks == ["SpinalCordEPI"]
    assert [message.endswith(" passed") for message in test_class.shown] == [True, True, True, False]
    assert "full_apply_SpinalCordEPI skipped: set SEGSUITE_TEST_SCEPI_INPUT" in test_class.shown[-1]
    suite = unittest.TestLoader().loadTestsFromTestCase(module.SpinalCordEPITest)  # what ctest runs
    result = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(suite)
    assert result.wasSuccessful() and result.testsRun == 3 and not result.skipped  # the full Apply is not collected


# ----------------------------------------------------------------------------- UX rows

def test_device_argument():
    assert run_rules.device_argument("cuda", "1") == "cuda:1"
    assert run_rules.device_argument("cuda", "") == "cuda:0"
    assert run_rules.device_argument("cpu", "3") == "cpu" and run_rules.device_argument("", None) == "auto"
    with pytest.raises(ValueError, match="CUDA device index"):
        run_rules.device_argument("cuda", "-1")
    parsed = cli.build_parser().parse_args(["run-engine", "--engine", "synthseg", "-i", "x", "-o", "y",
                                            "--device", run_rules.device_argument("cuda", "1")])
    assert parsed.device == "cuda:1"


def test_a_cuda_index_beyond_the_gpus_is_a_clear_error():
    torch = pytest.importorskip("torch")
    from segsuite.engine import resolve_device
    from segsuite.errors import SegSuiteError

    # a misspelt GPU is a clear error on any machine (torch would fail later with a traceback)
    for spelling in ("cuda:", "cuda:x", "cuda:-1", "cuda1", "cudax", "cuda:1.0", "cuda:\u0661"):
        with pytest.raises(SegSuiteError, match="--device cuda or cuda:N"):
            resolve_device(spelling)
    if not torch.cuda.is_available():
        with pytest.raises(SegSuiteError, match="sees no CUDA GPU"):
            resolve_device("cuda:1")
        return
    count = torch.cuda.device_count()
    assert resolve_device(f"cuda:{count - 1}") == f"cuda:{count - 1}"
    with pytest.raises(SegSuiteError, match=f"sees {count} CUDA GPU"):
        resolve_device(f"cuda:{count}")


def test_apply_button_state():
    assert run_rules.apply_button_state(True, False, False) == (True, "Apply")
    assert run_rules.apply_button_state(False, False, False) == (False, "Apply")
    assert run_rules.apply_button_state(True, True, False) == (True, "Cancel")
    assert run_rules.apply_button_state(True, False, True) == (False, "Installing...")


@pytest.mark.parametrize("engine, options, expected", [
    ("synthseg", {"qc": True}, ["synthseg-2.0", "synthseg-qc-2.0"]),
    ("synthseg", {"robust": True, "parc": True}, ["synthseg-robust-2.0", "synthseg-parc-2.0"]),
    ("sclimbic", {"etiv": "register"}, ["sclimbic", "mni-icbm152-2009a"]),
    ("sclimbic", {"etiv": None}, ["sclimbic"]),
    ("scepi", {}, ["sc-epi"]),
    ("samseg-filter", {"preset": "fmriprep"}, []),
])
def test_model_box_names_registry_models(engine, options, expected):
    from segsuite.models.registry import Registry
    from segsuite_slicer.model_info import model_ids_for, model_info_html

    registry = Registry.load()
    assert model_ids_for(engine, options) == expected
    assert all(model_id in registry for model_id in expected)
    html = model_info_html(engine, options, registry=registry)
    for model_id in expected:
        spec = registry.get(model_id)
        assert spec.title in html and spec.licence["name"] in html
        assert all(citation.split(".")[0] in html for citation in spec.citations)
    if not expected:
        assert "no trained model" in html
    assert "chosen under Advanced: /m/x.h5" in model_info_html(engine, options, explicit_model="/m/x.h5",
                                                               registry=registry)


@pytest.mark.parametrize("options", [{}, {"qc": True}, {"parc": True, "qc": True}, {"robust": True, "parc": True}])
def test_model_box_names_what_the_synthseg_engine_loads(options, monkeypatch):
    """The model box (model_info.model_ids_for) and the engine name the same registry ids: a SynthSeg
    engine is built for the module's options and the ids its weight loading asks for are recorded."""
    pytest.importorskip("torch")
    from segsuite.synthseg.engine import SynthSegEngine
    from segsuite_slicer.model_info import model_ids_for

    asked = []
    monkeypatch.setattr(SynthSegEngine, "_load", lambda self, model, model_id, *rest: asked.append(model_id))
    SynthSegEngine(device="cpu", **options)
    assert sorted(asked) == sorted(model_ids_for("synthseg", options))


def test_model_box_names_the_ids_the_other_engines_ask_the_model_manager_for():
    from segsuite.scepi.modelfolder import MODEL_ID as SCEPI_MODEL
    from segsuite.sclimbic.engine import MODEL_ID as SCLIMBIC_MODEL
    from segsuite.sclimbic.registration import TEMPLATE_ID
    from segsuite_slicer.model_info import model_ids_for

    assert model_ids_for("sclimbic", {"etiv": "register"}) == [SCLIMBIC_MODEL, TEMPLATE_ID]
    assert model_ids_for("scepi", {}) == [SCEPI_MODEL]
