"""The self-tests as the extensions factory runs them (issue 29, defects 2 and 4).

The factory builds the extension and runs every ctest test (Extensions/CMake/SlicerBlockUploadExtension.cmake,
v5.10.0 and v5.12.3: run_extension_ctest_with_test defaults to TRUE). Each module file is registered
with ``slicer_add_python_unittest``, which starts ``Slicer --testing`` and calls
``slicer.testing.runUnitTest(paths, "<Module>")``: ``unittest.TestLoader().loadTestsFromName`` on the
module, i.e. every ``test*`` method of every TestCase class in it (CMake/SlicerMacroPythonTesting.cmake
and Base/Python/slicer/testing.py at both tags). "Reload and Test" instead calls the test class's
``runTest`` (ScriptedLoadableModule.py ``onReloadAndTest`` / ``ScriptedLoadableModule.runTest``).
Here the module files are loaded with slicer-core and a unittest-based ScriptedLoadableModuleTest;
the same loader collects what ctest would run (the imported base class too, whose runTest runs
nothing), and those tests run on real MRML in testing mode with the network and pip blocked; the
Models module's collected tests run their real child processes offline with an empty model home.
"""

from __future__ import annotations

import ast
import importlib
import socket
import subprocess
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

from conftest import stand_in_module_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SegmentationSuite"
ENGINE_MODULES = ["SynthSeg", "ScLimbic", "SpinalCordEPI", "SamsegBrainMask"]
# the modules whose ctest tests are the three factory-safe ones (the preprocessing module's check its own widget and logic)
RUN_MODULES = ENGINE_MODULES + ["SegmentationSuitePreprocess"]
FACTORY_SAFE = {"test_module_widget_and_parameter_node", "test_adapters_on_a_small_result", "test_run_rules"}
NEEDS_THE_GUI = {"test_module_widget_and_parameter_node"}  # selectModule / getModuleWidget: the application


class Blocked(AssertionError):
    pass


@pytest.fixture
def factory(monkeypatch):
    """Module files importable with slicer-core; Slicer in testing mode; no network, no pip."""
    class ScriptedLoadableModuleTest(unittest.TestCase):
        """As at v5.10.0 / v5.12.3: a TestCase whose own runTest runs every callable named *test*."""

        def __init__(self, *args, **kwargs):
            self.moduleTestNames = []
            super().__init__(*args, **kwargs)
            if not self.moduleTestNames:
                self.moduleTestNames = [name for name in dir(self) if "test" in name and callable(getattr(self, name))]

        def delayDisplay(self, message, *args, **kwargs):
            pass

        def runTest(self):
            for name in self.moduleTestNames:
                self.setUp()
                getattr(self, name)()
                self.tearDown()

    stand_in_module_files(monkeypatch, RUN_MODULES + ["SegmentationSuiteModels"],
                          test_base=ScriptedLoadableModuleTest)
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: True, processEvents=lambda: None),
                        raising=False)

    def no_network(*args, **kwargs):
        raise Blocked("the network was used in testing mode")

    real_popen = subprocess.Popen

    def no_pip(args, *rest, **kwargs):
        if "pip" in [str(a) for a in (args if isinstance(args, (list, tuple)) else [args])]:
            raise Blocked(f"pip was run in testing mode: {args}")
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(subprocess, "Popen", no_pip)
    return scene


def ctest_suite(module) -> list[unittest.TestCase]:
    """What slicer.testing.runUnitTest runs for this module (its unittest loader), every test case."""
    def flatten(item):
        return [case for sub in item for case in flatten(sub)] if isinstance(item, unittest.TestSuite) else [item]

    return flatten(unittest.TestLoader().loadTestsFromModule(module))


def ctest_collects(module) -> list[str]:
    """The ids of the module's own tests that ctest runs. The loader also finds the imported
    ScriptedLoadableModuleTest base; its runTest runs nothing (no callable of it is named *test*)."""
    cases = ctest_suite(module)
    for case in cases:
        if type(case).__module__ != module.__name__:
            assert type(case).__name__ == "ScriptedLoadableModuleTest" and case.moduleTestNames == []
    return [case.id() for case in cases if type(case).__module__ == module.__name__]


