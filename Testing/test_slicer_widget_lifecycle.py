"""The shared engine widget's parameter-node life cycle on a real MRML scene (slicer-core) with
stand-in widgets (no Qt here): scene close keeps the defaults (QC stays on), observers are removed
exactly (VTKObservationMixin does not warn), and GUI <-> parameter node stay in step."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types
import warnings

import numpy as np

import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class Widget:
    """Just the members module_gui uses; a change emits the signals the real widgets emit."""

    def __init__(self):
        self.enabled, self.visible, self.text, self.value = True, True, "", 0
        self._checked, self.currentText, self.currentNodeID = False, "", None
        self.html, self.lines, self.clicks = "", [], 0
        for name in ("toggled", "clicked", "currentNodeChanged", "currentPathChanged", "currentTextChanged",
                     "valueChanged"):
            setattr(self, name, Signal())

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        changed = bool(value) != self._checked
        self._checked = bool(value)
        if changed:
            self.toggled.emit(self._checked)

    def click(self):
        """QAbstractButton::click: a disabled button emits nothing."""
        if self.enabled:
            self.clicks += 1
            self.clicked.emit()

    def setCurrentNode(self, node):
        self.currentNodeID = node.GetID() if node is not None else None

    def setCurrentText(self, text):
        self.currentText = text

    def isHidden(self):
        return not self.visible

    def addItems(self, items):
        self.items = list(items)

    def setMRMLScene(self, scene):
        self.scene = scene

    def setHtml(self, html):
        self.html = html

    def appendPlainText(self, line):
        self.lines.append(line)

    def clear(self):
        self.lines = []


class PathLineEdit(Widget):
    """ctkPathLineEdit as at CTK dd4caeae (Libs/Widgets/ctkPathLineEdit.cpp): currentPath is its
    QLineEdit's text; setCurrentPath is QLineEdit::setText (cursor to the end; textChanged only when
    the text differs); every textChanged runs updateHasValidInput, which emits currentPathChanged."""

    def __init__(self):
        super().__init__()
        self._text, self.cursor = "", 0

    @property
    def currentPath(self):
        return self._text

    @currentPath.setter
    def currentPath(self, text):
        changed = text != self._text
        self._text, self.cursor = text, len(text)
        if changed:
            self.currentPathChanged.emit(self._text)

    def type(self, characters, at=None):
        """The user types at a cursor position (QLineEdit::insert: the cursor follows the text)."""
        if at is not None:
            self.cursor = at
        self._text = self._text[:self.cursor] + characters + self._text[self.cursor:]
        self.cursor += len(characters)
        self.currentPathChanged.emit(self._text)


class Settings:
    """qt.QSettings with one store per test (values come back as strings, as from an .ini file)."""

    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = str(value)


class Timer:
    def __init__(self):
        self.timeout = Signal()

    def setInterval(self, msec):
        pass

    def start(self):
        pass

    def stop(self):
        pass


PATH_FIELDS = ["inputFolderPathLineEdit", "outputFolderPathLineEdit", "modelPathLineEdit"]
UI_NAMES = ["inputVolumeSelector", "batchCheckBox", "outputFolderHintLabel", "deviceComboBox", "gpuSpinBox",
            "threadsSpinBox", "posteriorsCheckBox", "modelFolderButton", "applyButton", "progressBar", "statusLabel",
            "outputSegmentationSelector", "show3DCheckBox", "modelInfoBrowser", "logTextEdit",
            "advancedCollapsibleButton", "parcCheckBox", "robustCheckBox", "fastCheckBox", "qcCheckBox"]


def singleton_parameter_node(scene, tag: str):
    """What ScriptedLoadableModuleLogic.getParameterNode does at v5.10.0."""
    node = scene.GetSingletonNode(tag, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(tag)
        node = scene.AddNode(node)
    return node


class StandInWidget(slicer.util.VTKObservationMixin):
    """What ScriptedLoadableModuleWidget gives a module widget here: parent (entered), layout, resourcePath."""

    def __init__(self):
        slicer.util.VTKObservationMixin.__init__(self)
        self.parent = types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)
        self.logic = None

    def resourcePath(self, path):
        return path


@pytest.fixture
def widget(monkeypatch, tmp_path, request):
    qt = types.ModuleType("qt")
    qt.QSettings, qt.QTimer = Settings, Timer
    Settings.store = {}
    monkeypatch.setitem(sys.modules, "qt", qt)
    sys.modules.pop("segsuite_slicer.module_gui", None)
    from segsuite_slicer.engine_run import EngineRunLogic
    from segsuite_slicer.module_gui import EngineModuleWidgetMixin
    from segsuite_slicer.run_rules import parse_bool

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    app = types.SimpleNamespace(defaultScenePath=str(tmp_path / "docs"), events=[])
    app.processEvents = lambda: [handler() for handler in list(app.events)]
    monkeypatch.setattr(slicer, "app", app, raising=False)
    ui = types.SimpleNamespace(**{name: Widget() for name in UI_NAMES}, **{name: PathLineEdit() for name in PATH_FIELDS})
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: Widget(), raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui, raising=False)

    class Logic(EngineRunLogic):
        engine = "synthseg"
        network_options = getattr(request, "param", True)  # False: an engine without a network (SAMSEG filter)

        def engine_options(self, parameters):  # as SynthSeg.py's logic
            return {name: parse_bool(parameters.get(name)) for name in ("parc", "robust", "fast", "qc")}

        def getParameterNode(self):
            return singleton_parameter_node(scene, "SynthSeg")

    class SynthSegLikeWidget(EngineModuleWidgetMixin, StandInWidget):
        module_name = "SynthSeg"
        option_parameters = ["parc", "robust", "fast", "qc"]
        option_defaults = {"parc": "false", "robust": "false", "fast": "false", "qc": "true"}

    made = SynthSegLikeWidget()
    made.setupEngineWidget(Logic())
    made.ui, made.scene = ui, scene
    yield made
    made.cleanup()  # as Slicer does when the application closes


def test_scene_close_keeps_qc_on_and_observers_balanced(widget):
    ui, scene = widget.ui, widget.scene
    assert widget.parameterNode.GetParameter("qc") == "true" and ui.qcCheckBox.checked
    ui.parcCheckBox.checked = True  # a user's choice reaches the parameter node
    assert widget.parameterNode.GetParameter("parc") == "true"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # VTKObservationMixin warns "does not have observer"
        widget.enter()
        widget.exit()
        widget.enter()
        scene.Clear(0)  # StartCloseEvent, reset of the singleton, EndCloseEvent
        widget.exit()
        widget.enter()
        widget.cleanup()
        widget.enter()
    assert widget.parameterNode.GetParameter("qc") == "true" and ui.qcCheckBox.checked
    assert widget.parameterNode.GetParameter("parc") == "false" and not ui.parcCheckBox.checked
    # The GUI follows the node, and the batch default folder is shown.
    widget.parameterNode.SetParameter("batch", "true")
    assert ui.batchCheckBox.checked and ui.inputFolderPathLineEdit.enabled and not ui.inputVolumeSelector.enabled
    assert "docs/SegmentationSuite/synthseg" in ui.outputFolderHintLabel.text


def test_scene_close_reaches_the_widget(widget):
    ui, scene = widget.ui, widget.scene
    widget.parameterNode.SetParameter("qc", "false")
    assert not ui.qcCheckBox.checked
    scene.Clear(0)
    # After the close the defaults are back, in the node and in the GUI.
    assert widget.parameterNode.GetParameter("qc") == "true" and ui.qcCheckBox.checked


def test_the_old_removal_with_event_0_warns(widget):
    """What the old code did: removeObserver(node, 0x0, ...) for an observer added for event 33."""
    with pytest.warns(UserWarning, match="does not have observer"):
        widget.removeObserver(widget.parameterNode, 0x0, widget.updateGUIFromParameterNode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        widget.setParameterNode(None)  # the observer added for ModifiedEvent is still there, and goes


@pytest.mark.parametrize("widget", [True, False], indirect=True, ids=["network", "no-network"])
def test_the_self_tests_widget_check_passes_on_real_mrml(widget, monkeypatch):
    """segsuite_slicer.self_test.check_widget_and_parameter_node (what ctest runs inside Slicer)
    on this widget: the GUI and the parameter node follow each other, a scene close brings the
    defaults back, Apply needs an input; Advanced (device, threads, posteriors, model) is hidden
    for an engine without a network (issue 29, defect 4)."""
    import unittest

    from segsuite_slicer import self_test

    monkeypatch.setattr(slicer.util, "selectModule", lambda name: None, raising=False)
    monkeypatch.setattr(slicer.util, "getModuleWidget", lambda name: widget, raising=False)
    assert widget.ui.advancedCollapsibleButton.isHidden() is (not widget.logic.network_options)
    self_test.check_widget_and_parameter_node(unittest.TestCase(), "SynthSeg")
    widget.ui.advancedCollapsibleButton.visible = not widget.ui.advancedCollapsibleButton.visible
    with pytest.raises(AssertionError):  # the check sees a wrongly shown (or hidden) Advanced section
        self_test.check_widget_and_parameter_node(unittest.TestCase(), "SynthSeg")


# ----------------------------------------------------------------------------- issue 29: the widget's runs

HELPERS = __import__("pathlib").Path(__file__).resolve().parent / "helpers"
AFFINE = np.array([[-1.0, 0, 0, 5], [0, 0, 1.0, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])


@pytest.fixture
def running(widget, monkeypatch):
    """The widget with Apply's Slicer-only calls recorded, and the fake engine (Testing/helpers) as its engine."""
    from segsuite_slicer import install, module_gui

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]))
    seen = {"errors": [], "background": [], "shown": []}
    monkeypatch.setattr(install, "ensure_requirements", lambda engine, ask=True: True)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: seen["errors"].append(text), raising=False)
    monkeypatch.setattr(slicer.util, "WaitCursor", contextlib.nullcontext, raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: seen["background"].append(kw), raising=False)
    monkeypatch.setattr(module_gui, "show_results", lambda nodes: seen["shown"].append(nodes))
    widget.logic.engine = "fake_engine:FakeEngine"
    widget.engine_options = {}
    widget.logic.engine_options = lambda parameters: widget.engine_options
    widget.seen = seen
    logic = slicer.vtkSlicerSegmentationsModuleLogic()  # registers the closed-surface converter, as Slicer's startup does
    logic.SetMRMLScene(widget.scene)
    widget.segmentations_logic = logic
    return widget


