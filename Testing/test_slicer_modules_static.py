"""The Slicer modules without the Slicer GUI: they parse, their Slicer-free parts import and work,
every slicer.util / MRML method they call exists in slicer-core, every widget they use is in their
.ui file, and CMake installs everything. The GUI itself is exercised by each module's
ScriptedLoadableModuleTest inside Slicer."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

from conftest import stand_in_module_files  # noqa: E402

from segsuite import cli  # noqa: E402
from segsuite.commands.run_engine import ENGINES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SegmentationSuite"
HELPERS = Path(__file__).resolve().parent / "helpers"
ENGINE_MODULES = ["SynthSeg", "ScLimbic", "SpinalCordEPI", "SamsegBrainMask"]
ALL_MODULES = ENGINE_MODULES + ["SegmentationSuiteModels", "SegmentationSuitePreprocess"]
ADAPTER_FILES = sorted((MODULE_DIR / "segsuite_slicer").glob("*.py"))
SLICER_FILES = [MODULE_DIR / f"{name}.py" for name in ALL_MODULES] + ADAPTER_FILES

# Exist only in the Slicer application, not in slicer-core.
APP_ONLY_SLICER_ATTRIBUTES = {"app", "mrmlScene", "modules", "packaging", "ScriptedLoadableModule"}
# Module logics slicer-core does not wrap (vtkSlicerTablesLogic, vtkSlicerPlotsLogic): test_slicer_api_names
# checks them against Slicer 5.10's own headers.
APP_ONLY_METHODS = {"GetLayoutWithTable", "ShowChartInLayout"}
MODULE_NAMES = {"slicer", "qt", "ctk", "vtk", "np", "os", "sys", "json", "logging", "shutil", "subprocess",
                "tempfile", "time", "importlib", "threading", "numpy_support", "nib", "re", "PyTorchUtils", "SampleData", "models_client",
                "sitk", "itk"}
CLASSES_USED = ["vtkMRMLScene", "vtkMRMLSegmentationNode", "vtkSegmentation", "vtkSegment", "vtkMRMLTableNode",
                "vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLScriptedModuleNode",
                "vtkMRMLLinearTransformNode", "vtkOrientedImageData", "vtkSegmentationConverter",
                "vtkMRMLSelectionNode", "vtkMRMLApplicationLogic", "vtkMRMLSegmentationStorageNode",
                "vtkSlicerSegmentationsModuleLogic", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode",
                "vtkMRMLSegmentationDisplayNode"]
VTK_CLASSES = ["vtkMatrix4x4", "vtkImageData", "vtkStringArray", "vtkDoubleArray", "vtkIntArray", "vtkPointData",
               "vtkTable", "vtkAbstractTransform"]


def _known_methods() -> set[str]:
    import vtk

    names: set[str] = set()
    for cls in CLASSES_USED:
        names.update(dir(getattr(slicer, cls)))
    for cls in VTK_CLASSES:
        names.update(dir(getattr(vtk, cls)))
    return names


def _attribute_chain(node: ast.AST) -> list[str]:
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        chain.append(node.id)
        return chain[::-1]
    return []


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_files_parse(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_every_slicer_and_mrml_call_exists_in_slicer_core(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = _known_methods()
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _attribute_chain(node)
            if chain[:2] == ["slicer", "util"] and len(chain) >= 3 and not hasattr(slicer.util, chain[2]):
                problems.append(f"slicer.util.{chain[2]} (line {node.lineno})")
            elif (chain[:1] == ["slicer"] and len(chain) >= 2 and chain[1] not in APP_ONLY_SLICER_ATTRIBUTES
                  and chain[1] != "util" and not hasattr(slicer, chain[1])):
                problems.append(f"slicer.{chain[1]} (line {node.lineno})")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            chain = _attribute_chain(node.func.value)
            if not method[:1].isupper() or (chain and chain[0] in MODULE_NAMES):
                continue  # Qt and Python methods are lowerCamel; module.Class() are constructors (checked above)
            if method not in known and method not in APP_ONLY_METHODS:
                problems.append(f".{method}() (line {node.lineno})")
    assert not problems, f"{path.name} calls what slicer-core does not have: {problems}"


def _stub_slicer_gui(monkeypatch):
    """Stand-ins for the GUI-only modules, so the module files import with slicer-core."""
    stand_in_module_files(monkeypatch, ALL_MODULES)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_module_imports_and_has_the_four_classes(monkeypatch, name):
    _stub_slicer_gui(monkeypatch)
    module = importlib.import_module(name)
    for suffix in ("", "Widget", "Logic", "Test"):
        assert hasattr(module, name + suffix), f"{name}{suffix} missing"
    assert (MODULE_DIR / "Resources" / "UI" / f"{name}.ui").is_file()
    assert (MODULE_DIR / "Resources" / "Icons" / f"{name}.png").is_file()
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    # the CMake lists name each module once; test_installed_layout.py checks what gets installed
    assert f"\n  {name}\n" in cmake and "Resources/UI/${module_name}.ui" in cmake


@pytest.mark.parametrize("name", ENGINE_MODULES)
def test_engine_module_logic_builds_a_run_engine_command(monkeypatch, name):
    _stub_slicer_gui(monkeypatch)
    module = importlib.import_module(name)
    logic = getattr(module, name + "Logic")()
    widget_class = getattr(module, name + "Widget")
    parameters = dict(logic.default_parameters, **widget_class.option_defaults, threads="2", device="cpu")
    options = logic.engine_options(parameters)
    assert isinstance(options, dict) and all(v is None or isinstance(v, (bool, int, float, str)) for v in options.values())
    # Every option (all check boxes off, then all on) is accepted by the real engine's signatures.
    from segsuite.commands.run_engine import resolve_engine, split_options

    engine_class = resolve_engine(logic.engine)
    all_on = dict(parameters, **{p: "true" for p in widget_class.option_parameters})
    for choice in (options, logic.engine_options(all_on)):
        split_options(engine_class, choice)
    arguments = logic.build_arguments(["in.nii.gz"], "out", parameters)
    parsed = cli.build_parser().parse_args(arguments)
    assert parsed.engine == logic.engine and parsed.engine in ENGINES
    assert parsed.input == ["in.nii.gz"] and parsed.output_dir == "out"
    assert json.loads(parsed.options) == options
    if logic.network_options:
        assert parsed.threads == 2 and parsed.device == "cpu"
    else:  # the SAMSEG label filter: no network, so none of its options reach the engine (issue 29, defect 4)
        with_all = logic.build_arguments(["in.nii.gz"], "out", dict(parameters, model="/m.pt", posteriors="true",
                                                                     device="cuda", gpu="1"))
        assert not {"--device", "--threads", "--model", "--posteriors"} & set(with_all)
    # Every option check box the widget wires exists in its .ui file.
    ui = (MODULE_DIR / "Resources" / "UI" / f"{name}.ui").read_text()
    for parameter in widget_class.option_parameters:
        assert f'name="{parameter}CheckBox"' in ui


@pytest.mark.parametrize("name", ENGINE_MODULES)
def test_the_network_controls_are_exactly_the_advanced_section(name):
    """module_gui hides Advanced for an engine without a network (the SAMSEG filter); that hides its
    device, CUDA device index, threads, posteriors and model controls only if they all live there."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / f"{name}.ui").getroot()
    advanced = next(w for w in root.iter("widget") if w.get("name") == "advancedCollapsibleButton")
    inside = {w.get("name") for w in advanced.iter("widget")
              if w.get("name") != "advancedCollapsibleButton" and not w.get("name").startswith("label_")}
    assert inside == {"deviceComboBox", "gpuSpinBox", "threadsSpinBox", "posteriorsCheckBox", "modelPathLineEdit",
                      "modelFolderButton"}