@pytest.mark.parametrize("name", RUN_MODULES)
def test_ctest_collects_only_the_factory_safe_tests(factory, name):
    module = importlib.import_module(name)
    collected = {test_id.rsplit(".", 1)[1] for test_id in ctest_collects(module)}
    assert collected == FACTORY_SAFE, f"ctest would run {sorted(collected)}"
    # "Reload and Test" runs them, then the full Apply (which is not a test* method) through
    # run_test_methods, so that a skip is shown as one rather than as "Reload and Test failed."
    test_class = getattr(module, f"{name}Test")
    run_test = next(node for node in ast.walk(ast.parse((MODULE_DIR / f"{name}.py").read_text()))
                    if isinstance(node, ast.FunctionDef) and node.name == "runTest")
    calls = [node for node in ast.walk(run_test) if isinstance(node, ast.Call)]
    called = [call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id for call in calls]
    assert called[0] == "run_factory_safe_tests" and called[-1] == "run_test_methods"
    assert [argument.attr for argument in calls[-1].args[1:]] == [f"full_apply_{name}"]
    assert hasattr(test_class, f"full_apply_{name}")


@pytest.mark.parametrize("name", RUN_MODULES)
def test_factory_safe_tests_pass_in_testing_mode_without_network_or_pip(factory, name):
    module = importlib.import_module(name)
    suite = unittest.TestSuite()
    test_class = getattr(module, f"{name}Test")
    for method in sorted(FACTORY_SAFE - NEEDS_THE_GUI):
        suite.addTest(test_class(method))
    result = unittest.TestResult()
    suite.run(result)
    problems = [f"{test.id()}: {trace}" for test, trace in result.errors + result.failures]
    assert not problems and result.testsRun == 2, "\n".join(problems)


def test_the_full_apply_and_every_download_are_refused_in_testing_mode(factory):
    from segsuite_slicer import models_client, self_test
    from segsuite_slicer.testing_mode import TestingModeRefusal

    SynthSeg = importlib.import_module("SynthSeg")
    test = SynthSeg.SynthSegTest("test_run_rules")
    with pytest.raises(TestingModeRefusal, match="testing mode"):
        test.full_apply_SynthSeg()          # before any download, install or engine run
    with pytest.raises(TestingModeRefusal, match="sample data MRHead"):
        self_test.sample_volume("MRHead")
    with pytest.raises(TestingModeRefusal, match="model sclimbic"):
        models_client.start_action("download", "sclimbic")
    with pytest.raises(TestingModeRefusal):
        self_test.run_apply_self_test(test, SynthSeg.SynthSegLogic(), {}, None)


def test_the_adapter_check_fails_on_a_misplaced_segment(factory, monkeypatch):
    """The world-space check is real: a segmentation shifted by one voxel fails it."""
    from segsuite_slicer import mrml, self_test

    original = mrml.add_segmentation_from_result

    def misplaced(result, **kwargs):
        moved = type(result)(labels=np.roll(result.labels, 1, axis=0), affine=result.affine,
                             label_table=result.label_table)
        return original(moved, **kwargs)

    monkeypatch.setattr(mrml, "add_segmentation_from_result", misplaced)
    with pytest.raises(AssertionError, match="world space"):
        self_test.check_adapters_on_small_result(unittest.TestCase(), types.SimpleNamespace(engine="synthseg"),
                                                 scene=factory)


def test_samseg_help_promises_no_t1_and_the_filter_refuses_one(factory):
    """Defect 4: the help said a T1 is segmented first; the engine behind the module is the label filter."""
    from segsuite.errors import InputError
    from segsuite.samseg.filter import SamsegBrainMask

    module = importlib.import_module("SamsegBrainMask")
    help_text = module.SamsegBrainMask(None).parent.helpText
    assert "segmentation" in help_text and "not an MRI image" in help_text
    assert "run_samseg" not in help_text and "segment a T1" not in help_text
    t1_like = np.random.default_rng(0).normal(100, 20, (20, 20, 20)).astype(np.float32)
    with pytest.raises(InputError):
        SamsegBrainMask().segment((t1_like, np.eye(4)))
    assert module.SamsegBrainMaskLogic.network_options is False


def test_models_module_ctest_tests_run_in_testing_mode_offline_and_without_pip(factory, tmp_path, monkeypatch):
    """The Models module's test* methods are collected by ctest too: they list and verify through
    real child processes, with no pip run, no install and no download (the children get an
    unreachable proxy and an empty model home, so any download would fail the test)."""
    monkeypatch.setenv("SEGSUITE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEGSUITE_CONFIG", str(tmp_path / "config.json"))
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("SEGSUITE_REGISTRY", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(MODULE_DIR))
    module = importlib.import_module("SegmentationSuiteModels")
    cases = [case for case in ctest_suite(module) if type(case).__module__ == module.__name__]
    assert cases and all(case._testMethodName.startswith("test") for case in cases)
    result = unittest.TestResult()
    unittest.TestSuite(cases).run(result)
    problems = [f"{test.id()}: {trace}" for test, trace in result.errors + result.failures]
    assert not problems and result.testsRun == len(cases), "\n".join(problems)
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())
