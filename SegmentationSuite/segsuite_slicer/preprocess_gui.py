"""The MNI152 preprocessing module's widget (needs the Slicer GUI).

It is an engine module's widget (module_gui.EngineModuleWidgetMixin: parameter node, scene-close
observers, enter / exit / cleanup, Apply becomes Cancel, progress and log) with its own inputs and
options: a T1w volume, an optional segmentation or label map (none: SynthSeg runs first in the
child), the template, grid, FWHM, registration and threads of `segsuite preprocess`, and an output
folder. A finished run loads the T1w in template space, the transform and optionally the modulated
GM map (preprocess_run.PreprocessRunLogic.load_results) and shows the QC values in the status line.
"""

from __future__ import annotations

import logging

import slicer

from .module_gui import EngineModuleWidgetMixin, default_output_base
from .preprocess_run import REGISTRATION_CHOICES, RESOLUTION_CHOICES, TEMPLATE_CHOICES

log = logging.getLogger("SegmentationSuite")

# (parameter, combo box) pairs: the parameter node keeps the combo box's text
COMBO_PARAMETERS = (("template", "templateComboBox", TEMPLATE_CHOICES),
                    ("resolution", "resolutionComboBox", RESOLUTION_CHOICES),
                    ("registration", "registrationComboBox", REGISTRATION_CHOICES))


class PreprocessWidgetMixin(EngineModuleWidgetMixin):
    option_parameters = ["loadModulatedGM", "inputUnderTransform"]
    option_defaults = {"loadModulatedGM": "true", "inputUnderTransform": "false"}
    other_parameters = ("outputFolder",)

    def setupEngineWidget(self, logic) -> None:
        self.setupRunWidget(logic)
        self._segmentation = None
        for _, combo, choices in COMBO_PARAMETERS:
            getattr(self.ui, combo).addItems(list(choices))
            getattr(self.ui, combo).currentTextChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.segmentationSelector.currentNodeChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.fwhmSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.initializeParameterNode()

    def showModuleParameters(self, node) -> None:
        self.ui.segmentationSelector.setCurrentNode(node.GetNodeReference("InputSegmentation"))
        self.ui.outputFolderHintLabel.text = self.outputFolderHint(False, node.GetParameter("outputFolder"))
        for parameter, combo, _ in COMBO_PARAMETERS:
            getattr(self.ui, combo).setCurrentText(node.GetParameter(parameter))
        self.ui.fwhmSpinBox.value = float(node.GetParameter("fwhm") or 0)

    def storeModuleParameters(self, node) -> None:
        node.SetNodeReferenceID("InputSegmentation", self.ui.segmentationSelector.currentNodeID)
        for parameter, combo, _ in COMBO_PARAMETERS:
            node.SetParameter(parameter, getattr(self.ui, combo).currentText)
        node.SetParameter("fwhm", f"{self.ui.fwhmSpinBox.value:g}")

    def outputFolderHint(self, batch: bool, chosen: str) -> str:
        if chosen:
            return f"The outputs (sMRIPrep names, docs/preprocess.md) are kept in {chosen}."
        return "No folder chosen: the results are loaded into the scene and the files deleted."

    def requiredEngines(self) -> list[str]:
        """Without a segmentation SynthSeg runs first in the child: its packages (PyTorch) are needed too."""
        if self.parameterNode.GetNodeReference("InputSegmentation") is None:
            return ["synthseg", self.logic.engine]
        return [self.logic.engine]

    def preparePlan(self, parameters: dict):
        self._input = self.parameterNode.GetNodeReference("InputVolume")
        self._segmentation = self.parameterNode.GetNodeReference("InputSegmentation")
        return self.logic.prepare(parameters, input_volume_node=self._input, default_base=default_output_base(),
                                  segmentation_node=self._segmentation)

    def onFinished(self, output_dir: str) -> None:
        try:
            scene = slicer.mrmlScene
            reference = self._input if self._input is not None and scene.IsNodePresent(self._input) else None
            with slicer.util.WaitCursor():
                nodes = self.logic.load_results(output_dir, scene=scene, reference_volume_node=reference,
                                                parameters=self._parameters)
            slicer.util.setSliceViewerLayers(background=nodes["volume"], foreground=nodes.get("modulated_gm"),
                                             foregroundOpacity=0.4, fit=True)
            self.ui.statusLabel.text = nodes["status"]
            self.appendLog(nodes["status"])
        except Exception as error:
            log.exception("SegmentationSuite: loading the preprocessing results failed")
            slicer.util.errorDisplay(f"The preprocessing finished but its results could not be loaded: {error}")
        finally:
            self.logic.cleanup()
            self._restore()