def _volume(scene, name="T1", seed=0):
    from segsuite_slicer import mrml

    data = np.random.default_rng(seed).random((10, 9, 8)).astype(np.float32)
    return mrml.add_volume_node(data, AFFINE, name, scene=scene)


def _finish(widget, timeout=120.0):
    deadline = time.monotonic() + timeout
    while widget.logic.poll_once():
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.05)


def _wait_for_progress(widget, timeout=60.0):
    deadline = time.monotonic() + timeout
    while widget.logic.runner.fraction <= 0.0:
        widget.logic.poll_once()
        assert time.monotonic() < deadline, "no progress arrived"
        time.sleep(0.05)


def test_typing_inside_a_path_keeps_the_cursor(widget):
    """Defect 6: each keystroke went to the node, whose observer wrote the same text back: the cursor jumped."""
    field = widget.ui.outputFolderPathLineEdit
    field.type("/data/out")
    assert widget.parameterNode.GetParameter("outputFolder") == "/data/out"
    field.type("2", at=len("/data"))
    assert field.currentPath == "/data2/out" and field.cursor == len("/data2")
    field.type("x")  # the next character lands after the "2", not at the end
    assert field.currentPath == "/data2x/out"
    assert widget.parameterNode.GetParameter("outputFolder") == "/data2x/out"
    widget.parameterNode.SetParameter("outputFolder", "/elsewhere")  # a script or a scene load still reaches the field
    assert field.currentPath == "/elsewhere"


