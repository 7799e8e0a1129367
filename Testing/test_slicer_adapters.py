"""Slicer adapters on real MRML (the slicer-core wheel, no GUI): segmentation nodes, tables, .seg.nrrd.

Geometry is checked in world space: every voxel of every segment must sit exactly where the same
label sits in the input, for right-handed (RAS), left-handed (FreeSurfer LIA) and oblique grids.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
mrml = pytest.importorskip("segsuite_slicer.mrml")

from segsuite.labels import Label, LabelTable, freesurfer_lut  # noqa: E402
from segsuite.result import SegmentationResult  # noqa: E402
from segsuite.result_io import load_result_bundle, save_result_bundle  # noqa: E402
from segsuite.terminology import TerminologyEntry, terminology_for  # noqa: E402

LEFT, RIGHT = "7771000", "24028007"


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(kind: str) -> np.ndarray:
    affine = np.eye(4)
    if kind == "RAS":
        affine[:3, :3] = np.diag([1.0, 1.2, 1.5])
        affine[:3, 3] = [-10.0, 5.0, 3.25]
    elif kind == "LIA":  # FreeSurfer conformed orientation: left-handed
        affine[:3, :3] = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
        affine[:3, 3] = [12.0, -8.0, 9.0]
    elif kind == "oblique":  # rotated, anisotropic, left-handed (one axis flipped)
        affine[:3, :3] = _rotation(0.3, -0.2, 0.5) @ np.diag([0.9, -1.1, 2.0])
        affine[:3, 3] = [-3.3, 14.1, -7.7]
    else:
        raise ValueError(kind)
    return affine


# A value no colour table names, to check the generic fallback.
UNNAMED = 12345


def _labels(shape=(18, 21, 15), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    blobs = [(17, (3, 4, 3)), (53, (12, 4, 3)), (2, (3, 12, 8)), (41, (12, 12, 8)), (24, (8, 8, 5)),
             (1035, (5, 15, 11)), (1015, (13, 16, 10)), (UNNAMED, (8, 2, 12))]
    for value, (i, j, k) in blobs:
        size = rng.integers(2, 5, size=3)
        labels[i:i + size[0], j:j + size[1], k:k + size[2]] = value
    labels[0, 0, 0] = 17  # a corner voxel: catches off-by-one crops and flips
    return labels


def _result(kind="RAS", subject="sub-01", labels=None) -> SegmentationResult:
    labels = _labels() if labels is None else labels
    lut = freesurfer_lut()
    table = lut.subset([0] + sorted({int(v) for v in np.unique(labels) if v}))
    voxel = abs(np.linalg.det(_affine(kind)[:3, :3]))
    volumes = {table.name(v): float((labels == v).sum() * voxel) for v in table.values if v}
    return SegmentationResult(labels=labels, affine=_affine(kind), label_table=table, volumes=volumes,
                              qc={"general white matter": 0.91, "hippocampus+amygdala": 0.62},
                              measures={"eTIV": 1.5e6}, tables={"confidences": {table.name(17): 0.8}},
                              units={"volumes": "mm3", "qc": "", "eTIV": "mm3", "confidences": ""},
                              subject=subject)


def _world_points(mask: np.ndarray, affine: np.ndarray, start=(0, 0, 0)) -> np.ndarray:
    ijk = np.argwhere(mask) + np.asarray(start)
    return (affine[:3, :3] @ ijk.T).T + affine[:3, 3]


def _assert_same_voxels(points: np.ndarray, labels: np.ndarray, affine: np.ndarray, value: int):
    """The world points are exactly the voxel centres of ``labels == value`` on ``affine``'s grid."""
    ijk = (np.linalg.inv(affine) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    rounded = np.rint(ijk)
    assert np.abs(ijk - rounded).max(initial=0) < 1e-4, "segment voxels are off the input grid"
    found = {tuple(v) for v in rounded.astype(int)}
    expected = {tuple(v) for v in np.argwhere(labels == value)}
    assert found == expected


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_terminology_table_is_well_formed_and_matches_the_lut():
    from segsuite.terminology import terminology_table

    lut = freesurfer_lut()
    table = terminology_table()
    assert len(table) >= 30
    for value, (name, entry) in table.items():
        assert lut.name(value) == name
        parsed = TerminologyEntry.parse(entry)
        assert parsed.category.value == "123037004" and parsed.type.scheme == "SCT"
        assert parsed.to_string() == entry
    # Spellings from older colour tables map to the same entry.
    assert terminology_for("Left-Nucleas-Accumbens") == terminology_for("Left-Accumbens-area")
    assert terminology_for("Left-Thalamus-Proper") == terminology_for("Left-Thalamus")
    assert terminology_for("ctx-lh-precuneus") is None


@pytest.mark.parametrize("kind", ["RAS", "LIA", "oblique"])
def test_segmentation_node_matches_labels_in_world_space(scene, kind):
    result = _result(kind)
    node = mrml.add_segmentation_from_result(result, scene=scene)
    segmentation = node.GetSegmentation()
    present = result.present_labels
    assert segmentation.GetNumberOfSegments() == len(present)
    lut = freesurfer_lut()
    for value in present:
        name = lut.name(value) if value in lut else f"Label-{value}"
        segment = segmentation.GetSegment(name)
        assert segment is not None, f"segment id {name!r} missing"
        assert segment.GetName() == name
        if value in lut:
            expected_color = np.array(lut.color(value)) / 255.0
            assert np.allclose(segment.GetColor(), expected_color, atol=1e-6)
        mask, image_affine, start = mrml.segment_binary_labelmap(node, name)
        _assert_same_voxels(_world_points(mask, image_affine, start), result.labels, result.affine, value)


def test_segment_names_colours_terminology_exactly(scene):
    result = _result("LIA")
    node = mrml.add_segmentation_from_result(result, scene=scene, name="Seg")
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Left-Cerebral-White-Matter", "Left-Hippocampus", "CSF", "Right-Cerebral-White-Matter",
                     "Right-Hippocampus", "ctx-lh-middletemporal", "ctx-lh-insula", f"Label-{UNNAMED}"]
    ids = list(segmentation.GetSegmentIDs())
    assert ids == names
    terms = {name: mrml.segment_terminology(segmentation.GetSegment(name)) for name in names}
    hippocampus = TerminologyEntry.parse(terms["Left-Hippocampus"])
    assert (hippocampus.type.value, hippocampus.type.meaning, hippocampus.type_modifier.value) == (
        "5366008", "Hippocampus", LEFT)
    assert TerminologyEntry.parse(terms["Right-Cerebral-White-Matter"]).type_modifier.value == RIGHT
    assert TerminologyEntry.parse(terms["ctx-lh-insula"]).type.value == "36169008"
    assert TerminologyEntry.parse(terms["CSF"]).type.value == "65216001"
    # No standard code: the segment keeps its name and has no (or an empty-category) terminology.
    for name in ("ctx-lh-middletemporal", f"Label-{UNNAMED}"):
        term = terms[name]
        assert not term or TerminologyEntry.parse(term).type.value in ("", "85756007")
    assert [mrml.segment_label_value(segmentation.GetSegment(n)) for n in names] == [
        2, 17, 24, 41, 53, 1015, 1035, UNNAMED]


