"""Every Slicer / CTK / MRML name our Slicer modules use exists in Slicer 5.10 itself, not only in slicer-core.

The names come from Testing/slicer_api/slicer-5.10.0-names.txt, extracted once from Slicer's and
CTK's source at the tag (tools/extract_slicer_api_names.py; its first line names both commits).
Checked: slicer.util.X, slicer.X, slicer.modules.X, slicer.app.X, MRML/VTK method calls (Upper-case
names), the members of qMRML/ctk widgets used through self.ui, and the qMRML/ctk classes and
properties in the .ui files. Plain Qt names (QTimer, QFileDialog, ...) are Qt 5.15's, which is not
in Slicer's source: they are not checked here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SegmentationSuite"
NAMES_FILE = Path(__file__).resolve().parent / "slicer_api" / "slicer-5.10.0-names.txt"
ENGINE_MODULES = ["SynthSeg", "ScLimbic", "SpinalCordEPI", "SamsegBrainMask"]
MODULE_FILES = [MODULE_DIR / f"{name}.py" for name in ENGINE_MODULES + ["SegmentationSuiteModels",
                                                                   "SegmentationSuitePreprocess"]]
ADAPTER_FILES = sorted((MODULE_DIR / "segsuite_slicer").glob("*.py"))
UI_FILES = sorted((MODULE_DIR / "Resources" / "UI").glob("*.ui"))

# Used only where present (Slicer >= 5.12), with a 5.10 fallback beside them (segsuite_slicer/install.py).
VERSION_GUARDED = {"packaging"}
# Qt's own members of QWidget / QAbstractButton / QApplication (not in Slicer's or CTK's source).
QT_MEMBERS = {"enabled", "visible", "toolTip", "text", "checked", "setEnabled", "setVisible", "processEvents",
              "clicked", "toggled"}
# Python names whose calls are not MRML/VTK methods.
PYTHON_MODULES = {"os", "sys", "json", "logging", "shutil", "subprocess", "tempfile", "time", "importlib", "threading",
                  "np", "nib", "re", "math", "inspect", "qt", "ctk", "numpy_support", "PyTorchUtils", "SampleData",
                  "models_client", "mrml", "install", "Path", "run_rules", "sitk", "itk"}


def load_names(path: Path = NAMES_FILE) -> dict:
    names: dict = {"slicer.util": set(), "slicer": set(), "slicer.modules": set(), "vtkmethod": set(),
                   "qtclass": {}, "qtmember": {}}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        kind, *rest = line.split(" ")
        if kind == "qtclass":
            names["qtclass"][rest[0]] = rest[1]
        elif kind == "qtmember":
            names["qtmember"].setdefault(rest[0], set()).add(rest[1])
        else:
            names[kind].add(rest[0])
    return names


def class_members(names: dict, class_name: str) -> set:
    """Members of a qMRML/qSlicer/ctk class and of its qMRML/qSlicer/ctk bases."""
    members: set = set()
    while class_name in names["qtclass"]:
        members |= names["qtmember"].get(class_name, set())
        class_name = names["qtclass"][class_name]
    return members


def _chain(node: ast.AST) -> list:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    if isinstance(node, ast.Call):  # slicer.modules.tables.logic().GetLayoutWithTable -> keep the tail
        return ["<call>"] + parts[::-1]
    return []


def ui_widget_classes(ui_texts: list) -> dict:
    classes: dict = {}
    for text in ui_texts:
        for class_name, widget in re.findall(r'<widget class="(\w+)" name="(\w+)"', text):
            classes[widget] = class_name
    return classes


def python_problems(source: str, names: dict, widget_classes: dict, extra_vtk_methods: set = frozenset()) -> list:
    """Names the source uses that Slicer 5.10 does not have."""
    problems = []
    app_members = class_members(names, "qSlicerApplication")
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if chain[:1] == ["slicer"] and len(chain) >= 2:
            if chain[1] not in names["slicer"] and chain[1] not in VERSION_GUARDED:
                problems.append(f"slicer.{chain[1]}")
            elif chain[1] == "util" and len(chain) >= 3 and chain[2] not in names["slicer.util"]:
                problems.append(f"slicer.util.{chain[2]}")
            elif chain[1] == "modules" and len(chain) >= 3 and chain[2] not in names["slicer.modules"]:
                problems.append(f"slicer.modules.{chain[2]}")
            elif chain[1] == "app" and len(chain) >= 3 and chain[2] not in app_members | QT_MEMBERS:
                problems.append(f"slicer.app.{chain[2]}")
        if chain[:2] == ["self", "ui"] and len(chain) >= 4:
            class_name = widget_classes.get(chain[2], "")
            if class_name.startswith(("qMRML", "ctk")) and chain[3] not in class_members(names, class_name) | QT_MEMBERS:
                problems.append(f"{class_name}.{chain[3]} (self.ui.{chain[2]})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, owner = node.func.attr, _chain(node.func.value)
            if not method[:1].isupper() or (owner and owner[0] in PYTHON_MODULES) or owner[:1] == ["vtk"]:
                continue
            if owner[:1] == ["slicer"] and len(owner) == 1 or owner[:2] == ["slicer", "util"]:
                continue  # slicer.Class() and slicer.util.Class(): checked as names above
            if method not in names["vtkmethod"] and method not in extra_vtk_methods:
                problems.append(f".{method}() (line {node.lineno})")
    return sorted(set(problems))


def ui_problems(text: str, names: dict) -> list:
    """qMRML/ctk classes and their properties in a .ui file that Slicer 5.10 does not have."""
    problems = []
    for match in re.finditer(r'<widget class="(\w+)" name="(\w+)">(.*?)(?=<widget |</widget>)', text, re.S):
        class_name, widget, body = match.groups()
        if not class_name.startswith(("qMRML", "ctk")):
            continue
        if class_name not in names["qtclass"]:
            problems.append(f"class {class_name}")
            continue
        members = class_members(names, class_name) | QT_MEMBERS
        for prop in re.findall(r'<property name="(\w+)">', body):
            if prop not in members:
                problems.append(f"{class_name}.{prop} ({widget})")
    return problems


@pytest.fixture(scope="module")
def names():
    return load_names()


@pytest.fixture(scope="module")
def vtk_core_methods():
    """Methods of the plain VTK classes mrml.py uses (VTK, not Slicer, defines them)."""
    vtk = pytest.importorskip("vtk")
    methods: set = set()
    for class_name in ("vtkMatrix4x4", "vtkImageData", "vtkStringArray", "vtkDoubleArray", "vtkIntArray",
                       "vtkPointData", "vtkTable", "vtkCommand", "vtkAbstractTransform"):
        methods.update(dir(getattr(vtk, class_name)))
    return methods


def test_names_file_says_where_it_came_from(names):
    header = NAMES_FILE.read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"# Slicer v5\.10\.0 [0-9a-f]{40}; CTK [0-9a-f]{40}", header)
    assert {"loadUI", "childWidgetVariables", "VTKObservationMixin"} <= names["slicer.util"]
    assert "hideChildNodeTypes" in names["qtmember"]["qMRMLNodeComboBox"]


@pytest.mark.parametrize("path", MODULE_FILES + ADAPTER_FILES, ids=lambda p: p.name)
def test_python_uses_only_slicer_5_10_names(path, names, vtk_core_methods):
    widget_classes = ui_widget_classes([ui.read_text(encoding="utf-8") for ui in UI_FILES])
    problems = python_problems(path.read_text(encoding="utf-8"), names, widget_classes, vtk_core_methods)
    assert problems == [], f"{path.name} uses names Slicer 5.10 does not have: {problems}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_files_use_only_slicer_5_10_widgets_and_properties(path, names):
    assert ui_problems(path.read_text(encoding="utf-8"), names) == []


def test_the_check_fails_on_names_5_10_lacks(names, vtk_core_methods):
    source = """
import slicer
slicer.util.notInSlicer510()
slicer.modules.nosuchmodule.logic()
slicer.vtkMRMLNoSuchNode()
slicer.app.noSuchMember
slicer.modules.tables.logic().GetLayoutWithTableX(1)
self.ui.inputVolumeSelector.noSuchProperty = 1
self.ui.inputVolumeSelector.hideChildNodeTypes = []
"""
    problems = python_problems(source, names, {"inputVolumeSelector": "qMRMLNodeComboBox"}, vtk_core_methods)
    assert problems == [".GetLayoutWithTableX() (line 7)", "qMRMLNodeComboBox.noSuchProperty (self.ui.inputVolumeSelector)",
                        "slicer.app.noSuchMember", "slicer.modules.nosuchmodule", "slicer.util.notInSlicer510",
                        "slicer.vtkMRMLNoSuchNode"]
    ui = ('<widget class="qMRMLNodeComboBox" name="a"><property name="fooBar"><bool>true</bool></property></widget>'
          '<widget class="ctkNoSuchWidget" name="b"></widget>')
    assert ui_problems(ui, names) == ["qMRMLNodeComboBox.fooBar (a)", "class ctkNoSuchWidget"]
