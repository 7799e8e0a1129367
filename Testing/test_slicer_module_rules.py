"""The Slicer modules' data-safety rules and the logic they drive, without the Slicer GUI.

Existing results are never replaced without consent (no unconditional --overwrite), a batch never
writes into the work folder that cleanup() deletes, Cancel returns at once, only scalar volumes are
accepted, and QC scores / z-scores become a real plot chart (slicer-core MRML)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

from segsuite.result import SegmentationResult  # noqa: E402
from segsuite.runner import ProcessRunner  # noqa: E402
from segsuite_slicer import mrml, run_rules  # noqa: E402
from segsuite_slicer.engine_run import EngineRunLogic  # noqa: E402

HELPERS = Path(__file__).resolve().parent / "helpers"
AFFINE = np.array([[-1.0, 0, 0, 5], [0, 0, 1.0, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])


class FakeLogic(EngineRunLogic):
    engine = "fake_engine:FakeEngine"


def _image(path: Path, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).random((10, 9, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def _start_and_wait(logic, parameters, timeout=60.0, **kwargs) -> dict:
    outcome: dict = {}
    logic.start(dict(parameters, python=sys.executable), on_finished=lambda folder: outcome.update(folder=folder),
                on_error=lambda message: outcome.update(error=message), use_timer=False, **kwargs)
    deadline = time.monotonic() + timeout
    while logic.poll_once():
        assert time.monotonic() < deadline, "the engine did not finish"
        time.sleep(0.05)
    return outcome


@pytest.fixture
def helpers_on_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(HELPERS))


# ----------------------------------------------------------------------------- pure rules

def test_parse_bool_and_threads():
    assert [run_rules.parse_bool(v) for v in ("true", "1", " Yes ", "on")] == [True] * 4
    assert [run_rules.parse_bool(v) for v in ("false", "", None, "0", "off")] == [False] * 5
    assert run_rules.parse_threads("") == 0 and run_rules.parse_threads(None) == 0
    assert run_rules.parse_threads(" 4 ") == 4
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ValueError, match="threads"):
            run_rules.parse_threads(bad)


def test_output_folder_choice(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    chosen = run_rules.choose_output_folder(True, str(tmp_path / "mine"), str(work), "synthseg")
    assert chosen == run_rules.OutputChoice(str(tmp_path / "mine"), temporary=False)
    # A batch without a folder goes to the persistent default, never into the work folder.
    batch = run_rules.choose_output_folder(True, "", str(work), "synthseg", default_base=str(tmp_path / "docs"))
    assert batch == run_rules.OutputChoice(str(tmp_path / "docs" / "SegmentationSuite" / "synthseg"), temporary=False)
    assert not batch.folder.startswith(str(work))
    assert run_rules.default_batch_output_folder("sclimbic").startswith(str(Path.home()))
    # One volume without a folder: a temporary folder inside the work folder (results go into the scene).
    single = run_rules.choose_output_folder(False, "", str(work), "synthseg")
    assert single.temporary and single.folder == str(work / "results")
    with pytest.raises(ValueError, match="temporary work folder"):
        run_rules.choose_output_folder(True, str(work / "x"), str(work), "synthseg")


def test_existing_outputs_need_consent(tmp_path):
    (tmp_path / "sub-01").mkdir()
    existing = run_rules.existing_outputs(str(tmp_path), ["sub-01", "sub-02"])
    assert existing == [str(tmp_path / "sub-01")]
    assert run_rules.overwrite_arguments([], consent=False) == []
    assert run_rules.overwrite_arguments([], consent=True) == []  # nothing to replace: no --overwrite
    assert run_rules.overwrite_arguments(existing, consent=True) == ["--overwrite"]
    with pytest.raises(PermissionError, match="sub-01 exists"):
        run_rules.overwrite_arguments(existing, consent=False)
    question = run_rules.overwrite_question([f"/o/sub-{i}" for i in range(8)])
    assert "/o/sub-0" in question and "/o/sub-4" in question and "/o/sub-5" not in question and "3 more" in question


def test_planned_subjects_match_run_engine(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.nii.gz", "a.mgz", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert run_rules.planned_subjects([str(folder)]) == ["a", "b"]


def test_flagged_scores():
    assert run_rules.flagged_scores("synthseg", {"cortex": 0.9, "thalamus": 0.6, "x": None}) == ["thalamus"]
    assert run_rules.flagged_scores("sclimbic", {"a": 3.2, "b": -3.0, "c": 1.0}) == ["a", "b"]
    assert run_rules.flagged_scores("scepi", {"a": -10}) == []


# ----------------------------------------------------------------------------- the logic, real processes

def test_existing_result_is_kept_without_consent_and_replaced_with_it(tmp_path, helpers_on_path):
    image = _image(tmp_path / "sub-01.nii.gz")
    out = tmp_path / "out"
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "precious.txt").write_text("keep me")
    logic = FakeLogic()
    parameters = dict(logic.default_parameters, outputFolder=str(out), device="cpu")
    plan = logic.prepare(parameters, input_folder=str(image.parent))
    assert plan.existing == [str(out / "sub-01")] and plan.subjects == ["sub-01"]
    with pytest.raises(PermissionError):
        logic.start(parameters, plan=plan, use_timer=False)
    assert logic.runner is None and (out / "sub-01" / "precious.txt").read_text() == "keep me"
    # The old code passed --overwrite always; now the command has it only with consent.
    assert "--overwrite" not in logic.build_arguments(plan.inputs, plan.output.folder, parameters)
    outcome = _start_and_wait(logic, parameters, plan=plan, overwrite=True)
    assert "--overwrite" in logic.runner.command
    assert outcome == {"folder": str(out)}
    assert not (out / "sub-01" / "precious.txt").exists() and (out / "sub-01" / "result.json").exists()
    logic.cleanup()


def test_batch_without_output_folder_survives_cleanup(tmp_path, helpers_on_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "sub-01.nii.gz", 1)
    _image(folder / "sub-02.nii.gz", 2)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    logic = FakeLogic()
    parameters = dict(logic.default_parameters, device="cpu")
    plan = logic.prepare(parameters, input_folder=str(folder), default_base=str(tmp_path / "docs"))
    assert plan.output.folder == str(tmp_path / "docs" / "SegmentationSuite" / FakeLogic.engine)
    outcome = _start_and_wait(logic, parameters, plan=plan)
    work = logic.work_dir
    logic.cleanup()
    assert not os.path.exists(work)
    labels = sorted(p.parent.name for p in Path(outcome["folder"]).glob("*/result.json"))
    assert labels == ["sub-01", "sub-02"]  # the batch's label maps outlive the work folder
    scene = slicer.vtkMRMLScene()
    nodes = logic.load_results(outcome["folder"], scene=scene)
    assert nodes["tables"][0].GetNumberOfRows() == 2


def test_cancel_returns_at_once_even_when_the_process_ignores_sigterm(tmp_path):
    if os.name == "nt":
        pytest.skip("SIGTERM is POSIX")
    logic = FakeLogic()
    script = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(60)")
    logic.runner = ProcessRunner([sys.executable, "-c", script]).start()
    errors: list = []
    logic._callbacks = (None, None, errors.append, str(tmp_path))
    while not logic.runner.log:  # the child has installed its handler
        logic.poll_once()
        time.sleep(0.02)
    started = time.monotonic()
    logic.cancel()
    returned = time.monotonic() - started
    assert returned < 0.5, f"cancel blocked the caller for {returned:.2f} s"
    logic.cancel()  # a second click does nothing more
    deadline = time.monotonic() + 20
    while logic.poll_once():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert errors == ["Cancelled."]
    assert logic.runner.process.returncode == -signal.SIGKILL  # SIGTERM ignored: killed after the grace time


# ----------------------------------------------------------------------------- MRML

@pytest.mark.parametrize("class_name", [c for c in mrml.NOT_SCALAR_INPUT_CLASSES if c != "vtkMRMLTensorVolumeNode"])
def test_non_scalar_inputs_get_a_clear_error(class_name, tmp_path):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass(class_name, "odd")
    node.SetAndObserveImageData(mrml._vtk_image_from_array(np.zeros((4, 4, 4), dtype=np.int16)))
    with pytest.raises(ValueError, match="'odd' is a .* volume: choose a scalar"):
        EngineRunLogic.export_volume_node(node, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_multi_component_scalar_volume_is_refused(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = mrml.add_volume_node(np.zeros((4, 4, 4, 3), dtype=np.float32), np.eye(4), "rgb", scene=scene)
    with pytest.raises(ValueError, match="3 components"):
        mrml.check_scalar_volume_node(node)
    plain = mrml.add_volume_node(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4), "t1", scene=scene)
    mrml.check_scalar_volume_node(plain)
    with pytest.raises(ValueError, match="choose an input volume"):
        mrml.check_scalar_volume_node(None)


@pytest.mark.parametrize("engine, thresholds", [("synthseg", [0.65]), ("sclimbic", [-3.0, 3.0])])
def test_score_chart_has_bars_and_threshold_lines(engine, thresholds):
    scene = slicer.vtkMRMLScene()
    scores = {"general white matter": 0.91, "cortex": 0.6, "thalamus": 0.8}
    made = mrml.add_score_chart(scores, "QC", run_rules.FLAG_THRESHOLDS[engine], scene=scene, y_title="z")
    chart, table, series = made["chart"], made["table"], made["series"]
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 1 + len(thresholds)
    bars = chart.GetNthPlotSeriesNode(0)
    assert bars.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert bars.GetTableNode() is table and bars.GetYColumnName() == "Score" and bars.GetLabelColumnName() == "Name"
    columns = mrml.table_to_dict(table)
    assert columns["Name"] == list(scores) and columns["Score"] == pytest.approx(list(scores.values()))
    for index, value in enumerate(thresholds):
        line = chart.GetNthPlotSeriesNode(index + 1)
        assert line.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeLine
        assert columns[line.GetYColumnName()] == pytest.approx([value] * 3)
    assert chart.GetYAxisTitle() == "z" and series[0] is bars


def test_load_results_adds_the_qc_chart_for_synthseg(tmp_path):
    from segsuite.labels import freesurfer_lut
    from segsuite.result_io import save_result_bundle

    labels = np.zeros((6, 6, 6), dtype=np.int32)
    labels[1:3, 1:3, 1:3] = 17
    result = SegmentationResult(labels=labels, affine=AFFINE, label_table=freesurfer_lut().subset([0, 17]),
                                volumes={"Left-Hippocampus": 8.0}, qc={"cortex": 0.5, "thalamus": 0.9},
                                units={"volumes": "mm3", "qc": ""}, subject="sub-01")
    save_result_bundle(result, tmp_path / "sub-01")
    (tmp_path / "manifest.json").write_text(json.dumps({"results": [{"subject": "sub-01", "bundle": "sub-01"}]}))

    class SynthSegLike(EngineRunLogic):
        engine = "synthseg"

    scene = slicer.vtkMRMLScene()
    nodes = SynthSegLike().load_results(str(tmp_path), scene=scene)
    assert len(nodes["charts"]) == 1
    chart = nodes["charts"][0]
    assert chart.GetName() == "sub-01 synthseg QC" and chart.GetNumberOfPlotSeriesNodes() == 2
    assert scene.GetNodesByClass("vtkMRMLPlotSeriesNode").GetNumberOfItems() == 2


# ----------------------------------------------------------------------------- scene close, self-test checks

def test_scene_close_empties_the_parameter_node_and_the_defaults_come_back():
    """Defect 6: MRML resets a singleton parameter node on close (QC, default on, read as off);
    the widget's EndCloseEvent handler sets the defaults again."""
    from segsuite_slicer.engine_run import ensure_parameter_defaults

    scene = slicer.vtkMRMLScene()
    node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
    node.UnRegister(None)
    node.SetSingletonTag("SynthSeg")
    scene.AddNode(node)
    defaults = {"qc": "true", "device": "auto", "threads": "0"}
    ensure_parameter_defaults(node, defaults)
    node.SetParameter("device", "cpu")  # a user's choice is kept by later calls
    ensure_parameter_defaults(node, defaults)
    assert (node.GetParameter("qc"), node.GetParameter("device")) == ("true", "cpu")
    scene.Clear(0)
    assert run_rules.parse_bool(node.GetParameter("qc")) is False  # what the old widget then showed
    ensure_parameter_defaults(node, defaults)
    assert node.GetParameter("qc") == "true" and node.GetParameter("device") == "auto"