def test_include_empty_adds_every_table_label(scene):
    labels = np.zeros((5, 5, 5), dtype=np.int32)
    labels[1:3, 1:3, 1:3] = 17
    table = LabelTable([Label(0, "Unknown", (0, 0, 0)), Label(17, "Left-Hippocampus", (220, 216, 20)),
                        Label(53, "Right-Hippocampus", (220, 216, 20))])
    node = mrml.add_segmentation_node(labels, np.eye(4), table, "s", scene=scene, include_empty=True)
    assert list(node.GetSegmentation().GetSegmentIDs()) == ["Left-Hippocampus", "Right-Hippocampus"]
    mask, _, _ = mrml.segment_binary_labelmap(node, "Right-Hippocampus")
    assert not mask.any()


def test_reference_geometry_is_the_whole_input_grid(scene):
    result = _result("oblique")
    node = mrml.add_segmentation_from_result(result, scene=scene)
    geometry = node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image)
    extent = image.GetExtent()
    assert [extent[1] + 1, extent[3] + 1, extent[5] + 1] == list(result.labels.shape)
    assert np.allclose(mrml.world_geometry(image), result.affine, atol=1e-6)


@pytest.mark.parametrize("kind", ["RAS", "LIA", "oblique"])
def test_volume_node_round_trip(scene, kind):
    rng = np.random.default_rng(1)
    array = rng.normal(size=(7, 6, 5)).astype(np.float32)
    node = mrml.add_volume_node(array, _affine(kind), "vol", scene=scene)
    back, affine = mrml.array_affine_from_volume_node(node)
    assert np.array_equal(back, array)
    assert np.allclose(affine, _affine(kind), atol=1e-9)


