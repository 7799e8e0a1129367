"""MNI152 preprocessing (VBM): the 3D Slicer module (GUI wiring only; `segsuite preprocess` runs in its own process).

The file follows Slicer 5.10's scripted-module template (module, widget, logic, test classes); the
widget is segsuite_slicer.preprocess_gui.PreprocessWidgetMixin, the logic
segsuite_slicer.preprocess_run.PreprocessRunLogic.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from segsuite_slicer.preprocess_gui import PreprocessWidgetMixin
from segsuite_slicer.preprocess_run import PreprocessRunLogic
from segsuite_slicer.preprocess_self_test import PreprocessModuleSelfTest
from segsuite_slicer.self_test import run_test_methods


class SegmentationSuitePreprocess(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MNI152 preprocessing (VBM)"
        self.parent.categories = ["Segmentation.SegmentationSuite"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentationSuite contributors"]
        self.parent.helpText = ("Preprocesses a T1-weighted MRI with its segmentation (a SegmentationSuite segmentation or a "
                                "label map with FreeSurfer values; none: SynthSeg runs first): N4 bias correction, "
                                "registration to MNI152 (PICSL greedy), the T1w and GM/WM/CSF maps in template space, "
                                "Jacobian-modulated and smoothed maps (VBM) and MRIQC's QC values. Loads the T1w in "
                                "template space and the transform that moves the input into it. "
                                "See <a href='https://github.com/SegmentationSuite/SlicerSegmentationSuite/blob/main/docs/preprocess.md'>"
                                "the documentation</a>.")
        self.parent.acknowledgementText = ("Registration: PICSL greedy (P Yushkevich et al.). Templates: ICBM 2009 "
                                           "(V Fonov et al., NeuroImage 2011). N4: N Tustison et al., IEEE TMI 2010.")


class SegmentationSuitePreprocessWidget(PreprocessWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    module_name = "SegmentationSuitePreprocess"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # the parameter node and the scene are observed
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupEngineWidget(SegmentationSuitePreprocessLogic())


class SegmentationSuitePreprocessLogic(PreprocessRunLogic, ScriptedLoadableModuleLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        PreprocessRunLogic.__init__(self)


class SegmentationSuitePreprocessTest(PreprocessModuleSelfTest, ScriptedLoadableModuleTest):
    """ctest (the extensions factory) runs PreprocessModuleSelfTest's test_* methods: no network, pip,
    weights or registration. "Reload and Test" runs those, then a full Apply (asks before installing)."""

    module_name = "SegmentationSuitePreprocess"
    logic_class = SegmentationSuitePreprocessLogic

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.run_factory_safe_tests()
        self.setUp()
        run_test_methods(self, self.full_apply_SegmentationSuitePreprocess)  # a skip is shown as one

    def full_apply_SegmentationSuitePreprocess(self):  # not test_*: ctest must not collect it
        from segsuite_slicer.preprocess_self_test import run_preprocess_apply_self_test

        run_preprocess_apply_self_test(self, SegmentationSuitePreprocessLogic())
        self.delayDisplay("MNI152 preprocessing test passed")