def test_apply_is_disabled_and_a_status_shown_during_the_first_use_install(widget, monkeypatch):
    """Defect 7: Slicer 5.10's pip_install runs slicer.util.logProcessOutput, which calls
    slicer.app.processEvents() for each line pip prints (Base/Python/slicer/util.py, v5.10.0): a click
    on Apply then is handled inside the install and started a second one."""
    from segsuite_slicer import install

    widget.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1")
    widget.initializeParameterNode()
    ui, installs, seen_during = widget.ui, [], []
    assert ui.applyButton.enabled

    def user_clicks_apply_again():
        seen_during.append((ui.applyButton.enabled, ui.statusLabel.text))
        if len(seen_during) <= 3:  # a few impatient clicks (bounded: the old code recursed on each)
            ui.applyButton.click()

    def pip_install_as_on_5_10(engine, ask=True):
        installs.append(engine)
        for _line in range(3):  # three lines of pip output, each followed by processEvents()
            slicer.app.processEvents()
        return False  # the user declined: nothing runs

    monkeypatch.setattr(install, "ensure_requirements", pip_install_as_on_5_10)
    slicer.app.events.append(user_clicks_apply_again)
    ui.applyButton.click()
    slicer.app.events.clear()
    assert installs == ["synthseg"]
    assert seen_during and all(not enabled and "first-use install" in status for enabled, status in seen_during)
    assert ui.applyButton.enabled and ui.applyButton.text == "Apply"
    assert ui.statusLabel.text == "Python packages were not installed: nothing was run."