def test_widget_removes_exactly_the_observer_it_added():
    """Defect 6: the observer for vtkCommand.ModifiedEvent (33) must be removed with that event,
    not 0x0; checked on module_gui's source (the widget itself needs the Slicer GUI)."""
    import ast
    import vtk

    source = (Path(__file__).resolve().parents[1] / "SegmentationSuite" / "segsuite_slicer" / "module_gui.py").read_text()
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr in ("addObserver", "removeObserver")]
    events = {(call.func.attr, ast.unparse(call.args[1])) for call in calls}
    assert ("removeObserver", "vtk.vtkCommand.ModifiedEvent") in events
    assert ("addObserver", "vtk.vtkCommand.ModifiedEvent") in events
    assert not any(event in ("0", "0x0", "33") for _, event in events)
    assert vtk.vtkCommand.ModifiedEvent == 33
    for event in ("slicer.mrmlScene.StartCloseEvent", "slicer.mrmlScene.EndCloseEvent"):
        assert ("addObserver", event) in events
    assert hasattr(slicer.vtkMRMLScene, "StartCloseEvent") and hasattr(slicer.vtkMRMLScene, "EndCloseEvent")


def _apply_nodes(scene, result):
    from segsuite_slicer.engine_run import EngineRunLogic  # noqa: F401 - same path as load_results

    segmentation = mrml.add_segmentation_from_result(result, scene=scene, name="seg")
    tables = [mrml.add_volumes_table(result, scene=scene, name="s volumes"), mrml.add_qc_table(result, scene=scene, name="s QC")]
    return {"segmentations": [segmentation], "tables": tables, "charts": []}


