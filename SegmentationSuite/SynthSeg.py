"""SynthSeg: the 3D Slicer module (GUI wiring only; the engine runs in segsuite, in its own process).

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

ENGINE = "synthseg"


class SynthSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SynthSeg"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Segments brain MRI of any contrast and resolution into FreeSurfer's subcortical structures (and optionally cortical parcels), with volumes and QC scores. Runs SynthSeg 2.0 (robust: SynthSeg-robust). "
                                "See <a href='https://github.com/SegmentationSuite/SlicerSegmentationSuite'>the documentation</a>.")
        self.parent.acknowledgementText = "SynthSeg: B Billot et al., Medical Image Analysis 2023 (SynthSeg) and PNAS 2023 (SynthSeg-robust). Weights: FreeSurfer licence."


class SynthSegWidget(EngineModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "SynthSeg"
    option_parameters = ['parc', 'robust', 'fast', 'qc']
    option_defaults = {'parc': 'false', 'robust': 'false', 'fast': 'false', 'qc': 'true'}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # the parameter node and the scene are observed
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(SynthSegLogic())


class SynthSegLogic(EngineRunLogic, ScriptedLoadableModuleLogic):
    engine = ENGINE

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EngineRunLogic.__init__(self)

    def engine_options(self, parameters):
        return {"parc": parse_bool(parameters.get("parc")), "robust": parse_bool(parameters.get("robust")),
                "fast": parse_bool(parameters.get("fast")), "qc": parse_bool(parameters.get("qc"))}


class SynthSegTest(EngineModuleSelfTest, ScriptedLoadableModuleTest):
    """ctest (the extensions factory) runs EngineModuleSelfTest's test_* methods: no network, pip or
    weights. "Reload and Test" runs those, then the full Apply on real input (asks before installing)."""

    module_name = "SynthSeg"
    logic_class = SynthSegLogic

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.run_factory_safe_tests()
        self.setUp()
        run_test_methods(self, self.full_apply_SynthSeg)  # a skip is shown as one, not as "Test failed."

    def full_apply_SynthSeg(self):  # not test_*: ctest must not collect it
        from segsuite_slicer.self_test import run_apply_self_test, sample_volume

        volume = sample_volume("MRHead")
        run_apply_self_test(self, SynthSegLogic(), {"qc": "true", "device": "cpu"}, volume,
                            expected_segments=["Left-Hippocampus", "Right-Hippocampus", "Left-Lateral-Ventricle"],
                            expected_tables=["volumes", "QC"], expected_charts=1)
        self.delayDisplay("SynthSeg test passed")