def test_a_batch_with_one_failed_subject_loads_the_others(running, tmp_path):
    """Defect 3: run-engine writes the good subjects and exits 1; the GUI loaded nothing and showed an error."""
    import nibabel as nib

    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate(("sub-01", "sub-02", "sub-03")):
        nib.save(nib.Nifti1Image(np.random.default_rng(index).random((10, 9, 8)).astype(np.float32), AFFINE),
                 str(folder / f"{name}.nii.gz"))
    running.engine_options = {"fail_on": "sub-02"}
    node = running.parameterNode
    node.SetParameter("batch", "true")
    node.SetParameter("inputFolder", str(folder))
    node.SetParameter("outputFolder", str(tmp_path / "out"))
    running.ui.applyButton.click()
    _finish(running)
    assert running.logic.runner.returncode == 1
    assert running.seen["errors"] == []
    assert running.ui.statusLabel.text == "Done; 1 subject(s) failed (see the log)."
    tables = running.seen["shown"][0]["tables"]
    assert tables[0].GetNumberOfRows() == 2  # sub-01 and sub-03
    assert any(line.startswith("FAILED sub-02: cannot segment sub-02") for line in running.ui.logTextEdit.lines)
    assert any("sub-03" in line for line in running.ui.logTextEdit.lines)  # the engine's own lines are in the log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "sub-01", "sub-03"]


def test_a_chosen_folders_manifest_is_replaced_only_after_asking(running, tmp_path, monkeypatch):
    """Defect 11: run-engine replaced <output folder>/manifest.json without asking."""
    import json

    out = tmp_path / "out"
    out.mkdir()
    theirs = '{"dataset": "not ours"}'
    (out / "manifest.json").write_text(theirs)
    questions, answers = [], [False, True]
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, **kw: questions.append(text) or answers.pop(0), raising=False)
    volume = _volume(running.scene)
    running.parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())
    running.parameterNode.SetParameter("outputFolder", str(out))
    running.ui.applyButton.click()  # the user says Cancel
    assert str(out / "manifest.json") in questions[0]
    assert running.logic.runner is None and (out / "manifest.json").read_text() == theirs
    assert running.ui.statusLabel.text == "Nothing was run: the existing results are kept."
    running.ui.applyButton.click()  # the user agrees
    _finish(running)
    assert running.ui.statusLabel.text == "Done."
    assert json.loads((out / "manifest.json").read_text())["results"][0]["subject"] == "T1"