UI_USERS = {"module_gui.py": ENGINE_MODULES, "SegmentationSuiteModels.py": ["SegmentationSuiteModels"],
            "preprocess_gui.py": ["SegmentationSuitePreprocess"]}


def _method_source(path: Path, *names: str) -> str:
    """The source of the named methods in ``path`` (the base-class methods a subclass inherits)."""
    source = path.read_text()
    return "\n".join(ast.get_source_segment(source, node) for node in ast.walk(ast.parse(source))
                     if isinstance(node, ast.FunctionDef) and node.name in names)


@pytest.mark.parametrize("path", [MODULE_DIR / "segsuite_slicer" / "module_gui.py", MODULE_DIR / "SegmentationSuiteModels.py",
                                  MODULE_DIR / "segsuite_slicer" / "preprocess_gui.py"], ids=lambda p: p.name)
def test_every_ui_widget_used_exists(path):
    used = set(re.findall(r"self\.ui\.(\w+)", path.read_text()))
    if path.name == "preprocess_gui.py":  # and what it inherits from module_gui's mixin
        used |= set(re.findall(r"self\.ui\.(\w+)", _method_source(MODULE_DIR / "segsuite_slicer" / "module_gui.py",
                                                                     "setupRunWidget", "_restore", "onApplyButton",
                                                                     "onProgress", "onError", "ensureRequirements",
                                                                     "appendLog", "updateApplyButton",
                                                                     "updateGUIFromParameterNode",
                                                                     "updateParameterNodeFromGUI")))
    ui_files = [MODULE_DIR / "Resources" / "UI" / f"{m}.ui" for m in UI_USERS[path.name]]
    for ui_file in ui_files:
        names = set(re.findall(r'<widget class="[^"]+" name="(\w+)"', ui_file.read_text()))
        assert used <= names, f"{ui_file.name} lacks {sorted(used - names)}"


