"""SAMSEG brain mask: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process).

The file follows Slicer 5.10's scripted-module template (module, widget, logic, test classes); the
widget behaviour all engine modules share (parameter node, scene-close observers, enter / exit /
cleanup, Apply / Cancel, showing results) is segsuite_slicer.module_gui.EngineModuleWidgetMixin.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from segsuite_slicer.engine_run import EngineRunLogic, parse_bool
from segsuite_slicer.module_gui import EngineModuleWidgetMixin
from segsuite_slicer.self_test import EngineModuleSelfTest, run_test_methods

ENGINE = "samseg-filter"


class SamsegBrainMask(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAMSEG brain mask"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Turns a SAMSEG segmentation (the label map SAMSEG wrote, e.g. seg.mgz, not an MRI image) into a brain mask and a cleaned aseg (brain labels only). It runs no network and needs no PyTorch. "
                                "See <a href='https://github.com/SegmentationSuite/SlicerSegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "SAMSEG: O Puonti et al., NeuroImage 2016; FreeSurfer."


class SamsegBrainMaskWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "SamsegBrainMask"
    option_parameters = ['keepCsf']
    option_defaults = {'keepCsf': 'false'}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # the parameter node and the scene are observed
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(SamsegBrainMaskLogic())


class SamsegBrainMaskLogic(EngineRunLogic, ScriptedLoadableModuleLogic):
    engine = ENGINE
    accepts_label_maps = True  # a SAMSEG segmentation may be loaded as a label map
    network_options = False  # a label filter: no device, threads, posteriors or model

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EngineRunLogic.__init__(self)

    def engine_options(self, parameters):
        # the result's label map is the cleaned aseg; the mask follows refine_aseg (closing + hole filling)
        return {"preset": "samseg2recon" if parse_bool(parameters.get("keepCsf")) else "fmriprep"}


class SamsegBrainMaskTest(EngineModuleSelfTest, ScriptedLoadableModuleTest):
    """ctest (the extensions factory) runs EngineModuleSelfTest's test_* methods: no network, pip or
    weights. "Reload and Test" runs those, then the full Apply on real input (asks before installing)."""

    module_name = "SamsegBrainMask"
    logic_class = SamsegBrainMaskLogic

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.run_factory_safe_tests()
        self.setUp()
        run_test_methods(self, self.full_apply_SamsegBrainMask)  # a skip is shown as one, not as "Test failed."

    def full_apply_SamsegBrainMask(self):  # not test_*: ctest must not collect it
        from segsuite_slicer.self_test import run_apply_self_test, sample_volume

        from segsuite_slicer.self_test import SAMSEG_REMOVED, make_samseg_volume

        # A SAMSEG segmentation given by environment, else one the test makes with every removed label.
        volume = sample_volume(environment_variable="SEGSUITE_TEST_SAMSEG_INPUT") or make_samseg_volume()
        run_apply_self_test(self, SamsegBrainMaskLogic(), {"device": "cpu"}, volume,
                            expected_segments=["Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter"],
                            forbidden_segments=SAMSEG_REMOVED, expected_tables=["volumes", "QC"],
                            expected_measures=["BrainMask", "RemovedLabels"])
        self.delayDisplay("SAMSEG brain mask test passed")