def test_volume_node_under_linear_transform(scene):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    node = mrml.add_volume_node(array, _affine("RAS"), "vol", scene=scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = np.eye(4)
    shift[:3, 3] = [1, 2, 3]
    transform.SetMatrixTransformToParent(mrml.vtk_matrix(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    _, affine = mrml.array_affine_from_volume_node(node)
    assert np.allclose(affine, shift @ _affine("RAS"))


def test_posterior_volumes(scene):
    result = _result("LIA")
    shape = result.labels.shape
    result.posteriors = np.random.default_rng(2).random(shape + (3,)).astype(np.float32)
    result.posterior_labels = [0, 17, 53]
    result.posteriors_affine = result.affine
    nodes = mrml.add_posterior_volumes(result, scene=scene, base_name="sub-01", values=[17, 53])
    assert [n.GetName() for n in nodes] == ["sub-01 posterior Left-Hippocampus", "sub-01 posterior Right-Hippocampus"]
    array, affine = mrml.array_affine_from_volume_node(nodes[1])
    assert np.array_equal(array, result.posteriors[..., 2])
    assert np.allclose(affine, result.affine)


def test_volumes_table_columns_units_values(scene):
    result = _result("RAS")
    result.volumes = {"total intracranial": 1234.5, **result.volumes}
    node = mrml.add_volumes_table(result, scene=scene)
    columns = mrml.table_to_dict(node)
    assert list(columns) == ["Structure", "Label", "Volume", "Confidences"]
    assert columns["Structure"] == list(result.volumes)
    assert columns["Volume"] == pytest.approx(list(result.volumes.values()))
    assert columns["Label"] == [-1, 2, 17, 24, 41, 53, 1015, 1035, UNNAMED]
    assert node.GetColumnUnitLabel("Volume") == "mm3"
    assert node.GetColumnTitle("Volume") == "Volume [mm3]"
    confidences = columns["Confidences"]
    assert confidences[columns["Structure"].index("Left-Hippocampus")] == pytest.approx(0.8)
    assert mrml.is_nan(confidences[columns["Structure"].index("CSF")])


def test_qc_table_columns_units_values(scene):
    result = _result("RAS")
    columns = mrml.table_to_dict(mrml.add_qc_table(result, scene=scene))
    assert list(columns) == ["Measure", "Value", "Unit"]
    assert columns["Measure"] == ["general white matter", "hippocampus+amygdala", "eTIV"]
    assert columns["Value"] == pytest.approx([0.91, 0.62, 1.5e6])
    assert columns["Unit"] == ["", "", "mm3"]


def test_batch_table_one_row_per_subject(scene):
    first = _result("RAS", subject="sub-01")
    second = _result("LIA", subject="sub-02", labels=np.where(_labels() == 24, 0, _labels()))
    node = mrml.add_batch_table([first, second], kind="volumes", scene=scene, name="All volumes")
    columns = mrml.table_to_dict(node)
    assert columns["Subject"] == ["sub-01", "sub-02"]
    assert list(columns)[1:] == list(first.volumes)  # union, in first-seen order
    assert columns["CSF"][0] == pytest.approx(first.volumes["CSF"])
    assert mrml.is_nan(columns["CSF"][1])
    assert columns["Left-Hippocampus"] == pytest.approx([first.volumes["Left-Hippocampus"],
                                                          second.volumes["Left-Hippocampus"]])
    assert node.GetColumnUnitLabel("Left-Hippocampus") == "mm3"
    qc = mrml.table_to_dict(mrml.add_batch_table([first, second], kind="qc", scene=scene))
    assert list(qc) == ["Subject", "general white matter", "hippocampus+amygdala"]


@pytest.mark.parametrize("kind", ["RAS", "LIA", "oblique"])
def test_seg_nrrd_read_back_by_slicerio(scene, tmp_path, kind):
    slicerio = pytest.importorskip("slicerio")
    result = _result(kind)
    node = mrml.add_segmentation_from_result(result, scene=scene)
    path = str(tmp_path / "result.seg.nrrd")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(path)
    assert storage.WriteData(node), "writing the .seg.nrrd failed"

    read = slicerio.read_segmentation(path)
    lut = freesurfer_lut()
    by_name = {segment["name"]: segment for segment in read["segments"]}
    expected_names = [lut.name(v) if v in lut else f"Label-{v}" for v in result.present_labels]
    assert sorted(by_name) == sorted(expected_names)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    ijk_to_ras = lps_to_ras @ np.asarray(read["ijkToLPS"])
    voxels = np.asarray(read["voxels"])
    for value, name in zip(result.present_labels, expected_names):
        segment = by_name[name]
        assert segment["id"] == name
        if value in lut:
            assert np.allclose(segment["color"], np.array(lut.color(value)) / 255.0, atol=1e-5)
        entry = terminology_for(name)
        if entry:
            parsed = TerminologyEntry.parse(entry)
            assert segment["terminology"]["type"] == [parsed.type.scheme, parsed.type.value, parsed.type.meaning]
        layer = voxels if voxels.ndim == 3 else voxels[..., segment.get("layer", 0)]
        mask = layer == segment["labelValue"]
        _assert_same_voxels(_world_points(mask, ijk_to_ras), result.labels, result.affine, value)


def test_result_bundle_round_trip_keeps_everything(tmp_path):
    result = _result("oblique")
    result.posteriors = np.random.default_rng(3).random(result.labels.shape + (2,)).astype(np.float32)
    result.posterior_labels = [0, 17]
    result.posteriors_affine = result.affine
    result.qc["missing"] = float("nan")
    result.provenance = {"model": "test", "options": {"parc": True}}
    again = load_result_bundle(save_result_bundle(result, tmp_path / "bundle"))
    assert np.array_equal(again.labels, result.labels)
    assert np.array_equal(again.affine, result.affine)  # float64 exactly, not NIfTI's float32
    assert [(l.value, l.name, l.color) for l in again.label_table] == [
        (l.value, l.name, l.color) for l in result.label_table]
    assert again.volumes == result.volumes and again.measures == result.measures
    assert math.isnan(again.qc.pop("missing")) and again.qc == {k: v for k, v in result.qc.items() if k != "missing"}
    assert again.tables == result.tables and again.units == result.units
    assert again.provenance == result.provenance and again.subject == result.subject
    assert np.array_equal(again.posteriors, result.posteriors) and again.posterior_labels == [0, 17]
