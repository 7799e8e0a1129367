"""The widget behaviour every engine module shares (needs the Slicer GUI).

A module's Widget mixes this in before ScriptedLoadableModuleWidget (and VTKObservationMixin) and
lists its option check boxes; this class follows Slicer 5.10's scripted-module template
(Utilities/Templates/Modules/Scripted/TemplateKey.py): it loads the .ui, keeps the parameter node
and the GUI in step, observes the scene's StartCloseEvent / EndCloseEvent (closing the scene empties
the parameter node: the defaults are set again), and implements enter / exit / cleanup. Apply
becomes Cancel while the engine runs; results are shown in a layout with a table view and, for QC
scores and z-scores, a plot chart. The rules about what may be written where, and what a run's end
means, are in run_rules; the run's lifetime (scene close, cleanup, application exit) is the logic's.
"""

from __future__ import annotations

import logging

import qt
import slicer
import vtk

from . import install
from .engine_run import ensure_parameter_defaults
from .model_info import model_info_html
from .run_rules import (apply_button_state, failure_lines, finished_status, first_input_volume, flagged_scores,
                        overwrite_question, parse_bool)

log = logging.getLogger("SegmentationSuite")

DEVICES = ["auto", "cpu", "cuda"]
SHOW_3D_SETTING = "SegmentationSuite/Show3D"  # remembered between sessions, as a user preference
INSTALL_STATUS = ("Checking the Python packages SegmentationSuite needs; a first-use install downloads them "
                  "and can take several minutes (pip's output is in the Python console)...")


def default_output_base() -> str:
    """Slicer's default scene folder (in the user's documents, kept between sessions)."""
    return slicer.app.defaultScenePath


