"""The MNI152 preprocessing module (issue 33) without the Slicer GUI: the `segsuite preprocess` command line
it builds (parsed by the real parser), one-line errors for wrong settings, the segmentation it exports
(FreeSurfer values from a segmentation node or a label map, on real MRML), its .ui as the generator
writes it, its widget on real MRML with stand-in Qt widgets, and (slow) a whole Apply: the real
preprocessing of the 2 mm T1 with its SAMSEG labels, loaded as nodes."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import unittest

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")

from conftest import REPO_ROOT, shared_path  # noqa: E402
from test_slicer_widget_lifecycle import (PathLineEdit, Settings, StandInWidget, Timer, Widget, _finish,  # noqa: E402
                                          singleton_parameter_node)

from segsuite import cli  # noqa: E402
from segsuite.labels import freesurfer_lut  # noqa: E402
from segsuite.preprocess.templates import NLIN2009A  # noqa: E402
from segsuite_slicer import mrml  # noqa: E402
from segsuite_slicer.preprocess_run import (PREPROCESS_DEFAULTS, check_preprocess_parameters,  # noqa: E402
                                            export_segmentation_input, preprocess_arguments)

LIA = np.array([[-1.0, 0, 0, 40], [0, 0, 1.0, -30], [0, -1.0, 0, 35], [0, 0, 0, 1]])


def test_the_command_line_parses_with_the_real_parser():
    parameters = dict(PREPROCESS_DEFAULTS, template=NLIN2009A, resolution="2", fwhm="6.5", registration="t1w",
                      threads="3")
    parsed = cli.build_parser().parse_args(preprocess_arguments("/w/sub-01_T1w.nii.gz", "/w/seg/seg.nii.gz", "/out",
                                                                parameters))
    assert (parsed.image, parsed.seg, parsed.output, parsed.prefix) == ("/w/sub-01_T1w.nii.gz", "/w/seg/seg.nii.gz",
                                                                         "/out", "sub-01")
    assert (parsed.template, parsed.resolution, parsed.fwhm, parsed.registration, parsed.threads) == \
        (NLIN2009A, 2.0, 6.5, "t1w", 3)
    defaults = cli.build_parser().parse_args(preprocess_arguments("/w/t1.nii.gz", "", "/out", dict(PREPROCESS_DEFAULTS)))
    # the module's defaults are the command's: no --seg (SynthSeg first), its template choice, 1 mm, 8 mm, 2 threads
    assert (defaults.seg, defaults.template, defaults.resolution, defaults.fwhm, defaults.registration,
            defaults.threads) == (None, None, 1.0, 8.0, "t1w+tissues", 2)


@pytest.mark.parametrize("wrong, named", [({"fwhm": "-3"}, "FWHM"), ({"fwhm": "60"}, "FWHM"),
                                          ({"fwhm": "eight"}, "FWHM"), ({"resolution": "1.5"}, "resolution"),
                                          ({"template": "Talairach"}, "template"), ({"registration": "rigid"}, "registration"),
                                          ({"threads": "two"}, "threads")])
def test_wrong_settings_are_one_line_errors_before_anything_is_exported(wrong, named, tmp_path):
    from segsuite_slicer.preprocess_run import PreprocessRunLogic

    with pytest.raises(ValueError) as error:
        check_preprocess_parameters(dict(PREPROCESS_DEFAULTS, **wrong))
    message = str(error.value)
    assert "\n" not in message and named in message and "Traceback" not in message
    scene = slicer.vtkMRMLScene()
    volume = mrml.add_volume_node(np.ones((4, 4, 4), np.float32), np.eye(4), "T1", scene=scene)
    logic = PreprocessRunLogic()
    with pytest.raises(ValueError):
        logic.prepare(dict(PREPROCESS_DEFAULTS, outputFolder=str(tmp_path), **wrong), input_volume_node=volume)
    assert logic.work_dir is None and os.listdir(tmp_path) == []              # nothing exported, nothing written


def _labels():
    labels = np.zeros((30, 26, 22), dtype=np.int32)
    labels[5:14, 4:20, 3:18] = 2          # Left-Cerebral-White-Matter
    labels[16:25, 4:20, 3:18] = 41        # Right-Cerebral-White-Matter
    labels[8:12, 6:10, 6:9] = 17          # Left-Hippocampus
    labels[10:20, 20:23, 5:8] = 3         # Left-Cerebral-Cortex
    return labels


def _exported(path):
    import nibabel as nib

    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def _same_in_world(exported, affine, labels, labels_affine):
    """Every voxel of ``exported`` holds the value ``labels`` has at the same world position, and no label is lost."""
    offset = np.linalg.inv(labels_affine) @ affine
    assert np.allclose(offset[:3, :3], np.eye(3), atol=1e-5), "not on the original grid"
    start = np.round(offset[:3, 3]).astype(int)
    box = labels[tuple(slice(a, a + n) for a, n in zip(start, exported.shape))]
    assert np.array_equal(exported, box)
    assert (exported != 0).sum() == (labels != 0).sum()


def test_a_segmentation_node_is_exported_with_its_freesurfer_values(tmp_path):
    scene = slicer.vtkMRMLScene()
    labels = _labels()
    node = mrml.add_segmentation_node(labels, LIA, freesurfer_lut(), "T1 synthseg", scene=scene)
    exported, affine = _exported(export_segmentation_input(node, str(tmp_path / "seg")))
    assert sorted(np.unique(exported)) == [0, 2, 3, 17, 41]
    _same_in_world(exported, affine, labels, LIA)


def test_a_label_map_is_exported_as_it_is(tmp_path):
    scene = slicer.vtkMRMLScene()
    labels = _labels()
    node = mrml.add_volume_node(labels.astype(np.int16), LIA, "seg", scene=scene, class_name="vtkMRMLLabelMapVolumeNode")
    exported, affine = _exported(export_segmentation_input(node, str(tmp_path / "seg")))
    assert np.array_equal(exported, labels) and np.allclose(affine, LIA)


def test_a_segment_without_a_freesurfer_value_is_refused_in_one_line(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = mrml.add_segmentation_node(_labels(), LIA, freesurfer_lut(), "drawn", scene=scene)
    segment = slicer.vtkSegment()
    segment.SetName("my drawing")       # drawn by hand: a labelmap but no FreeSurfer value
    drawn = np.zeros((30, 26, 22), np.uint8)
    drawn[1:3, 1:3, 1:3] = 1
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(),
                              mrml.oriented_image(drawn, LIA))
    assert node.GetSegmentation().AddSegment(segment, "my drawing")
    with pytest.raises(ValueError) as error:
        export_segmentation_input(node, str(tmp_path / "seg"))
    assert "'my drawing'" in str(error.value) and "FreeSurfer label value" in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "seg").exists()
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(ValueError, match="empty"):
        export_segmentation_input(empty, str(tmp_path / "seg"))


def test_an_input_under_a_transform_already_is_not_moved(tmp_path):
    """Its export had that transform applied: putting it under the new one instead would be wrong."""
    from segsuite_slicer.preprocess_run import load_preprocessed
    from segsuite_slicer.preprocess_self_test import make_small_preprocess_outputs

    scene = slicer.vtkMRMLScene()
    t1 = mrml.add_volume_node(np.ones((4, 4, 4), np.float32), np.eye(4), "T1", scene=scene)
    placed = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "placed")
    t1.SetAndObserveTransformNodeID(placed.GetID())
    nodes = load_preprocessed(make_small_preprocess_outputs(str(tmp_path)), NLIN2009A, scene=scene, name="T1",
                              input_volume_node=t1)
    assert t1.GetParentTransformNode() is placed
    assert "tpm_overlap_gm 0.520" in nodes["status"] and "'T1' is under a transform already" in nodes["status"]
    other = mrml.add_volume_node(np.ones((4, 4, 4), np.float32), np.eye(4), "other", scene=scene)
    nodes = load_preprocessed(make_small_preprocess_outputs(str(tmp_path / "b")), NLIN2009A, scene=scene,
                              name="other", input_volume_node=other, modulated_gm=False)
    assert other.GetParentTransformNode() is nodes["transform"] and "modulated_gm" not in nodes
    assert "already" not in nodes["status"]


def _generator():
    spec = importlib.util.spec_from_file_location("make_module_resources", REPO_ROOT / "tools" / "make_module_resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_ui_file_is_what_the_generator_writes():
    generator = _generator()
    ui = REPO_ROOT / "SegmentationSuite" / "Resources" / "UI"
    expected = {f"{module}.ui": generator.engine_ui(module) for module in generator.ENGINE_OPTIONS}
    expected["SegmentationSuiteModels.ui"] = generator.models_ui()
    expected["SegmentationSuitePreprocess.ui"] = generator.preprocess_ui()
    assert sorted(path.name for path in ui.glob("*.ui")) == sorted(expected)
    for name, text in expected.items():
        assert (ui / name).read_text(encoding="utf-8") == text, f"{name}: rerun python tools/make_module_resources.py"


# ----------------------------------------------------------------------------- the widget on real MRML

class ComboBox(Widget):
    """QComboBox: setCurrentText selects the item and emits currentTextChanged when the text changes."""

    def setCurrentText(self, text):
        changed = text != self.currentText
        self.currentText = text
        if changed:
            self.currentTextChanged.emit(text)


class SpinBox(Widget):
    """QSpinBox / QDoubleSpinBox: a new value emits valueChanged."""

    @property
    def value(self):
        return getattr(self, "_value", 0)

    @value.setter
    def value(self, number):
        changed = number != getattr(self, "_value", 0)
        self._value = number
        if changed and hasattr(self, "valueChanged"):
            self.valueChanged.emit(number)


UI_NAMES = ["inputVolumeSelector", "segmentationSelector", "outputFolderHintLabel", "loadModulatedGMCheckBox",
            "inputUnderTransformCheckBox", "applyButton", "progressBar", "statusLabel", "logTextEdit"]


@pytest.fixture
def widget(monkeypatch, tmp_path):
    """The module's widget class on a real scene, its Qt widgets stood in for (as test_slicer_widget_lifecycle)."""
    qt = types.ModuleType("qt")
    qt.QSettings, qt.QTimer = Settings, Timer
    monkeypatch.setitem(sys.modules, "qt", qt)
    for name in ("segsuite_slicer.module_gui", "segsuite_slicer.preprocess_gui"):
        sys.modules.pop(name, None)
    from segsuite_slicer.preprocess_gui import PreprocessWidgetMixin
    from segsuite_slicer.preprocess_run import PreprocessRunLogic

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    app = types.SimpleNamespace(defaultScenePath=str(tmp_path / "docs"), processEvents=lambda: None)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    ui = types.SimpleNamespace(**{name: Widget() for name in UI_NAMES}, outputFolderPathLineEdit=PathLineEdit(),
                               **{name: ComboBox() for name in ("templateComboBox", "resolutionComboBox",
                                                                "registrationComboBox")},
                               **{name: SpinBox() for name in ("fwhmSpinBox", "threadsSpinBox")})
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: Widget(), raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui, raising=False)

    class Logic(PreprocessRunLogic):
        def getParameterNode(self):
            return singleton_parameter_node(scene, "SegmentationSuitePreprocess")

    class PreprocessWidget(PreprocessWidgetMixin, StandInWidget):
        module_name = "SegmentationSuitePreprocess"

    made = PreprocessWidget()
    made.setupEngineWidget(Logic())
    made.scene = scene
    monkeypatch.setattr(slicer.util, "selectModule", lambda name: None, raising=False)
    monkeypatch.setattr(slicer.util, "getModuleWidget", lambda name: made, raising=False)
    yield made
    made.cleanup()


