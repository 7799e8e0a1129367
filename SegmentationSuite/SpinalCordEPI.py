"""Spinal cord EPI: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process).

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

ENGINE = "scepi"


class SpinalCordEPI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Spinal cord EPI"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Segments the spinal cord on gradient-echo EPI (fMRI) images with the Spinal Cord Toolbox sc_epi nnU-Net model (EPISeg). "
                                "See <a href='https://github.com/SegmentationSuite/SlicerSegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "EPISeg: R Banerjee et al., Imaging Neuroscience 2025; Spinal Cord Toolbox (De Leener et al. 2017). Model: MIT licence."


class SpinalCordEPIWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "SpinalCordEPI"
    option_parameters = ['largest', 'fillHoles', 'testTimeAugmentation']
    option_defaults = {'largest': 'false', 'fillHoles': 'false', 'testTimeAugmentation': 'false'}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # the parameter node and the scene are observed
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(SpinalCordEPILogic())


class SpinalCordEPILogic(EngineRunLogic, ScriptedLoadableModuleLogic):
    engine = ENGINE

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EngineRunLogic.__init__(self)

    def engine_options(self, parameters):
        return {"keep_largest": parse_bool(parameters.get("largest")), "fill_holes": parse_bool(parameters.get("fillHoles")),
                "test_time_augmentation": parse_bool(parameters.get("testTimeAugmentation"))}


class SpinalCordEPITest(EngineModuleSelfTest, ScriptedLoadableModuleTest):
    """ctest (the extensions factory) runs EngineModuleSelfTest's test_* methods: no network, pip or
    weights. "Reload and Test" runs those, then the full Apply on real input (asks before installing)."""

    module_name = "SpinalCordEPI"
    logic_class = SpinalCordEPILogic

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.run_factory_safe_tests()
        self.setUp()
        run_test_methods(self, self.full_apply_SpinalCordEPI)  # a skip is shown as one, not as "Test failed."

    def full_apply_SpinalCordEPI(self):  # not test_*: ctest must not collect it
        from segsuite_slicer.self_test import run_apply_self_test, sample_volume

        volume = sample_volume(environment_variable="SEGSUITE_TEST_SCEPI_INPUT")
        if volume is None:  # no spinal-cord EPI in Slicer's sample data
            self.skipTest("set SEGSUITE_TEST_SCEPI_INPUT to a 3D spinal-cord EPI volume to run this test")
        run_apply_self_test(self, SpinalCordEPILogic(), {"device": "cpu"}, volume,
                            expected_segments=["Spinal-Cord"], expected_tables=["volumes"])
        self.delayDisplay("Spinal cord EPI test passed")