class EngineModuleWidgetMixin:
    module_name = ""
    option_parameters: list[str] = []  # parameter names; the check box is "<name>CheckBox" in the .ui
    option_defaults: dict[str, str] = {}
    other_parameters = ("batch", "inputFolder", "outputFolder", "model", "gpu")  # kept beside the logic's defaults

    def setupEngineWidget(self, logic) -> None:
        self.setupRunWidget(logic)
        self.ui.deviceComboBox.addItems(DEVICES)
        self._output_segmentation = None
        self.ui.show3DCheckBox.checked = parse_bool(qt.QSettings().value(SHOW_3D_SETTING, "false"))
        self.ui.batchCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.inputFolderPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.currentTextChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.gpuSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.outputSegmentationSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.show3DCheckBox.toggled.connect(self.onShow3DToggled)
        self.ui.posteriorsCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.modelFolderButton.clicked.connect(self.onChooseModelFolder)
        # device, threads, posteriors and model file mean nothing to an engine without a network
        self.ui.advancedCollapsibleButton.visible = logic.network_options
        self.initializeParameterNode()

    def setupRunWidget(self, logic) -> None:
        """What every module that runs segsuite in its own process has: its .ui, the scene observers,
        the input volume, output folder, threads and option check boxes, Apply and the log."""
        self.logic = logic
        ui_widget = slicer.util.loadUI(self.resourcePath(f"UI/{self.module_name}.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self._updating = False
        self._installing = False
        self._input = None
        self.parameterNode = None
        self.logic.on_log = self.appendLog

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.outputFolderPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.threadsSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        for name in self.option_parameters:
            getattr(self.ui, f"{name}CheckBox").toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.applyButton.clicked.connect(self.onApplyButton)

    # -- the template's life cycle ---------------------------------------------------------------
    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def cleanup(self) -> None:
        """Slicer calls this when the module is unloaded, which includes the application's exit:
        the run is stopped and its exported input deleted before this returns."""
        if self.logic is not None:
            self.logic.stop("the module was closed", wait=True)
        self.setParameterNode(None)
        self.removeObservers()

    def onSceneStartClose(self, caller=None, event=None) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller=None, event=None) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ---------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        ensure_parameter_defaults(node, dict(self.logic.default_parameters, **self.option_defaults))
        if not node.GetNodeReference("InputVolume"):
            first = first_input_volume(slicer.mrmlScene, allow_label_map=self.logic.accepts_label_maps)
            if first is not None:
                node.SetNodeReferenceID("InputVolume", first.GetID())
        self.setParameterNode(node)

    def setParameterNode(self, node) -> None:
        """Observe ``node`` (or nothing); the observer removed is exactly the one added."""
        if self.parameterNode is not None:
            self.removeObserver(self.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def parameters(self) -> dict:
        node = self.parameterNode
        keys = list(self.logic.default_parameters) + list(self.option_parameters) + list(self.other_parameters)
        return {key: node.GetParameter(key) for key in keys}

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self.parameterNode is None or self._updating:
            return
        self._updating = True
        try:
            node = self.parameterNode
            self.ui.inputVolumeSelector.setCurrentNode(node.GetNodeReference("InputVolume"))
            # ctkPathLineEdit emits currentPathChanged on every keystroke; writing the same text back
            # (QLineEdit::setText) would move the cursor to the end: only a different path is written.
            set_path_if_changed(self.ui.outputFolderPathLineEdit, node.GetParameter("outputFolder"))
            self.ui.threadsSpinBox.value = int(node.GetParameter("threads") or 0)
            for name in self.option_parameters:
                getattr(self.ui, f"{name}CheckBox").checked = parse_bool(node.GetParameter(name))
            self.showModuleParameters(node)
            self.updateApplyButton()
        finally:
            self._updating = False

    def showModuleParameters(self, node) -> None:
        """The GUI of the engine's own parameters: batch, output segmentation, device, model."""
        batch = parse_bool(node.GetParameter("batch"))
        self.ui.batchCheckBox.checked = batch
        self.ui.inputVolumeSelector.enabled = not batch
        self.ui.inputFolderPathLineEdit.enabled = batch
        self.ui.outputSegmentationSelector.setCurrentNode(node.GetNodeReference("OutputSegmentation"))
        self.ui.outputSegmentationSelector.enabled = not batch  # a batch loads tables only
        set_path_if_changed(self.ui.inputFolderPathLineEdit, node.GetParameter("inputFolder"))
        self.ui.outputFolderHintLabel.text = self.outputFolderHint(batch, node.GetParameter("outputFolder"))
        device = node.GetParameter("device") or "auto"
        self.ui.deviceComboBox.setCurrentText(device)
        self.ui.gpuSpinBox.value = int(node.GetParameter("gpu") or 0)
        self.ui.gpuSpinBox.enabled = device == "cuda"
        self.ui.posteriorsCheckBox.checked = parse_bool(node.GetParameter("posteriors"))
        set_path_if_changed(self.ui.modelPathLineEdit, node.GetParameter("model"))
        self.updateModelInfo()

    def updateApplyButton(self) -> None:
        node = self.parameterNode
        ready = False
        if node is not None:
            batch = parse_bool(node.GetParameter("batch"))
            ready = bool(node.GetParameter("inputFolder")) if batch else node.GetNodeReference("InputVolume") is not None
        running = self.logic.runner is not None and self.logic.runner.running
        self.ui.applyButton.enabled, self.ui.applyButton.text = apply_button_state(ready, running, self._installing)

    def updateModelInfo(self) -> None:
        try:
            # a model file reaches only engines with network options (build_arguments drops it otherwise)
            explicit_model = self.parameterNode.GetParameter("model") if self.logic.network_options else ""
            text = model_info_html(self.logic.engine, self.logic.engine_options(self.parameters()),
                                   explicit_model=explicit_model)
        except Exception as error:  # the model box must never break the module
            text = f"Model information is not available: {error}"
        self.ui.modelInfoBrowser.setHtml(text)

    def outputFolderHint(self, batch: bool, chosen: str) -> str:
        from .run_rules import default_batch_output_folder

        if chosen:
            return f"Results are kept in {chosen} (one folder per subject)."
        if batch:
            return f"Batch results go to {default_batch_output_folder(self.logic.engine, default_output_base())}."
        return "Results are loaded into the scene (no folder chosen: nothing is kept on disk)."

    def updateParameterNodeFromGUI(self, *unused) -> None:
        if self.parameterNode is None or self._updating:
            return
        node = self.parameterNode
        was_modifying = node.StartModify()
        node.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        node.SetParameter("outputFolder", self.ui.outputFolderPathLineEdit.currentPath)
        node.SetParameter("threads", str(self.ui.threadsSpinBox.value))
        for name in self.option_parameters:
            node.SetParameter(name, "true" if getattr(self.ui, f"{name}CheckBox").checked else "false")
        self.storeModuleParameters(node)
        node.EndModify(was_modifying)

    def storeModuleParameters(self, node) -> None:
        """The engine's own controls into the parameter node (see showModuleParameters)."""
        node.SetParameter("batch", "true" if self.ui.batchCheckBox.checked else "false")
        node.SetParameter("inputFolder", self.ui.inputFolderPathLineEdit.currentPath)
        node.SetParameter("device", self.ui.deviceComboBox.currentText)
        node.SetParameter("gpu", str(self.ui.gpuSpinBox.value))
        node.SetNodeReferenceID("OutputSegmentation", self.ui.outputSegmentationSelector.currentNodeID)
        node.SetParameter("posteriors", "true" if self.ui.posteriorsCheckBox.checked else "false")
        node.SetParameter("model", self.ui.modelPathLineEdit.currentPath)

    def onChooseModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model folder",
                                                     self.ui.modelPathLineEdit.currentPath)
        if folder:
            self.ui.modelPathLineEdit.currentPath = folder

    def onShow3DToggled(self, checked: bool) -> None:
        qt.QSettings().setValue(SHOW_3D_SETTING, "true" if checked else "false")
        node = self._output_segmentation
        if node is not None and slicer.mrmlScene.IsNodePresent(node):
            from .mrml import show_segmentation_in_3d

            show_segmentation_in_3d(node, checked)

    def appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    # -- running --------------------------------------------------------------------------------
    def requiredEngines(self) -> list[str]:
        """The install.ENGINES whose packages an Apply needs."""
        return [self.logic.engine]

    def ensureRequirements(self) -> bool:
        """The first-use install, with Apply disabled: on Slicer 5.10 pip_install processes events
        for each line pip prints (slicer.util.logProcessOutput, v5.10.0), so Apply stays clickable."""
        self._installing = True
        self.updateApplyButton()
        self.ui.statusLabel.text = INSTALL_STATUS
        slicer.app.processEvents()  # show the status before pip or the PyTorch download starts
        try:
            return all(install.ensure_requirements(engine) for engine in self.requiredEngines())
        finally:
            self._installing = False
            self.updateApplyButton()

    def preparePlan(self, parameters: dict):
        """Remember the run's input and output nodes and let the logic export the input (RunPlan)."""
        batch = parse_bool(parameters.get("batch"))
        self._input = None if batch else self.parameterNode.GetNodeReference("InputVolume")
        self._output_segmentation = None if batch else self.parameterNode.GetNodeReference("OutputSegmentation")
        return self.logic.prepare(parameters, input_volume_node=self._input,
                                  input_folder=parameters.get("inputFolder", "") if batch else "",
                                  default_base=default_output_base())

    def onApplyButton(self) -> None:
        if self._installing:
            return  # a click queued during the install
        if self.logic.runner is not None and self.logic.runner.running:
            self.ui.statusLabel.text = "Cancelling..."
            self.logic.cancel()
            return
        try:
            if not self.ensureRequirements():
                self.ui.statusLabel.text = "Python packages were not installed: nothing was run."
                return
            parameters = self.parameters()
            plan = self.preparePlan(parameters)
            overwrite = False
            if plan.existing:
                if not slicer.util.confirmOkCancelDisplay(overwrite_question(plan.existing),
                                                          windowTitle=f"{self.module_name}: replace results?"):
                    self.logic.cleanup()
                    self.ui.statusLabel.text = "Nothing was run: the existing results are kept."
                    return
                overwrite = True
            self._parameters = parameters  # the run's own copy: the module may be left while it runs
            self.ui.logTextEdit.clear()
            self.logic.start(parameters, plan=plan, overwrite=overwrite, scene=slicer.mrmlScene,
                             on_progress=self.onProgress, on_finished=self.onFinished, on_error=self.onError)
        except Exception as error:  # shown to the user; the traceback goes to the log
            log.exception("SegmentationSuite: could not start")
            if self.logic.runner is None or not self.logic.runner.running:
                self.logic.cleanup()  # the exported input, if prepare() got that far
            slicer.util.errorDisplay(f"Could not start: {error}")
            return
        self.updateApplyButton()
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting..."

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def _restore(self) -> None:
        self.ui.progressBar.visible = False
        self.updateGUIFromParameterNode()
        self.updateApplyButton()

    def onFinished(self, output_dir: str) -> None:
        try:
            scene = slicer.mrmlScene
            # nodes of the scene the run started in only (a closed scene stops the run; this is the second guard)
            reference = self._input if self._input is not None and scene.IsNodePresent(self._input) else None
            output = self._output_segmentation
            output = output if output is not None and scene.IsNodePresent(output) else None
            with slicer.util.WaitCursor():
                nodes = self.logic.load_results(output_dir, scene=scene, reference_volume_node=reference,
                                                parameters=self._parameters, output_segmentation_node=output)
                if nodes["segmentations"]:
                    self._output_segmentation = nodes["segmentations"][0]
                    if self.ui.show3DCheckBox.checked:
                        from .mrml import show_segmentation_in_3d

                        show_segmentation_in_3d(self._output_segmentation, True)
            if nodes["segmentations"] and reference is not None:
                slicer.util.setSliceViewerLayers(background=reference)
            show_results(nodes)
            failures = nodes["failures"]
            for line in failure_lines(failures):
                log.warning("SegmentationSuite %s: %s", self.module_name, line)
                self.appendLog(f"FAILED {line}")
            flagged = [name for result in nodes["results"] for name in flagged_scores(self.logic.engine, result.qc)]
            self.ui.statusLabel.text = finished_status(failures, flagged)
        except Exception as error:
            log.exception("SegmentationSuite: loading the results failed")
            slicer.util.errorDisplay(f"The segmentation finished but its results could not be loaded: {error}")
        finally:
            self.logic.cleanup()
            self._restore()

    def onError(self, message: str) -> None:
        """Cancelled, stopped (scene closed) or failed: see the logic's outcome; only a failure is a dialog."""
        self.logic.cleanup()
        self._restore()
        self.ui.statusLabel.text = message
        outcome = self.logic.outcome
        if outcome is None or outcome.kind == "failed":
            log.error("SegmentationSuite %s: %s", self.module_name, message)
            slicer.util.errorDisplay(message, windowTitle=f"{self.module_name} failed")


def set_path_if_changed(path_line_edit, path: str) -> None:
    """Write ``path`` into a ctkPathLineEdit only when it differs from what the field shows."""
    if path_line_edit.currentPath != (path or ""):
        path_line_edit.currentPath = path or ""


def show_results(nodes: dict) -> None:
    """A layout with a table view showing the first table (as SegmentStatistics.showTable does at
    v5.10.0), then the first chart in a layout with a plot view when there is one."""
    layout_manager = slicer.app.layoutManager()
    if nodes.get("tables"):
        layout_manager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layout_manager.layout))
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(nodes["tables"][0].GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
    if nodes.get("charts"):
        slicer.modules.plots.logic().ShowChartInLayout(nodes["charts"][0])


def run_logic_synchronously(logic, parameters: dict, input_volume_node=None, input_folder: str = "",
                            timeout: float = 3600.0, plan=None):
    """For self-tests and scripts: run the engine in its process and load the results; returns the nodes.
    ``plan``: what the logic's prepare gave (made here from the input when None)."""
    import time

    outcome: dict = {}
    logic.start(parameters, input_volume_node=input_volume_node, input_folder=input_folder, plan=plan,
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