def test_the_self_tests_widget_check_passes_on_real_mrml(widget):
    """preprocess_self_test.check_preprocess_widget_and_parameter_node (what ctest runs inside Slicer)."""
    from segsuite_slicer import preprocess_self_test

    assert widget.ui.templateComboBox.items == ["auto", "MNI152NLin2009cAsym", "MNI152NLin2009aSym"]
    preprocess_self_test.check_preprocess_widget_and_parameter_node(unittest.TestCase(), "SegmentationSuitePreprocess")
    widget.parameterNode.SetParameter("fwhm", "4")     # a wrong GUI -> node step is seen by the check
    widget.ui.fwhmSpinBox.valueChanged.slots.clear()
    with pytest.raises(AssertionError):
        preprocess_self_test.check_preprocess_widget_and_parameter_node(unittest.TestCase(), "SegmentationSuitePreprocess")


def test_without_a_segmentation_synthseg_packages_are_required_too(widget):
    assert widget.requiredEngines() == ["synthseg", "preprocess"]
    seg = mrml.add_volume_node(np.ones((3, 3, 3), np.int16), np.eye(4), "seg", scene=widget.scene,
                               class_name="vtkMRMLLabelMapVolumeNode")
    widget.parameterNode.SetNodeReferenceID("InputSegmentation", seg.GetID())
    assert widget.ui.segmentationSelector.currentNodeID == seg.GetID()
    assert widget.requiredEngines() == ["preprocess"]


