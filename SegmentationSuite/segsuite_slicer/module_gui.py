"""The widget behaviour every engine module shares (needs the Slicer GUI).

A module's Widget mixes this in before ScriptedLoadableModuleWidget (and VTKObservationMixin) and
lists its option check boxes; this class follows Slicer 5.10's scripted-module template
(Utilities/Templates/Modules/Scripted/TemplateKey.py): it loads the .ui, keeps the parameter node
and the GUI in step, observes the scene's StartCloseEvent / EndCloseEvent (closing the scene empties
the parameter node: the defaults are set again), and implements enter / exit / cleanup. Apply
becomes Cancel while the engine runs; results are shown in a layout with a table view and, for QC
scores and z-scores, a plot chart. The rules about what may be written where are in run_rules.
"""

from __future__ import annotations

import logging

import qt
import slicer
import vtk

from . import install
from .engine_run import ensure_parameter_defaults
from .run_rules import first_input_volume, flagged_scores, overwrite_question, parse_bool

log = logging.getLogger("SegmentationSuite")

DEVICES = ["auto", "cpu", "cuda"]


def default_output_base() -> str:
    """Slicer's default scene folder (in the user's documents, kept between sessions)."""
    return slicer.app.defaultScenePath


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
        self._input = None
        self.parameterNode = None

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.batchCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.inputFolderPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.outputFolderPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.currentTextChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.threadsSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.posteriorsCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.modelFolderButton.clicked.connect(self.onChooseModelFolder)
        for name in self.option_parameters:
            getattr(self.ui, f"{name}CheckBox").toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        # device, threads, posteriors and model file mean nothing to an engine without a network
        self.ui.advancedCollapsibleButton.visible = logic.network_options
        self.initializeParameterNode()

    # -- the template's life cycle ---------------------------------------------------------------
    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.runner is not None and self.logic.runner.running:
            self.logic.cancel()
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
            self.ui.outputFolderHintLabel.text = self.outputFolderHint(batch, node.GetParameter("outputFolder"))
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

    def onChooseModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model folder",
                                                     self.ui.modelPathLineEdit.currentPath)
        if folder:
            self.ui.modelPathLineEdit.currentPath = folder

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
            plan = self.logic.prepare(parameters, input_volume_node=self._input,
                                      input_folder=parameters.get("inputFolder", "") if batch else "",
                                      default_base=default_output_base())
            overwrite = False
            if plan.existing:
                if not slicer.util.confirmOkCancelDisplay(overwrite_question(plan.existing),
                                                          windowTitle=f"{self.module_name}: replace results?"):
                    self.logic.cleanup()
                    self.ui.statusLabel.text = "Nothing was run: the existing results are kept."
                    return
                overwrite = True
            self._parameters = parameters  # the run's own copy: the module may be left while it runs
            self.logic.start(parameters, plan=plan, overwrite=overwrite,
                             on_progress=self.onProgress, on_finished=self.onFinished, on_error=self.onError)
        except Exception as error:  # shown to the user; the traceback goes to the log
            log.exception("SegmentationSuite: could not start")
            if self.logic.runner is None or not self.logic.runner.running:
                self.logic.cleanup()  # the exported input, if prepare() got that far
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
                                                parameters=self._parameters)
            if nodes["segmentations"] and self._input is not None:
                slicer.util.setSliceViewerLayers(background=self._input)
            show_results(nodes)
            failures = nodes["failures"]
            flagged = [name for result in nodes["results"] for name in flagged_scores(self.logic.engine, result.qc)]
            status = "Done." if not failures else f"Done; {len(failures)} subject(s) failed (see the log)."
            if flagged:
                status += f" Flagged by QC: {', '.join(flagged)}."
            self.ui.statusLabel.text = status
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