def test_closing_the_scene_stops_the_run_and_loads_nothing(running):
    """Defect 5: the run went on and its results loaded into the new scene, the background set by a
    node ID that vtkMRMLScene::Clear had reset."""
    scene = running.scene
    volume = _volume(scene)
    running.parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())
    running.engine_options = {"steps": 100, "delay": 0.1}  # 10 s unless stopped
    running.ui.applyButton.click()
    work = running.logic.work_dir
    assert running.ui.applyButton.text == "Cancel" and os.path.isdir(work)
    _wait_for_progress(running)
    scene.Clear(0)
    started = time.monotonic()
    _finish(running, timeout=60)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert time.monotonic() - started < 8  # stopped, not run to its end
    assert running.seen["background"] == [] and running.seen["shown"] == [] and running.seen["errors"] == []
    assert running.ui.statusLabel.text.startswith("Stopped: the scene was closed")
    assert running.logic.runner.process.poll() is not None and not os.path.exists(work)
    assert running.ui.applyButton.text == "Apply"


def test_cleanup_at_application_exit_stops_the_run_and_deletes_the_exported_input(running):
    """Defect 12: Slicer's exit reaches the widget as cleanup() (qSlicerCoreApplication::onAboutToQuit ->
    unloadModules -> moduleAboutToBeUnloaded -> ScriptedLoadableModuleWidget._onModuleAboutToBeUnloaded,
    v5.10.0); the run was only asked to stop in a thread and the exported patient image stayed in /tmp."""
    volume = _volume(running.scene)
    running.parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())
    running.engine_options = {"steps": 200, "delay": 0.1}
    running.ui.applyButton.click()
    work = running.logic.work_dir
    exported = [name for name in os.listdir(work) if name.endswith(".nii.gz")]
    assert exported == ["T1.nii.gz"]
    _wait_for_progress(running)
    started = time.monotonic()
    running.cleanup()
    assert time.monotonic() - started < 20
    assert running.logic.runner.process.poll() is not None  # gone when cleanup returns
    assert not os.path.exists(work)
    assert running.seen["shown"] == [] and running.seen["errors"] == []


def test_output_segmentation_is_replaced_in_place_and_shown_in_3d(running):
    """UX: the chosen output segmentation keeps its node, display node and segment IDs; Show 3D makes
    the closed surface (as qMRMLSegmentationShow3DButton does) and is remembered."""
    from segsuite_slicer import module_gui

    scene = running.scene
    volume = _volume(scene)
    running.parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())
    running.ui.applyButton.click()  # first run: a new segmentation node
    _finish(running)
    assert running.ui.statusLabel.text == "Done."
    first = running.seen["shown"][-1]["segmentations"][0]
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    first.GetSegmentation().GetSegment("Left-Hippocampus").SetColor(0.0, 0.0, 1.0)  # the user's choices
    display = first.GetDisplayNode()
    display.SetSegmentOpacity3D("Left-Hippocampus", 0.25)
    first.GetSegmentation().AddEmptySegment("user-notes", "user-notes")
    running.ui.outputSegmentationSelector.currentNodeID = first.GetID()
    running.ui.outputSegmentationSelector.currentNodeChanged.emit(first)
    assert running.parameterNode.GetNodeReference("OutputSegmentation") is first
    running.ui.show3DCheckBox.checked = True
    assert Settings.store[module_gui.SHOW_3D_SETTING] == "true"
    running.ui.applyButton.click()  # second run: replaces the content of that node
    _finish(running)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    again = running.seen["shown"][-1]["segmentations"][0]
    assert again is first and again.GetDisplayNode() is display
    ids = list(again.GetSegmentation().GetSegmentIDs())
    assert sorted(ids) == ["Left-Hippocampus", "Right-Hippocampus"]  # the result's; "user-notes" is not a result label
    assert again.GetSegmentation().GetSegment("Left-Hippocampus").GetColor() == (0.0, 0.0, 1.0)
    assert display.GetSegmentOpacity3D("Left-Hippocampus") == 0.25
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert again.GetSegmentation().ContainsRepresentation(surface)
    assert display.GetPreferredDisplayRepresentationName3D() == surface
    assert again.GetClosedSurfaceInternalRepresentation("Left-Hippocampus").GetNumberOfPoints() > 0
    running.ui.show3DCheckBox.checked = False  # the 3D surface goes, as with Slicer's button
    assert not again.GetSegmentation().ContainsRepresentation(surface)
    assert Settings.store[module_gui.SHOW_3D_SETTING] == "false"


