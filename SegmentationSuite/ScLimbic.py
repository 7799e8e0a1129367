"""ScLimbic: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process)."""

import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from segsuite_slicer.engine_run import EngineRunLogic, parse_bool
from segsuite_slicer.module_gui import EngineModuleWidgetMixin

ENGINE = "sclimbic"


class ScLimbic(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ScLimbic"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Segments the subcortical limbic structures (nucleus accumbens, hypothalamus, fornix, mammillary bodies, basal forebrain, septal nuclei) on T1-weighted MRI, with volumes, z-scores and confidences (FreeSurfer mri_sclimbic_seg). "
                                "See <a href='https://github.com/SegmentationSuite/SegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "ScLimbic: DN Greve et al., NeuroImage 2021. Weights: FreeSurfer licence."


class ScLimbicWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "ScLimbic"
    option_parameters = ['etiv', 'keepAc', 'voxelCountVolumes', 'conform']
    option_defaults = {'etiv': 'false', 'keepAc': 'false', 'voxelCountVolumes': 'false', 'conform': 'false'}

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(ScLimbicLogic())

    def cleanup(self):
        self.cleanupEngineWidget()

    def enter(self):
        self.initializeParameterNode()


class ScLimbicLogic(EngineRunLogic, ScriptedLoadableModuleLogic):
    engine = ENGINE

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EngineRunLogic.__init__(self)

    def engine_options(self, parameters):
        # eTIV by registration to the ICBM152 template (no talairach transform inside Slicer)
        return {"etiv": "register" if parse_bool(parameters.get("etiv")) else None, "keep_ac": parse_bool(parameters.get("keepAc")),
                "vox_count_volumes": parse_bool(parameters.get("voxelCountVolumes")),
                "conform": parse_bool(parameters.get("conform"))}


class ScLimbicTest(ScriptedLoadableModuleTest):
    """The whole Apply path in real Slicer: sample data -> child process -> segmentation and tables."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ScLimbic_apply()

    def test_ScLimbic_apply(self):
        from segsuite_slicer.module_gui import run_logic_synchronously

        volume = self.input_volume()
        if volume is None:
            self.delayDisplay("No sample input for this module: set SEGSUITE_TEST_INPUT to an image to test it")
            return
        logic = ScLimbicLogic()
        parameters = dict(logic.default_parameters, **{'etiv': 'false', 'keepAc': 'false', 'voxelCountVolumes': 'false', 'conform': 'false'})
        parameters["device"] = "cpu"
        nodes = run_logic_synchronously(logic, parameters, input_volume_node=volume)
        self.assertEqual(len(nodes["segmentations"]), 1)
        segmentation = nodes["segmentations"][0].GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        for name in ['Left-Fornix', 'Right-Fornix']:
            self.assertIsNotNone(segmentation.GetSegment(name), name)
        self.assertTrue(nodes["tables"])
        self.delayDisplay("ScLimbic test passed")

    def input_volume(self):
        path = os.environ.get("SEGSUITE_TEST_INPUT")
        if path:
            return slicer.util.loadVolume(path)
        if "MRHead":
            import SampleData

            return SampleData.SampleDataLogic().downloadSample("MRHead")
        return None
