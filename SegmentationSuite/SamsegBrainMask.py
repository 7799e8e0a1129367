"""SAMSEG brain mask: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process)."""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from segsuite_slicer.engine_run import EngineRunLogic, parse_bool
from segsuite_slicer.module_gui import EngineModuleWidgetMixin

ENGINE = "samseg-filter"


class SamsegBrainMask(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAMSEG brain mask"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Turns a SAMSEG segmentation into a brain mask and a cleaned aseg (brain labels only). Uses FreeSurfer's run_samseg when installed, else the samseg package, to segment a T1 first when needed. "
                                "See <a href='https://github.com/SegmentationSuite/SegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "SAMSEG: O Puonti et al., NeuroImage 2016; FreeSurfer."


class SamsegBrainMaskWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "SamsegBrainMask"
    option_parameters = ['keepCsf']
    option_defaults = {'keepCsf': 'false'}

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(SamsegBrainMaskLogic())

    def cleanup(self):
        self.cleanupEngineWidget()

    def enter(self):
        self.initializeParameterNode()


class SamsegBrainMaskLogic(EngineRunLogic, ScriptedLoadableModuleLogic):
    engine = ENGINE

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EngineRunLogic.__init__(self)

    def engine_options(self, parameters):
        # the result's label map is the cleaned aseg; the mask follows refine_aseg (closing + hole filling)
        return {"preset": "samseg2recon" if parse_bool(parameters.get("keepCsf")) else "fmriprep"}


class SamsegBrainMaskTest(ScriptedLoadableModuleTest):
    """The whole Apply path in real Slicer: sample data -> child process -> segmentation and tables."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SamsegBrainMask_apply()

    def test_SamsegBrainMask_apply(self):
        from segsuite_slicer.module_gui import run_logic_synchronously

        volume = self.input_volume()
        if volume is None:
            self.delayDisplay("No sample input for this module: set SEGSUITE_TEST_INPUT to an image to test it")
            return
        logic = SamsegBrainMaskLogic()
        parameters = dict(logic.default_parameters, **{'keepCsf': 'false'})
        parameters["device"] = "cpu"
        nodes = run_logic_synchronously(logic, parameters, input_volume_node=volume)
        self.assertEqual(len(nodes["segmentations"]), 1)
        segmentation = nodes["segmentations"][0].GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        for name in []:
            self.assertIsNotNone(segmentation.GetSegment(name), name)
        self.assertTrue(nodes["tables"])
        self.delayDisplay("SAMSEG brain mask test passed")

    def input_volume(self):
        path = os.environ.get("SEGSUITE_TEST_INPUT")
        if path:
            return slicer.util.loadVolume(path)
        if "":
            import SampleData

            return SampleData.SampleDataLogic().downloadSample("")
        return None