def test_self_test_checks_catch_what_is_wrong():
    from segsuite.labels import freesurfer_lut
    from segsuite_slicer import self_test

    scene = slicer.vtkMRMLScene()
    labels = self_test.samseg_test_labels()
    assert set(np.unique(labels)) == {0, *self_test.SAMSEG_TEST_LABELS}
    lut = freesurfer_lut()
    kept = [v for v in self_test.SAMSEG_TEST_LABELS if lut.name(v) not in self_test.SAMSEG_REMOVED]
    cleaned = np.where(np.isin(labels, kept), labels, 0)
    result = SegmentationResult(labels=cleaned, affine=np.eye(4), label_table=lut.subset([0] + kept),
                                volumes={lut.name(v): float((cleaned == v).sum()) for v in kept},
                                measures={"BrainMask": 1.0}, units={"volumes": "mm3"}, subject="s")
    nodes = _apply_nodes(scene, result)
    good = dict(expected_segments=["Left-Cerebral-White-Matter"], forbidden_segments=self_test.SAMSEG_REMOVED,
                expected_tables=["volumes", "QC"], expected_measures=["BrainMask"])
    assert self_test.apply_problems(nodes, **good) == []
    problems = self_test.apply_problems(nodes, expected_segments=["Left-Hippocampus"], forbidden_segments=["Left-Cerebral-Cortex"],
                                        expected_tables=["volumes", "QC", "z-scores"], expected_measures=["eTIV"],
                                        expected_charts=1)
    assert problems == ["segment 'Left-Hippocampus' missing", "segment 'Left-Cerebral-Cortex' should not be there",
                        "table 's volumes' lacks rows for ['Left-Hippocampus']",
                        "table 's QC' lacks the measures ['eTIV']",
                        "no table named '... z-scores' (tables: ['s QC', 's volumes'])", "expected 1 chart(s), got 0"]
    assert self_test.apply_problems({"segmentations": []}) == ["expected one segmentation node, got 0"]
    volume = self_test.make_samseg_volume(scene)
    mrml.check_scalar_volume_node(volume)
    array, _ = mrml.array_affine_from_volume_node(volume)
    assert np.array_equal(array, labels)


