"""The MNI152 preprocessing module's self-tests (the pattern of self_test.py).

The ``test_*`` methods are what ctest runs (factory-safe: only what Slicer bundles, SimpleITK
included; no network, pip, templates or registration): the widget and its parameter node, the
loader on small outputs written here with sMRIPrep's names (a T1w and a modulated GM map in
"template space", an ITK .h5 transform whose shift is known, the QC record), and the run rules
(command line, wrong settings, what a run's end means). ``runTest`` then runs a full Apply
(``run_preprocess_apply_self_test``), refused in testing mode.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import numpy as np

from .self_test import EngineModuleSelfTest
from .testing_mode import refuse_in_testing

SMALL_SHIFT_RAS = (3.0, -2.0, 5.0)  # mm: the small outputs' T1w -> template transform is this translation
SMALL_METRICS = {"tpm_overlap_gm": 0.52, "tpm_overlap_wm": 0.61, "inu_range": 0.123}


def make_small_preprocess_outputs(folder: str, prefix: str = "factory-test", space: Optional[str] = None,
                                  fwhm: float = 8.0) -> dict:
    """The files the loader reads, as `segsuite preprocess` names them, written with SimpleITK."""
    import SimpleITK as sitk

    from segsuite.preprocess import itk
    from segsuite.preprocess.subject import output_paths
    from segsuite.preprocess.templates import NLIN2009A

    os.makedirs(folder, exist_ok=True)
    paths = output_paths(folder, prefix, space or NLIN2009A, fwhm)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -24.0, -16.0]
    shape = (20, 24, 16)
    t1 = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    gm = np.zeros(shape, dtype=np.float32)
    gm[5:15, 6:18, 4:12] = 0.75
    sitk.WriteImage(itk.to_sitk(t1, affine), paths["template_preproc"])
    sitk.WriteImage(itk.to_sitk(gm, affine), paths["modulated_GM"])
    # ITK's resampling transform maps template points into the T1w: here p -> p + shift (RAS)
    shift = np.eye(4)
    shift[:3, 3] = SMALL_SHIFT_RAS
    sitk.WriteTransform(itk.affine_transform(itk.ras_to_lps_matrix(shift)), paths["forward_xfm"])
    with open(paths["metrics"], "w", encoding="utf-8") as handle:
        json.dump({"metrics": SMALL_METRICS, "provenance": {"template": space or NLIN2009A}}, handle)
    return dict(paths, t1_array=t1, gm_array=gm, affine=affine)


def preprocessed_node_problems(nodes: dict, space: str) -> list[str]:
    """What is wrong with the nodes one preprocessing Apply made (empty when all is right)."""
    problems = []
    volume, transform = nodes.get("volume"), nodes.get("transform")
    if volume is None or volume.GetImageData() is None:
        problems.append("no template-space T1w volume node")
    elif f"space-{space}" not in volume.GetName():
        problems.append(f"the volume {volume.GetName()!r} does not name the space {space}")
    if transform is None or transform.GetTransformFromParent() is None:
        problems.append("no transform node holding the T1w -> template transform")
    for name in ("tpm_overlap_gm", "tpm_overlap_wm"):
        value = nodes.get("metrics", {}).get(name)
        if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            problems.append(f"QC value {name} is {value!r}, not in (0, 1]")
    if "tpm_overlap_gm" not in nodes.get("status", ""):
        problems.append(f"the status line {nodes.get('status')!r} does not show the QC values")
    return problems


def check_preprocess_loader_on_small_outputs(test_case, scene=None) -> dict:
    """The loader on small outputs: the T1w and GM on their grid, the transform moving points by the
    known shift, the input placed under it, the QC line."""
    from segsuite.preprocess.templates import NLIN2009A

    from . import mrml
    from .preprocess_run import load_preprocessed

    with tempfile.TemporaryDirectory() as folder:
        small = make_small_preprocess_outputs(folder)
        native = mrml.add_volume_node(np.ones((4, 4, 4), np.float32), np.eye(4), "factory-test T1w", scene=scene)
        nodes = load_preprocessed(small, NLIN2009A, scene=scene, name="factory-test", input_volume_node=native)
    problems = preprocessed_node_problems(nodes, NLIN2009A)
    test_case.assertEqual(problems, [], "; ".join(problems))
    for key, array in (("volume", small["t1_array"]), ("modulated_gm", small["gm_array"])):
        loaded, affine = mrml.array_affine_from_volume_node(nodes[key])
        test_case.assertTrue(np.array_equal(loaded, array), f"the {key} voxels differ from the file's")
        test_case.assertTrue(np.allclose(affine, small["affine"], atol=1e-5), f"the {key} is not on the file's grid")
    point = np.array([10.0, -4.0, 7.0])
    moved = nodes["transform"].GetTransformFromParent().TransformPoint(tuple(point))
    test_case.assertTrue(np.allclose(moved, point + SMALL_SHIFT_RAS, atol=1e-4), f"{moved} is not {point} shifted")
    test_case.assertEqual(native.GetParentTransformNode(), nodes["transform"])
    test_case.assertIn("tpm_overlap_gm 0.520", nodes["status"])
    return nodes


def check_preprocess_run_rules(test_case, logic) -> None:
    """The command line an Apply builds, one-line errors for wrong settings, what the end means."""
    from .preprocess_run import check_preprocess_parameters, preprocess_arguments, preprocess_outcome
    from .run_rules import choose_output_folder

    parameters = dict(logic.default_parameters, resolution="2", fwhm="6.5", threads="3")
    arguments = preprocess_arguments("/w/sub-01_T1w.nii.gz", "/w/seg/seg.nii.gz", "/out", parameters)
    test_case.assertEqual(arguments[:5], ["preprocess", "--i", "/w/sub-01_T1w.nii.gz", "--seg", "/w/seg/seg.nii.gz"])
    for flag, value in (("--o", "/out"), ("--prefix", "sub-01"), ("--resolution", "2"), ("--fwhm", "6.5"),
                        ("--threads", "3")):
        test_case.assertEqual(arguments[arguments.index(flag) + 1], value)
    test_case.assertNotIn("--template", arguments)                          # auto: the command's own choice
    without = preprocess_arguments("/w/t1.nii.gz", "", "/out", dict(logic.default_parameters))
    test_case.assertFalse({"--seg", "--threads"} & set(without))            # no segmentation: SynthSeg first
    for wrong in ({"fwhm": "-3"}, {"fwhm": "eight"}, {"resolution": "3"}, {"template": "Talairach"},
                  {"registration": "rigid"}, {"threads": "-1"}):
        with test_case.assertRaises(ValueError):
            check_preprocess_parameters(dict(logic.default_parameters, **wrong))
    with test_case.assertRaises(ValueError):                                  # one volume, never a folder
        logic.prepare(dict(logic.default_parameters), input_folder="/data")
    with test_case.assertRaises(ValueError):
        logic.prepare(dict(logic.default_parameters))
    with tempfile.TemporaryDirectory() as folder:
        written = os.path.join(folder, "a.nii.gz")
        test_case.assertEqual(preprocess_outcome(0, [written]).kind, "failed")  # exit 0 without the files
        open(written, "w").close()
        test_case.assertEqual(preprocess_outcome(0, [written]).kind, "done")
        test_case.assertEqual(preprocess_outcome(1, [written], "no brain voxel").message, "no brain voxel")
        test_case.assertEqual(preprocess_outcome(-15, [written], cancelled=True).kind, "cancelled")
        with test_case.assertRaises(ValueError):                              # never into the work folder
            choose_output_folder(False, os.path.join(folder, "kept"), folder, logic.engine)


def check_preprocess_widget_and_parameter_node(test_case, module_name: str) -> None:
    """The module and its widget load; combo boxes, FWHM and check boxes follow the parameter node
    and back; a scene close brings the defaults back; Apply is enabled only with an input."""
    import slicer

    from . import mrml
    from .preprocess_gui import COMBO_PARAMETERS
    from .run_rules import parse_bool

    slicer.util.selectModule(module_name)
    widget = slicer.util.getModuleWidget(module_name)
    node, ui = widget.parameterNode, widget.ui
    defaults = dict(widget.logic.default_parameters, **widget.option_defaults)
    for parameter, combo, _ in COMBO_PARAMETERS:
        test_case.assertEqual((node.GetParameter(parameter), getattr(ui, combo).currentText),
                              (defaults[parameter], defaults[parameter]))
    ui.templateComboBox.setCurrentText(COMBO_PARAMETERS[0][2][-1])           # GUI -> parameter node
    test_case.assertEqual(node.GetParameter("template"), COMBO_PARAMETERS[0][2][-1])
    ui.fwhmSpinBox.value = 6.5
    test_case.assertEqual(node.GetParameter("fwhm"), "6.5")
    for name in widget.option_parameters:
        box = getattr(ui, f"{name}CheckBox")
        box.checked = not box.checked
        test_case.assertEqual(node.GetParameter(name), "true" if box.checked else "false")
    node.SetParameter("resolution", "2")                                      # parameter node -> GUI
    test_case.assertEqual(ui.resolutionComboBox.currentText, "2")
    node.SetParameter("threads", "3")
    test_case.assertEqual(ui.threadsSpinBox.value, 3)
    slicer.mrmlScene.Clear()                                                  # the defaults come back
    node = widget.parameterNode
    for name, value in defaults.items():
        test_case.assertEqual(node.GetParameter(name), value)
    for name in widget.option_parameters:
        test_case.assertEqual(getattr(ui, f"{name}CheckBox").checked, parse_bool(defaults[name]))
    test_case.assertFalse(ui.applyButton.enabled)                             # no input yet
    volume = mrml.add_volume_node(np.zeros((4, 4, 4), np.int16), np.eye(4), "factory-test input")
    node.SetNodeReferenceID("InputVolume", volume.GetID())
    test_case.assertTrue(ui.applyButton.enabled)


def run_preprocess_apply_self_test(test_case, logic) -> dict:
    """A full Apply: SynthSeg, then the preprocessing at 2 mm, on the volume SEGSUITE_TEST_INPUT names
    or Slicer's MRHead. Refused in testing mode: it installs packages and downloads weights and data."""
    from . import install
    from .module_gui import run_logic_synchronously
    from .self_test import sample_volume

    refuse_in_testing("run the full preprocessing self-test (network, Python packages, model weights)")
    volume = sample_volume("MRHead")
    for engine in ("synthseg", logic.engine):
        if not install.ensure_requirements(engine, ask=True):
            test_case.fail("the Apply test did not run: installing its Python packages was declined")
    parameters = dict(logic.default_parameters, resolution="2", loadModulatedGM="true")
    plan = logic.prepare(parameters, input_volume_node=volume)
    nodes = run_logic_synchronously(logic, parameters, input_volume_node=volume, plan=plan)
    problems = preprocessed_node_problems(nodes, logic.space)
    test_case.assertEqual(problems, [], "; ".join(problems))
    return nodes


class PreprocessModuleSelfTest(EngineModuleSelfTest):
    """The three factory-safe test_* methods, for the preprocessing module's widget and logic."""

    def test_module_widget_and_parameter_node(self):
        check_preprocess_widget_and_parameter_node(self, self.module_name)

    def test_adapters_on_a_small_result(self):
        check_preprocess_loader_on_small_outputs(self)

    def test_run_rules(self):
        check_preprocess_run_rules(self, self.logic_class())
