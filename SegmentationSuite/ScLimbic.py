"""ScLimbic: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process).

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

ENGINE = "sclimbic"


class ScLimbic(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ScLimbic"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Segments the subcortical limbic structures (nucleus accumbens, hypothalamus, fornix, mammillary bodies, basal forebrain, septal nuclei) on T1-weighted MRI, with volumes, z-scores and confidences (FreeSurfer mri_sclimbic_seg). "
                                "See <a href='https://github.com/SegmentationSuite/SlicerSegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "ScLimbic: DN Greve et al., NeuroImage 2021. Weights: FreeSurfer licence."


class ScLimbicWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "ScLimbic"
    option_parameters = ['etiv', 'keepAc', 'voxelCountVolumes', 'conform']
    option_defaults = {'etiv': 'false', 'keepAc': 'false', 'voxelCountVolumes': 'false', 'conform': 'false'}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # the parameter node and the scene are observed
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(ScLimbicLogic())


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


class ScLimbicTest(EngineModuleSelfTest, ScriptedLoadableModuleTest):
    """ctest (the extensions factory) runs EngineModuleSelfTest's test_* methods: no network, pip or
    weights. "Reload and Test" runs those, then the full Apply on real input (asks before installing)."""

    module_name = "ScLimbic"
    logic_class = ScLimbicLogic

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.run_factory_safe_tests()
        self.setUp()
        run_test_methods(self, self.full_apply_ScLimbic)  # a skip is shown as one, not as "Test failed."

    def full_apply_ScLimbic(self):  # not test_*: ctest must not collect it
        from segsuite_slicer.self_test import run_apply_self_test, sample_volume

        volume = sample_volume("MRHead")
        run_apply_self_test(self, ScLimbicLogic(), {"device": "cpu"}, volume,
                            expected_segments=["Left-Fornix", "Right-Fornix"],
                            expected_tables=["volumes", "QC"], expected_charts=1)
        self.delayDisplay("ScLimbic test passed")
