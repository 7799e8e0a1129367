"""What every module's ScriptedLoadableModuleTest does and checks, written once.

``apply_problems`` and ``make_samseg_volume`` need only MRML (pytest runs them on slicer-core
nodes); ``run_apply_self_test`` and ``sample_volume`` need the Slicer application.
The engines read their weights through the model manager (no model path is given), so a
self-test also checks the download-verify-cache path on first use.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

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
        import SampleData

        return SampleData.SampleDataLogic().downloadSample(sample_name)
    return None


def run_apply_self_test(test_case, logic, parameters: dict, volume, **expectations) -> dict:
    """Install what the engine needs, run Apply on ``volume`` in its process, load and check the nodes."""
    from . import install
    from .module_gui import run_logic_synchronously

    test_case.assertTrue(install.ensure_requirements(logic.engine, ask=False),
                         "the Python requirements could not be installed")
    parameters = dict(logic.default_parameters, **parameters)
    nodes = run_logic_synchronously(logic, parameters, input_volume_node=volume)
    problems = apply_problems(nodes, **expectations)
    test_case.assertEqual(problems, [], "; ".join(problems))
    return nodes