def test_samseg_self_test_input_runs_through_the_real_filter(tmp_path):
    """The input the SAMSEG self-test makes gives what the self-test asserts (here without Slicer)."""
    from segsuite.samseg.filter import SamsegBrainMask
    from segsuite_slicer import self_test

    scene = slicer.vtkMRMLScene()
    path = EngineRunLogic.export_volume_node(self_test.make_samseg_volume(scene), str(tmp_path))
    result = SamsegBrainMask().segment(path)
    nodes = _apply_nodes(scene, result)
    assert self_test.apply_problems(nodes, expected_segments=["Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter"],
                                    forbidden_segments=self_test.SAMSEG_REMOVED, expected_tables=["volumes", "QC"],
                                    expected_measures=["BrainMask", "RemovedLabels"]) == []


# ----------------------------------------------------------------------------- the Models module's client

def test_model_listing_is_polled_not_waited_for(monkeypatch, tmp_path):
    """Defect 3 (GUI half): the listing is a child process the GUI polls; poll() never blocks."""
    from segsuite_slicer import models_client

    monkeypatch.setenv("SEGSUITE_HOME", str(tmp_path / "home"))
    command = models_client.start_listing(python=sys.executable)
    polls, started = 0, time.monotonic()
    while True:
        before = time.monotonic()
        output = command.poll()
        assert time.monotonic() - before < 0.2, "poll() blocked"
        polls += 1
        if output is not None:
            break
        assert time.monotonic() - started < 120
        time.sleep(0.02)
    assert polls > 1  # the first poll came back before the child had answered
    by_id = {model["id"]: model for model in models_client.parse_listing(output)}
    assert by_id["synthseg-2.0"]["status"] == "not installed"
    folder = models_client.cache_folder(python=sys.executable)
    assert os.path.isabs(folder)


