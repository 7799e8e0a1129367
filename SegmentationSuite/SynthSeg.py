"""SynthSeg: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process)."""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from segsuite_slicer.engine_run import EngineRunLogic, parse_bool
from segsuite_slicer.module_gui import EngineModuleWidgetMixin

ENGINE = "synthseg"


class SynthSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SynthSeg"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Segments brain MRI of any contrast and resolution into FreeSurfer's subcortical structures (and optionally cortical parcels), with volumes and QC scores. Runs SynthSeg 2.0 (robust: SynthSeg-robust). "
                                "See <a href='https://github.com/SegmentationSuite/SegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "SynthSeg: B Billot et al., Medical Image Analysis 2023 (SynthSeg) and PNAS 2023 (SynthSeg-robust). Weights: FreeSurfer licence."


class SynthSegWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "SynthSeg"
    option_parameters = ['parc', 'robust', 'fast', 'qc']
    option_defaults = {'parc': 'false', 'robust': 'false', 'fast': 'false', 'qc': 'true'}

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(SynthSegLogic())

    def cleanup(self):
        self.cleanupEngineWidget()

    def enter(self):
        self.initializeParameterNode()


class SynthSegLogic(EngineRunLogic, ScriptedLoadableModuleLogic):
    engine = ENGINE

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EngineRunLogic.__init__(self)

    def engine_options(self, parameters):
        return {"parc": parse_bool(parameters.get("parc")), "robust": parse_bool(parameters.get("robust")),
                "fast": parse_bool(parameters.get("fast")), "qc": parse_bool(parameters.get("qc"))}


class SynthSegTest(ScriptedLoadableModuleTest):
    """The whole Apply path in real Slicer: sample data -> child process -> segmentation and tables."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SynthSeg_apply()

    def test_SynthSeg_apply(self):
        from segsuite_slicer.module_gui import run_logic_synchronously

        volume = self.input_volume()
        if volume is None:
            self.delayDisplay("No sample input for this module: set SEGSUITE_TEST_INPUT to an image to test it")
            return
        logic = SynthSegLogic()
        parameters = dict(logic.default_parameters, **{'parc': 'false', 'robust': 'false', 'fast': 'false', 'qc': 'true'})
        parameters["device"] = "cpu"
        nodes = run_logic_synchronously(logic, parameters, input_volume_node=volume)
        self.assertEqual(len(nodes["segmentations"]), 1)
        segmentation = nodes["segmentations"][0].GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        for name in ['Left-Hippocampus', 'Right-Hippocampus']:
            self.assertIsNotNone(segmentation.GetSegment(name), name)
        self.assertTrue(nodes["tables"])
        self.delayDisplay("SynthSeg test passed")

    def input_volume(self):
        path = os.environ.get("SEGSUITE_TEST_INPUT")
        if path:
            return slicer.util.loadVolume(path)
        if "MRHead":
            import SampleData

            return SampleData.SampleDataLogic().downloadSample("MRHead")
        return None