def test_logic_loads_results_into_a_real_scene(monkeypatch, tmp_path):
    """The Apply path after the child process: run-engine bundles -> segmentation and tables."""
    _stub_slicer_gui(monkeypatch)
    monkeypatch.syspath_prepend(str(HELPERS))
    module = importlib.import_module("SynthSeg")
    affine = np.array([[-1.0, 0, 0, 5], [0, 0, 1.0, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((10, 9, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "sub-01.nii.gz"))
    out = tmp_path / "out"
    assert cli.main(["--progress", "none", "run-engine", "--engine", "fake_engine:FakeEngine",
                     "-i", str(tmp_path / "sub-01.nii.gz"), "-o", str(out)]) == 0
    scene = slicer.vtkMRMLScene()
    logic = module.SynthSegLogic()
    nodes = logic.load_results(str(out), scene=scene, parameters={"outputName": "seg"})
    segmentation = nodes["segmentations"][0]
    assert segmentation.GetName() == "seg"
    assert set(segmentation.GetSegmentation().GetSegmentIDs()) <= {"Left-Hippocampus", "Right-Hippocampus"}
    assert [t.GetName() for t in nodes["tables"]] == ["sub-01 synthseg volumes", "sub-01 synthseg QC"]
    # A batch gives one table per kind with a row per subject, and no segmentation nodes.
    nib.save(nib.Nifti1Image(data[::-1].copy(), affine), str(tmp_path / "sub-02.nii.gz"))
    (tmp_path / "batch").mkdir()
    for name in ("sub-01", "sub-02"):
        (tmp_path / f"{name}.nii.gz").rename(tmp_path / "batch" / f"{name}.nii.gz")
    assert cli.main(["--progress", "none", "run-engine", "--engine", "fake_engine:FakeEngine",
                     "-i", str(tmp_path / "batch"), "-o", str(tmp_path / "bout")]) == 0
    nodes = logic.load_results(str(tmp_path / "bout"), scene=scene)
    assert nodes["segmentations"] == []
    volumes = nodes["tables"][0]
    assert volumes.GetName() == "synthseg volumes" and volumes.GetNumberOfRows() == 2


def test_export_volume_node_keeps_world_geometry(tmp_path):
    from segsuite_slicer import mrml
    from segsuite_slicer.engine_run import EngineRunLogic

    scene = slicer.vtkMRMLScene()
    affine = np.array([[0, 0, 1.2, -4], [-0.9, 0, 0, 8], [0, -1.1, 0, 3.5], [0, 0, 0, 1]])
    array = np.random.default_rng(4).random((6, 5, 4)).astype(np.float32)
    node = mrml.add_volume_node(array, affine, "T1 (copy)/x", scene=scene)
    path = EngineRunLogic.export_volume_node(node, str(tmp_path))
    image = nib.load(path)
    assert Path(path).name == "T1__copy__x.nii.gz"
    assert np.allclose(image.affine, affine, atol=1e-5)
    assert np.array_equal(np.asanyarray(image.dataobj), array)


def test_models_client_rows_and_arguments(capsys):
    """The GUI's rows come from the real `segsuite models list --json`, and every action it
    builds parses with the real command-line parser."""
    import json

    from segsuite import cli
    from segsuite_slicer import models_client

    assert cli.main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = models_client.model_rows(listing)
    by_id = {row[0]: row for row in rows}
    assert by_id["synthseg-2.0"][1] == "not installed"
    assert by_id["synthseg-2.0"][2] == "53.1 MB"
    assert "FreeSurfer" in by_id["synthseg-2.0"][3] and "Billot" in by_id["synthseg-2.0"][4]

    parser = cli.build_parser()
    install = parser.parse_args(models_client.action_arguments("install", "sclimbic", "/x.h5"))
    assert (install.action, install.model_id, install.source) == ("install", "sclimbic", "/x.h5")
    for action in ("download", "import-freesurfer", "verify", "remove", "path"):
        parsed = parser.parse_args(models_client.action_arguments(action, "sclimbic"))
        assert parsed.action == action
    with pytest.raises(ValueError):
        models_client.action_arguments("format-disk")