def test_a_failing_models_command_raises_its_own_message():
    from segsuite_slicer import models_client

    command = models_client.ModelsCommand(["models", "remove", "no-such-model"], python=sys.executable).start()
    with pytest.raises(RuntimeError) as raised:
        command.wait(timeout=120)
    assert "no-such-model" in str(raised.value)


def test_default_input_is_the_first_readable_scalar_volume():
    scene = slicer.vtkMRMLScene()
    assert run_rules.first_input_volume(scene) is None
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    t1 = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "t1")
    assert run_rules.first_input_volume(scene) is t1
    assert run_rules.first_input_volume(scene, allow_label_map=True) is labels


@pytest.mark.parametrize("name", ["SynthSeg", "ScLimbic", "SpinalCordEPI", "SamsegBrainMask"])
def test_engine_self_tests_run_apply_and_have_no_dead_branches(name):
    """Defect 4: the self-tests had `if "":`, `for name in []:` and an always-true `if "MRHead":`."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "SegmentationSuite" / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            assert not isinstance(node.test, ast.Constant), f"constant condition at line {node.lineno}"
        if isinstance(node, ast.For):
            assert not (isinstance(node.iter, (ast.List, ast.Tuple)) and not node.iter.elts), f"empty loop at {node.lineno}"
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{name}Test")
    calls = {n.func.id for n in ast.walk(test_class) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "run_apply_self_test" in calls
    keywords = {k.arg for n in ast.walk(test_class) if isinstance(n, ast.Call) for k in n.keywords}
    assert {"expected_segments", "expected_tables"} <= keywords