@pytest.mark.slow
def test_apply_preprocesses_the_t1_and_loads_the_template_space_nodes(widget, monkeypatch, tmp_path):
    """The whole Apply: the T1 and its SAMSEG labels as nodes, the real `segsuite preprocess` at 2 mm in its
    process, then the template-space T1w, the transform (the input put under it) and the modulated GM as
    nodes, the QC values in the status line; a second Apply over the same folder asks before replacing."""
    import nibabel as nib

    from segsuite_slicer import install
    from segsuite_slicer.preprocess_self_test import preprocessed_node_problems

    t1_image = nib.load(shared_path("data", "t1", "t1_crop_2mm.nii.gz"))
    seg_image = nib.load(shared_path("data", "samseg", "t1_crop_2mm", "seg.mgz"))
    scene, ui, node = widget.scene, widget.ui, widget.parameterNode
    t1 = mrml.add_volume_node(np.asarray(t1_image.dataobj, np.float32), t1_image.affine, "t1_crop_2mm", scene=scene)
    seg = mrml.add_volume_node(np.asarray(seg_image.dataobj).astype(np.int16), seg_image.affine, "seg", scene=scene,
                               class_name="vtkMRMLLabelMapVolumeNode")
    errors, asked, layers = [], [], []
    monkeypatch.setattr(install, "ensure_requirements", lambda engine, ask=True: True)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)
    monkeypatch.setattr(slicer.util, "WaitCursor", __import__("contextlib").nullcontext, raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: layers.append(kw), raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or False,
                        raising=False)
    out = tmp_path / "prep"
    node.SetNodeReferenceID("InputVolume", t1.GetID())
    node.SetNodeReferenceID("InputSegmentation", seg.GetID())
    for name, value in (("template", NLIN2009A), ("resolution", "2"), ("inputUnderTransform", "true"),
                        ("outputFolder", str(out)), ("threads", "2")):
        node.SetParameter(name, value)
    ui.applyButton.click()
    assert errors == [] and ui.applyButton.text == "Cancel"
    _finish(widget, timeout=300)
    assert errors == [], errors
    volume = scene.GetFirstNodeByName(f"t1_crop_2mm space-{NLIN2009A} T1w")
    transform = scene.GetFirstNodeByName(f"t1_crop_2mm to {NLIN2009A}")
    gm = scene.GetFirstNodeByName(f"t1_crop_2mm space-{NLIN2009A} GM modulated")
    status = ui.statusLabel.text
    nodes = {"volume": volume, "transform": transform, "status": status,
             "metrics": {name: float(status.split(name + " ")[1][:5]) for name in ("tpm_overlap_gm", "tpm_overlap_wm")}}
    assert preprocessed_node_problems(nodes, NLIN2009A) == []
    assert "inu_range" in status and layers[-1]["background"] is volume and layers[-1]["foreground"] is gm
    assert t1.GetParentTransformNode() is transform                         # the input shown in template space
    written = nib.load(out / f"t1_crop_2mm_space-{NLIN2009A}_desc-preproc_T1w.nii.gz")
    assert np.allclose(mrml.volume_node_geometry(volume), written.affine, atol=1e-4)
    assert np.allclose(mrml.array_affine_from_volume_node(volume)[0], np.asarray(written.dataobj), atol=1e-3)
    assert np.linalg.norm(written.affine[:3, 0]) == pytest.approx(2.0)    # the 2 mm grid asked for
    assert ui.applyButton.text == "Apply" and widget.logic.work_dir is None  # the exported input is gone
    # Apply again over the same folder: the user is asked, says no, nothing runs and nothing changes.
    t1.SetAndObserveTransformNodeID(None)
    before = (out / f"t1_crop_2mm_desc-preproc_qc.json").stat().st_mtime_ns
    ui.applyButton.click()
    assert len(asked) == 1 and "t1_crop_2mm_desc-preproc_T1w.nii.gz" in asked[0]
    assert "existing results are kept" in ui.statusLabel.text
    assert (out / f"t1_crop_2mm_desc-preproc_qc.json").stat().st_mtime_ns == before
