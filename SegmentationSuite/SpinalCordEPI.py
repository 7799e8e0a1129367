"""Spinal cord EPI: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process)."""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from segsuite_slicer.engine_run import EngineRunLogic, parse_bool
from segsuite_slicer.module_gui import EngineModuleWidgetMixin

ENGINE = "scepi"


class SpinalCordEPI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Spinal cord EPI"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Segments the spinal cord on gradient-echo EPI (fMRI) images with the Spinal Cord Toolbox sc_epi nnU-Net model (EPISeg). "
                                "See <a href='https://github.com/SegmentationSuite/SegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "EPISeg: R Banerjee et al., Imaging Neuroscience 2025; Spinal Cord Toolbox (De Leener et al. 2017). Model: MIT licence."


class SpinalCordEPIWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "SpinalCordEPI"
    option_parameters = ['largest', 'fillHoles', 'testTimeAugmentation']
    option_defaults = {'largest': 'false', 'fillHoles': 'false', 'testTimeAugmentation': 'false'}

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(SpinalCordEPILogic())

    def cleanup(self):
        self.cleanupEngineWidget()

    def enter(self):
        self.initializeParameterNode()


class SpinalCordEPILogic(EngineRunLogic, ScriptedLoadableModuleLogic):
    engine = ENGINE

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EngineRunLogic.__init__(self)

    def engine_options(self, parameters):
        return {"keep_largest": parse_bool(parameters.get("largest")), "fill_holes": parse_bool(parameters.get("fillHoles")),
                "test_time_augmentation": parse_bool(parameters.get("testTimeAugmentation"))}


class SpinalCordEPITest(ScriptedLoadableModuleTest):
    """The whole Apply path in real Slicer: sample data -> child process -> segmentation and tables."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SpinalCordEPI_apply()

    def test_SpinalCordEPI_apply(self):
        from segsuite_slicer.module_gui import run_logic_synchronously

        volume = self.input_volume()
        if volume is None:
            self.delayDisplay("No sample input for this module: set SEGSUITE_TEST_INPUT to an image to test it")
            return
        logic = SpinalCordEPILogic()
        parameters = dict(logic.default_parameters, **{'largest': 'false', 'fillHoles': 'false', 'testTimeAugmentation': 'false'})
        parameters["device"] = "cpu"
        nodes = run_logic_synchronously(logic, parameters, input_volume_node=volume)
        self.assertEqual(len(nodes["segmentations"]), 1)
        segmentation = nodes["segmentations"][0].GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        for name in []:
            self.assertIsNotNone(segmentation.GetSegment(name), name)
        self.assertTrue(nodes["tables"])
        self.delayDisplay("Spinal cord EPI test passed")

    def input_volume(self):
        path = os.environ.get("SEGSUITE_TEST_INPUT")
        if path:
            return slicer.util.loadVolume(path)
        if "":
            import SampleData

            return SampleData.SampleDataLogic().downloadSample("")
        return None
