"""The widget behaviour every engine module shares (needs the Slicer GUI).

A module's Widget mixes this in before ScriptedLoadableModuleWidget and lists its option
check boxes; this class loads the .ui, keeps the parameter node and the GUI in step, turns Apply
into Cancel while the engine runs, shows progress, and reports errors in a dialog and the log.
"""

from __future__ import annotations

import logging

import qt
import slicer

from . import install
from .engine_run import parse_bool

log = logging.getLogger("SegmentationSuite")

DEVICES = ["auto", "cpu", "cuda"]


class EngineModuleWidgetMixin:
    module_name = ""
    option_parameters: list[str] = []  # parameter names; the check box is "<name>CheckBox" in the .ui
    option_defaults: dict[str, str] = {}

    def setupEngineWidget(self, logic) -> None:
        self.logic = logic
        ui_widget = slicer.util.loadUI(self.resourcePath(f"UI/{self.module_name}.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.ui.deviceComboBox.addItems(DEVICES)
        self._updating = False
        self.parameterNode = None

        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.batchCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.inputFolderPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.outputFolderPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.currentTextChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.threadsSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.posteriorsCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        for name in self.option_parameters:
            getattr(self.ui, f"{name}CheckBox").toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.initializeParameterNode()

    # -- parameter node -----------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        defaults = dict(self.logic.default_parameters, **self.option_defaults)
        for key, value in defaults.items():
            if not node.GetParameter(key):
                node.SetParameter(key, value)
        if not node.GetNodeReference("InputVolume"):
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                node.SetNodeReferenceID("InputVolume", first.GetID())
        if self.parameterNode is not None:
            self.removeObserver(self.parameterNode, 0x0, self.updateGUIFromParameterNode)
        self.parameterNode = node
        self.addObserver(node, 33, self.updateGUIFromParameterNode)  # vtkCommand::ModifiedEvent
        self.updateGUIFromParameterNode()

    def parameters(self) -> dict:
        node = self.parameterNode
        keys = list(self.logic.default_parameters) + list(self.option_parameters) + [
            "batch", "inputFolder", "outputFolder", "model"]
        return {key: node.GetParameter(key) for key in keys}

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self.parameterNode is None or self._updating:
            return
        self._updating = True
        try:
            node = self.parameterNode
            self.ui.inputVolumeSelector.setCurrentNode(node.GetNodeReference("InputVolume"))
            batch = parse_bool(node.GetParameter("batch"))
            self.ui.batchCheckBox.checked = batch
            self.ui.inputVolumeSelector.enabled = not batch
            self.ui.inputFolderPathLineEdit.enabled = batch
            self.ui.inputFolderPathLineEdit.currentPath = node.GetParameter("inputFolder")
            self.ui.outputFolderPathLineEdit.currentPath = node.GetParameter("outputFolder")
            self.ui.deviceComboBox.setCurrentText(node.GetParameter("device") or "auto")
            self.ui.threadsSpinBox.value = int(node.GetParameter("threads") or 0)
            self.ui.posteriorsCheckBox.checked = parse_bool(node.GetParameter("posteriors"))
            self.ui.modelPathLineEdit.currentPath = node.GetParameter("model")
            for name in self.option_parameters:
                getattr(self.ui, f"{name}CheckBox").checked = parse_bool(node.GetParameter(name))
            ready = bool(node.GetParameter("inputFolder")) if batch else node.GetNodeReference("InputVolume") is not None
            running = self.logic.runner is not None and self.logic.runner.running
            self.ui.applyButton.enabled = ready or running
        finally:
            self._updating = False

    def updateParameterNodeFromGUI(self, *unused) -> None:
        if self.parameterNode is None or self._updating:
            return
        node = self.parameterNode
        was_modifying = node.StartModify()
        node.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        node.SetParameter("batch", "true" if self.ui.batchCheckBox.checked else "false")
        node.SetParameter("inputFolder", self.ui.inputFolderPathLineEdit.currentPath)
        node.SetParameter("outputFolder", self.ui.outputFolderPathLineEdit.currentPath)
        node.SetParameter("device", self.ui.deviceComboBox.currentText)
        node.SetParameter("threads", str(self.ui.threadsSpinBox.value))
        node.SetParameter("posteriors", "true" if self.ui.posteriorsCheckBox.checked else "false")
        node.SetParameter("model", self.ui.modelPathLineEdit.currentPath)
        for name in self.option_parameters:
            node.SetParameter(name, "true" if getattr(self.ui, f"{name}CheckBox").checked else "false")
        node.EndModify(was_modifying)

    # -- running --------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.logic.runner is not None and self.logic.runner.running:
            self.ui.statusLabel.text = "Cancelling..."
            self.logic.cancel()
            return
        try:
            if not install.ensure_requirements(self.logic.engine):
                self.ui.statusLabel.text = "Python packages were not installed: nothing was run."
                return
            parameters = self.parameters()
            batch = parse_bool(parameters.get("batch"))
            self._input = None if batch else self.parameterNode.GetNodeReference("InputVolume")
            self.logic.start(parameters, input_volume_node=self._input,
                             input_folder=parameters.get("inputFolder", "") if batch else "",
                             on_progress=self.onProgress, on_finished=self.onFinished, on_error=self.onError)
        except Exception as error:  # shown to the user; the traceback goes to the log
            log.exception("SegmentationSuite: could not start")
            slicer.util.errorDisplay(f"Could not start: {error}")
            return
        self.ui.applyButton.text = "Cancel"
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting..."

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def _restore(self) -> None:
        self.ui.applyButton.text = "Apply"
        self.ui.progressBar.visible = False
        self.updateGUIFromParameterNode()

    def onFinished(self, output_dir: str) -> None:
        try:
            with slicer.util.WaitCursor():
                nodes = self.logic.load_results(output_dir, scene=slicer.mrmlScene, reference_volume_node=self._input,
                                                parameters=self.parameters())
            for segmentation in nodes["segmentations"]:
                if self._input is not None:
                    slicer.util.setSliceViewerLayers(background=self._input)
            if nodes["tables"]:
                selection = slicer.app.applicationLogic().GetSelectionNode()
                selection.SetActiveTableID(nodes["tables"][0].GetID())
                slicer.app.applicationLogic().PropagateTableSelection()
            failures = nodes["failures"]
            self.ui.statusLabel.text = "Done." if not failures else f"Done; {len(failures)} subject(s) failed (see the log)."
        except Exception as error:
            log.exception("SegmentationSuite: loading the results failed")
            slicer.util.errorDisplay(f"The segmentation finished but its results could not be loaded: {error}")
        finally:
            self.logic.cleanup()
            self._restore()

    def onError(self, message: str) -> None:
        self.logic.cleanup()
        self._restore()
        self.ui.statusLabel.text = message
        if message != "Cancelled.":
            log.error("SegmentationSuite %s: %s", self.module_name, message)
            slicer.util.errorDisplay(message, windowTitle=f"{self.module_name} failed")

    def cleanupEngineWidget(self) -> None:
        if self.logic is not None and self.logic.runner is not None and self.logic.runner.running:
            self.logic.cancel()
        self.removeObservers()


def run_logic_synchronously(logic, parameters: dict, input_volume_node=None, input_folder: str = "",
                            timeout: float = 3600.0):
    """For self-tests and scripts: run the engine in its process and load the results; returns the nodes."""
    import time

    outcome: dict = {}
    logic.start(parameters, input_volume_node=input_volume_node, input_folder=input_folder,
                on_finished=lambda folder: outcome.update(folder=folder),
                on_error=lambda message: outcome.update(error=message), use_timer=False)
    deadline = time.monotonic() + timeout
    while logic.poll_once():
        slicer.app.processEvents()
        if time.monotonic() > deadline:
            logic.cancel()
            raise RuntimeError("the engine did not finish in time")
        time.sleep(0.05)
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    try:
        return logic.load_results(outcome["folder"], scene=slicer.mrmlScene, reference_volume_node=input_volume_node,
                                  parameters=parameters)
    finally:
        logic.cleanup()