def test_show_3d_is_remembered_between_sessions(widget):
    from segsuite_slicer import module_gui

    assert not widget.ui.show3DCheckBox.checked
    widget.ui.show3DCheckBox.checked = True
    assert Settings.store[module_gui.SHOW_3D_SETTING] == "true"
    widget.cleanup()
    widget.ui.show3DCheckBox._checked = False  # a new session's widget, set up from the settings
    widget.setupEngineWidget(widget.logic)
    assert widget.ui.show3DCheckBox.checked


def test_device_choice_with_the_cuda_index_reaches_the_command(widget):
    ui = widget.ui
    ui.deviceComboBox.currentText = "cuda"
    ui.deviceComboBox.currentTextChanged.emit("cuda")
    ui.gpuSpinBox.value = 1
    ui.gpuSpinBox.valueChanged.emit(1)
    assert ui.gpuSpinBox.enabled
    parameters = widget.parameters()
    assert (parameters["device"], parameters["gpu"]) == ("cuda", "1")
    arguments = widget.logic.build_arguments(["in.nii.gz"], "out", parameters)
    assert arguments[arguments.index("--device") + 1] == "cuda:1"
    ui.deviceComboBox.currentText = "cpu"
    ui.deviceComboBox.currentTextChanged.emit("cpu")
    assert not ui.gpuSpinBox.enabled
    arguments = widget.logic.build_arguments(["in.nii.gz"], "out", widget.parameters())
    assert arguments[arguments.index("--device") + 1] == "cpu"


def test_model_box_follows_the_options(widget):
    ui = widget.ui
    assert "SynthSeg 2.0" in ui.modelInfoBrowser.html and "FreeSurfer Software License" in ui.modelInfoBrowser.html
    assert "Billot" in ui.modelInfoBrowser.html and "synthseg-qc-2.0" in ui.modelInfoBrowser.html
    ui.robustCheckBox.checked = True
    assert "synthseg-robust-2.0" in ui.modelInfoBrowser.html and "(synthseg-2.0," not in ui.modelInfoBrowser.html


@pytest.mark.parametrize("widget", [True, False], indirect=True, ids=["network", "no-network"])
def test_model_box_names_a_chosen_model_file_only_where_it_is_used(widget):
    """A model file left in the parameter node (a saved scene) reaches no engine without network
    options (the SAMSEG filter: Advanced hidden, no --model), so its model box must not claim it."""
    widget.parameterNode.SetParameter("model", "/models/mine.pt")
    claimed = "/models/mine.pt" in widget.ui.modelInfoBrowser.html
    assert claimed is widget.logic.network_options
    arguments = widget.logic.build_arguments(["in.nii.gz"], "out", widget.parameters())
    assert ("--model" in arguments) is widget.logic.network_options
