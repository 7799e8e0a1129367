"""What every module's ScriptedLoadableModuleTest does and checks, written once.

Two kinds of self-test (the pattern of SlicerTotalSegmentator, whose ctest-run test leaves the
logic out):
- ``EngineModuleSelfTest``'s ``test_*`` methods are what ctest runs: the extensions factory
  registers each module file with ``slicer_add_python_unittest`` and runs it as
  ``Slicer --testing`` + ``slicer.testing.runUnitTest`` (CMake/SlicerMacroPythonTesting.cmake,
  v5.10.0 and v5.12.3), whose unittest loader collects the ``test*`` methods. They need nothing
  Slicer does not bundle, no network, pip or weights: the module and its widget load, the GUI and
  the parameter node follow each other (scene close included), the MRML adapters turn a small
  result the test makes into nodes, and the run rules hold for the module's own logic.
- ``runTest`` is what "Reload and Test" calls (ScriptedLoadableModule.py, v5.10.0 / v5.12.3):
  those checks, then the module's full Apply (``run_apply_self_test``), which installs what is
  missing only after the user agreed, downloads the sample data and weights, and runs the engine.
  In testing mode it is refused (testing_mode.refuse_in_testing), never half run.

``apply_problems``, ``make_samseg_volume`` and the ``check_*`` functions below the GUI ones need
only MRML (pytest runs them on slicer-core nodes); the rest need the Slicer application.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

from .testing_mode import refuse_in_testing

# A tiny SAMSEG-like segmentation: two hemispheres of white matter and cortex, CSF, skull,
# extra-cerebral head and eye fluid (the labels the filter removes), on a 1 mm grid.
SAMSEG_TEST_LABELS = {2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 41: "Right-Cerebral-White-Matter",
                      42: "Right-Cerebral-Cortex", 24: "CSF", 165: "Skull", 258: "Head-ExtraCerebral", 259: "Eye-Fluid"}
SAMSEG_REMOVED = ("CSF", "Skull", "Head-ExtraCerebral", "Eye-Fluid")


def samseg_test_labels(shape=(40, 44, 36)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int16)
    centre = np.array(shape) / 2.0
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    radius = np.linalg.norm((grid - centre) / (np.array(shape) / 2.0), axis=-1)
    left = grid[..., 0] < centre[0]
    labels[radius < 0.95] = 258
    labels[radius < 0.85] = 165
    labels[radius < 0.75] = 24
    labels[(radius < 0.7) & left] = 3
    labels[(radius < 0.7) & ~left] = 42
    labels[(radius < 0.5) & left] = 2
    labels[(radius < 0.5) & ~left] = 41
    labels[2:6, 30:34, 4:8] = 259
    return labels


def make_samseg_volume(scene=None, name: str = "samseg-test seg"):
    """A scalar volume node holding ``samseg_test_labels`` (1 mm, RAS)."""
    from . import mrml

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20.0, -22.0, -18.0]
    return mrml.add_volume_node(samseg_test_labels(), affine, name, scene=scene)


def table_column_names(table_node) -> list[str]:
    table = table_node.GetTable()
    return [table.GetColumn(index).GetName() for index in range(table.GetNumberOfColumns())]


def apply_problems(nodes: dict, expected_segments: Iterable[str] = (), forbidden_segments: Iterable[str] = (),
                   expected_tables: Iterable[str] = (), expected_measures: Iterable[str] = (),
                   expected_charts: int = 0) -> list[str]:
    """What is wrong with the nodes one Apply made (empty when all is right).

    ``expected_tables`` are name endings ("volumes", "QC"); every table must have rows; the
    volumes table's volumes must be positive; ``expected_measures`` must be rows of the QC table.
    """
    from . import mrml

    problems = []
    if len(nodes.get("segmentations", [])) != 1:
        return [f"expected one segmentation node, got {len(nodes.get('segmentations', []))}"]
    segmentation = nodes["segmentations"][0].GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        problems.append("the segmentation has no segment")
    for name in expected_segments:
        if segmentation.GetSegment(name) is None:
            problems.append(f"segment {name!r} missing")
    for name in forbidden_segments:
        if segmentation.GetSegment(name) is not None:
            problems.append(f"segment {name!r} should not be there")
    tables = {node.GetName(): node for node in nodes.get("tables", [])}
    for ending in expected_tables:
        matching = [node for name, node in tables.items() if name.endswith(ending)]
        if not matching:
            problems.append(f"no table named '... {ending}' (tables: {sorted(tables)})")
            continue
        table = matching[0]
        if table.GetNumberOfRows() == 0:
            problems.append(f"table {table.GetName()!r} is empty")
        columns = mrml.table_to_dict(table)
        if ending == "volumes":
            volumes = columns.get("Volume", [])
            if not volumes or not all(value > 0 for value in volumes):
                problems.append(f"table {table.GetName()!r} has no positive volumes")
            missing = [name for name in expected_segments if name not in columns.get("Structure", [])]
            if missing:
                problems.append(f"table {table.GetName()!r} lacks rows for {missing}")
        if ending == "QC":
            missing = [name for name in expected_measures if name not in columns.get("Measure", [])]
            if missing:
                problems.append(f"table {table.GetName()!r} lacks the measures {missing}")
    if len(nodes.get("charts", [])) != expected_charts:
        problems.append(f"expected {expected_charts} chart(s), got {len(nodes.get('charts', []))}")
    return problems


def small_result(engine: str = ""):
    """A SegmentationResult the test makes: hippocampi on an LIA grid, volumes, and QC scores for the
    engines that flag scores (so their chart is made too)."""
    from segsuite.labels import freesurfer_lut
    from segsuite.result import SegmentationResult

    from .run_rules import FLAG_THRESHOLDS

    labels = np.zeros((12, 10, 8), dtype=np.int32)
    labels[2:5, 3:6, 1:4] = 17
    labels[6:10, 3:6, 1:5] = 53
    affine = np.array([[-1.0, 0, 0, 5], [0, 0, 1.2, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])
    voxel_volume = 1.2  # mm3: the affine's column lengths are 1, 1 and 1.2
    qc = {"general": 0.9, "hippocampus": 0.5} if engine in FLAG_THRESHOLDS else {}
    return SegmentationResult(labels=labels, affine=affine, label_table=freesurfer_lut().subset([0, 17, 53]),
                              volumes={"Left-Hippocampus": 27 * voxel_volume, "Right-Hippocampus": 48 * voxel_volume}, qc=qc,
                              subject="factory-test")


def check_adapters_on_small_result(test_case, logic, scene=None) -> dict:
    """The nodes a finished run gives (segmentation, volumes / QC tables, score chart) for a result
    made here, checked like a real Apply; each segment's labelmap must cover the result's voxels of
    its label in world space (same count, same bounding box)."""
    from . import mrml
    from .run_rules import FLAG_THRESHOLDS

    result = small_result(logic.engine)
    reference = mrml.add_volume_node(result.labels.astype(np.int16), result.affine, "factory-test reference",
                                     scene=scene)
    name = f"factory-test {logic.engine}"
    nodes = {"segmentations": [mrml.add_segmentation_from_result(result, scene=scene, name=name,
                                                                 reference_volume_node=reference)],
             "tables": [mrml.add_volumes_table(result, scene=scene, name=f"{name} volumes")], "charts": []}
    if result.qc:
        nodes["tables"].append(mrml.add_qc_table(result, scene=scene, name=f"{name} QC"))
        nodes["charts"].append(mrml.add_score_chart(result.qc, f"{name} QC", FLAG_THRESHOLDS[logic.engine],
                                                    scene=scene)["chart"])
    problems = apply_problems(nodes, expected_segments=["Left-Hippocampus", "Right-Hippocampus"],
                              expected_tables=["volumes"] + (["QC"] if result.qc else []),
                              expected_charts=len(nodes["charts"]))
    test_case.assertEqual(problems, [], "; ".join(problems))
    segmentation = nodes["segmentations"][0]
    for segment_id, value in (("Left-Hippocampus", 17), ("Right-Hippocampus", 53)):
        mask, affine, start = mrml.segment_binary_labelmap(segmentation, segment_id)
        test_case.assertEqual(mrml.segment_label_value(segmentation.GetSegmentation().GetSegment(segment_id)), value)
        test_case.assertEqual(int(mask.sum()), int((result.labels == value).sum()))
        test_case.assertTrue(np.allclose(world_box(mask, affine, start), world_box(result.labels == value, result.affine)),
                             f"{segment_id} is not where the result put it (world space)")
    return nodes


def world_box(mask: np.ndarray, affine: np.ndarray, start=(0, 0, 0)) -> np.ndarray:
    """The world-space bounding box (min and max corner, RAS) of a voxel mask's voxel centres;
    ``start`` is the index of the mask's first voxel on the affine's grid (an image extent's start)."""
    indices = np.argwhere(mask) + np.asarray(start)
    corners = np.array([[a, b, c, 1.0] for a in (indices[:, 0].min(), indices[:, 0].max())
                        for b in (indices[:, 1].min(), indices[:, 1].max())
                        for c in (indices[:, 2].min(), indices[:, 2].max())])
    world = (affine @ corners.T).T[:, :3]
    return np.stack([world.min(axis=0), world.max(axis=0)])


def check_run_rules(test_case, logic, scene=None) -> None:
    """The rules one Apply follows, for this module's logic, with no engine run."""
    import tempfile

    from . import mrml
    from .run_rules import choose_output_folder, existing_outputs, first_input_volume, overwrite_arguments

    parameters = dict(logic.default_parameters, device="cpu", threads="2", posteriors="true", model="/m.pt")
    arguments = logic.build_arguments(["in.nii.gz"], "out", parameters)
    test_case.assertEqual(arguments[:3], ["run-engine", "--engine", logic.engine])
    network = {"--device", "--threads", "--model", "--posteriors"}
    test_case.assertEqual(network & set(arguments), network if logic.network_options else set())
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as base:
        with test_case.assertRaises(ValueError):  # never into the work folder, which is deleted
            choose_output_folder(False, os.path.join(work, "kept"), work, logic.engine)
        batch = choose_output_folder(True, "", work, logic.engine, default_base=base)
        test_case.assertEqual((batch.folder, batch.temporary), (os.path.join(base, "SegmentationSuite", logic.engine), False))
        single = choose_output_folder(False, "", work, logic.engine, default_base=base)
        test_case.assertTrue(single.temporary and single.folder.startswith(work))
        os.makedirs(os.path.join(base, "subject-1"))
        existing = existing_outputs(base, ["subject-1", "subject-2"])
        test_case.assertEqual(existing, [os.path.join(base, "subject-1")])
        with test_case.assertRaises(PermissionError):  # replaced only with the user's consent
            overwrite_arguments(existing, consent=False)
        test_case.assertEqual(overwrite_arguments(existing, consent=True), ["--overwrite"])
    label_map = mrml.add_volume_node(np.ones((3, 3, 3), np.int16), np.eye(4), "factory-test label map", scene=scene,
                                     class_name="vtkMRMLLabelMapVolumeNode")
    chosen = first_input_volume(label_map.GetScene(), allow_label_map=logic.accepts_label_maps)
    test_case.assertEqual(chosen is label_map, logic.accepts_label_maps)


def run_test_methods(test_case, *methods) -> list[str]:
    """A module test's runTest: run ``methods``; one that skips is shown as skipped, not failed.

    Slicer's "Test" and "Reload and Test" call runTest directly inside
    ``slicer.util.tryWithErrorDisplay("Reload and Test failed.")`` (ScriptedLoadableModule.py,
    v5.10.0), which shows any exception, unittest.SkipTest included, as a failure dialog. ctest runs
    the test_* methods through unittest (slicer.testing.runUnitTest), which reports skips itself.
    Returns the skip reasons.
    """
    import unittest

    skipped = []
    for method in methods:
        try:
            method()
        except unittest.SkipTest as reason:
            skipped.append(f"{method.__name__} skipped: {reason}")
            test_case.delayDisplay(skipped[-1])
    return skipped


# ----------------------------------------------------------------------------- inside Slicer

def sample_volume(sample_name: Optional[str] = None, environment_variable: str = "SEGSUITE_TEST_INPUT"):
    """The test input: the file named by the environment variable, else Slicer's sample data."""
    import slicer

    path = os.environ.get(environment_variable)
    if path:
        return slicer.util.loadVolume(path)
    if sample_name:
        refuse_in_testing(f"download the sample data {sample_name}")
        import SampleData

        return SampleData.SampleDataLogic().downloadSample(sample_name)
    return None


def run_apply_self_test(test_case, logic, parameters: dict, volume, **expectations) -> dict:
    """Install what the engine needs (asking first), run Apply on ``volume`` in its process, load and
    check the nodes. Refused in testing mode: it needs the network, pip and the model weights."""
    from . import install
    from .module_gui import run_logic_synchronously

    refuse_in_testing("run the full Apply self-test (network, Python packages, model weights)")
    if not install.ensure_requirements(logic.engine, ask=True):
        test_case.fail("the Apply test did not run: installing its Python packages was declined")
    parameters = dict(logic.default_parameters, **parameters)
    nodes = run_logic_synchronously(logic, parameters, input_volume_node=volume)
    problems = apply_problems(nodes, **expectations)
    test_case.assertEqual(problems, [], "; ".join(problems))
    return nodes


def check_widget_and_parameter_node(test_case, module_name: str) -> None:
    """The module and its widget load; GUI and parameter node follow each other; a scene close
    brings the defaults back; Apply is enabled only with an input."""
    import slicer

    from . import mrml
    from .run_rules import parse_bool

    slicer.util.selectModule(module_name)   # creates the widget and enters the module
    widget = slicer.util.getModuleWidget(module_name)
    node, ui = widget.parameterNode, widget.ui
    test_case.assertIsNotNone(node)
    test_case.assertEqual(ui.advancedCollapsibleButton.isHidden(), not widget.logic.network_options)
    for name, value in widget.option_defaults.items():
        test_case.assertEqual(getattr(ui, f"{name}CheckBox").checked, parse_bool(value))
    for name in widget.option_parameters:                   # GUI -> parameter node
        box = getattr(ui, f"{name}CheckBox")
        box.checked = not box.checked
        test_case.assertEqual(node.GetParameter(name), "true" if box.checked else "false")
    ui.batchCheckBox.checked = True
    test_case.assertEqual(node.GetParameter("batch"), "true")
    test_case.assertTrue(ui.inputFolderPathLineEdit.enabled and not ui.inputVolumeSelector.enabled)
    node.SetParameter("batch", "false")                       # parameter node -> GUI
    test_case.assertFalse(ui.batchCheckBox.checked)
    node.SetParameter("threads", "3")
    test_case.assertEqual(ui.threadsSpinBox.value, 3)
    slicer.mrmlScene.Clear()                                  # the defaults come back after a scene close
    node = widget.parameterNode
    for name, value in widget.option_defaults.items():
        test_case.assertEqual((node.GetParameter(name), getattr(ui, f"{name}CheckBox").checked),
                              (value, parse_bool(value)))
    test_case.assertFalse(ui.applyButton.enabled)             # no input yet
    volume = mrml.add_volume_node(np.zeros((4, 4, 4), np.int16), np.eye(4), "factory-test input")
    node.SetNodeReferenceID("InputVolume", volume.GetID())
    test_case.assertTrue(ui.applyButton.enabled)


class EngineModuleSelfTest:
    """Mixed in before ScriptedLoadableModuleTest by each engine module's test class, which sets
    ``module_name`` and ``logic_class`` and calls its full Apply from ``runTest`` after these."""

    module_name = ""
    logic_class = None

    def setUp(self):
        import slicer

        slicer.mrmlScene.Clear()

    def test_module_widget_and_parameter_node(self):
        check_widget_and_parameter_node(self, self.module_name)

    def test_adapters_on_a_small_result(self):
        check_adapters_on_small_result(self, self.logic_class())

    def test_run_rules(self):
        check_run_rules(self, self.logic_class())

    def run_factory_safe_tests(self):
        """What ctest runs, in the order "Reload and Test" shows them."""
        for name in ("test_module_widget_and_parameter_node", "test_adapters_on_a_small_result", "test_run_rules"):
            self.setUp()
            getattr(self, name)()
            self.delayDisplay(f"{self.module_name}: {name} passed")
