"""SegmentationResult -> MRML: segmentation nodes, volume nodes and table nodes.

Works in the Slicer application and with the ``slicer-core`` wheel (real MRML without the GUI):
every function takes the scene explicitly (default: ``slicer.mrmlScene`` inside Slicer).

Geometry: numpy label maps are indexed [i, j, k] with ``affine`` mapping (i, j, k, 1) to RAS, the
nibabel convention. VTK images store i fastest, so the array goes to VTK in [k, j, i] memory order
and the affine becomes the image-to-world matrix unchanged; left-handed (e.g. FreeSurfer's LIA)
and oblique affines need no special case.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from segsuite.labels import LabelTable
from segsuite.result import SegmentationResult
from segsuite.terminology import terminology_for

from .run_rules import NOT_SCALAR_INPUT_CLASSES

# Segment tag holding the FreeSurfer label value, so scripts can map segments back to labels.
LABEL_VALUE_TAG = "SegmentationSuite.LabelValue"


# ----------------------------------------------------------------------------- helpers

def _scene(scene):
    if scene is not None:
        return scene
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise ValueError("no MRML scene: pass scene=... (outside the Slicer application there is no slicer.mrmlScene)")
    return scene


def vtk_matrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            result.SetElement(row, column, float(matrix[row, column]))
    return result


def numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _smallest_label_dtype(labels: np.ndarray):
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    raise ValueError(f"label values {low}..{high} do not fit a 32-bit integer")


def _vtk_image_from_array(array: np.ndarray, extent_start: Sequence[int] = (0, 0, 0), image=None):
    """Fill a vtkImageData (or subclass) from an [i, j, k] array, keeping its index offset."""
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a 3D (or 3D + components) array, got shape {array.shape}")
    image = image if image is not None else vtk.vtkImageData()
    size = array.shape[:3]
    components = array.shape[3] if array.ndim == 4 else 1
    start = [int(v) for v in extent_start]
    image.SetExtent(start[0], start[0] + size[0] - 1, start[1], start[1] + size[1] - 1, start[2], start[2] + size[2] - 1)
    # [i, j, k(, c)] -> memory with i fastest: Fortran order over the first three axes.
    if array.ndim == 3:
        flat = np.ascontiguousarray(array.transpose(2, 1, 0)).reshape(-1)
    else:
        flat = np.ascontiguousarray(array.transpose(2, 1, 0, 3)).reshape(-1, components)
    scalars = numpy_support.numpy_to_vtk(flat, deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def array_from_vtk_image(image) -> np.ndarray:
    """The scalars of a vtkImageData as an [i, j, k] array (a copy)."""
    extent = image.GetExtent()
    size = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(size) <= 0 or image.GetPointData().GetScalars() is None:
        return np.zeros([max(s, 0) for s in size], dtype=np.uint8)
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(size[::-1]).transpose(2, 1, 0).copy()


def oriented_image(array: np.ndarray, affine: np.ndarray, extent_start: Sequence[int] = (0, 0, 0)):
    """A vtkOrientedImageData whose voxel (i, j, k) sits at ``affine @ (i, j, k, 1)``."""
    image = _vtk_image_from_array(array, extent_start, slicer.vtkOrientedImageData())
    image.SetGeometryFromImageToWorldMatrix(vtk_matrix(affine))
    return image


def world_geometry(image) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return numpy_matrix(matrix)


# ----------------------------------------------------------------------------- volumes

def volume_node_geometry(volume_node) -> np.ndarray:
    """IJK -> world RAS of a volume node, parent linear transforms included."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    affine = numpy_matrix(ijk_to_ras)
    transform_node = volume_node.GetParentTransformNode()
    if transform_node is not None:
        if not transform_node.IsTransformToWorldLinear():
            raise ValueError(f"volume {volume_node.GetName()!r} is under a non-linear transform: harden it first")
        to_world = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformToWorld(to_world)
        affine = numpy_matrix(to_world) @ affine
    return affine


def array_affine_from_volume_node(volume_node) -> tuple[np.ndarray, np.ndarray]:
    """(array [i, j, k], affine) of a scalar volume node, ready for a segsuite engine or NIfTI file."""
    image = volume_node.GetImageData()
    if image is None:
        raise ValueError(f"volume {volume_node.GetName()!r} has no image data")
    return array_from_vtk_image(image), volume_node_geometry(volume_node)


def add_volume_node(array: np.ndarray, affine: np.ndarray, name: str, scene=None,
                    class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new scalar (or label map) volume node holding ``array`` on the grid of ``affine``."""
    scene = _scene(scene)
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAndObserveImageData(_vtk_image_from_array(np.asarray(array)))
    node.SetIJKToRASMatrix(vtk_matrix(affine))
    node.CreateDefaultDisplayNodes()
    return node


def add_posterior_volumes(result: SegmentationResult, scene=None, base_name: str = "",
                          values: Optional[Iterable[int]] = None) -> list:
    """One float volume per posterior channel (optionally only some label values)."""
    if result.posteriors is None:
        return []
    table = result.label_table
    channel_values = result.posterior_labels or list(range(result.posteriors.shape[-1]))
    wanted = None if values is None else {int(v) for v in values}
    nodes = []
    for channel, value in enumerate(channel_values):
        if wanted is not None and int(value) not in wanted:
            continue
        label = table.get(int(value))
        label_name = label.name if label is not None else f"Label-{value}"
        name = f"{base_name} posterior {label_name}".strip()
        nodes.append(add_volume_node(np.asarray(result.posteriors[..., channel], dtype=np.float32),
                                     result.posteriors_affine, name, scene))
    return nodes


# ----------------------------------------------------------------------------- segmentations

def _set_segment_terminology(segment, entry: str) -> None:
    if hasattr(segment, "SetTerminology"):  # Slicer >= 5.7
        segment.SetTerminology(entry)
    else:
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


def segment_terminology(segment) -> str:
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    return _get_tag(segment, segment.GetTerminologyEntryTagName())


def segment_label_value(segment) -> Optional[int]:
    """The FreeSurfer label value a segment was made from (its tag), or None."""
    value = _get_tag(segment, LABEL_VALUE_TAG)
    return int(value) if value else None


def _get_tag(segment, key: str) -> str:
    holder = vtk.reference("") if hasattr(vtk, "reference") else vtk.mutable("")
    return str(holder) if segment.GetTag(key, holder) else ""


def _bounding_box(mask: np.ndarray) -> Optional[tuple[slice, slice, slice]]:
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def add_segmentation_node(labels: np.ndarray, affine: np.ndarray, label_table: LabelTable, name: str,
                          scene=None, reference_volume_node=None, include_empty: bool = False,
                          segmentation_node=None, replace: bool = False):
    """A segmentation node with one segment per label: FreeSurfer names, colours and terminology.

    Segment IDs are the label names (stable, so scripts can find "Left-Hippocampus"); every
    segment carries its label value in the tag ``SegmentationSuite.LabelValue``. All segments
    share one labelmap, cropped to the labelled region, on exactly the input grid.

    ``replace=True`` with an existing ``segmentation_node`` (the user chose one as the output):
    the node, its display node and the IDs of the segments the new result also has are kept (their
    labelmap is replaced; name, colour and display properties stay); segments it lacks are removed.
    """
    scene = _scene(scene)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D, got shape {labels.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    present = [int(v) for v in np.unique(labels) if v != 0]
    values = [label.value for label in label_table if label.value != 0] if include_empty else present
    table = label_table.subset(values)  # unknown values get a generic name and colour

    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    if hasattr(segmentation_node, "SetSourceRepresentationToBinaryLabelmap"):
        segmentation_node.SetSourceRepresentationToBinaryLabelmap()
    else:  # Slicer < 5.4
        segmentation_node.SetMasterRepresentationToBinaryLabelmap()

    # The reference geometry is the whole input grid, so editing and export happen on it.
    if reference_volume_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    else:
        full_grid = slicer.vtkOrientedImageData()
        full_grid.SetExtent(0, labels.shape[0] - 1, 0, labels.shape[1] - 1, 0, labels.shape[2] - 1)
        full_grid.SetGeometryFromImageToWorldMatrix(vtk_matrix(affine))
        segmentation_node.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(full_grid))

    box = _bounding_box(labels != 0)
    if box is None:
        box = (slice(0, 1),) * 3
    cropped = labels[box].astype(_smallest_label_dtype(labels), copy=False)
    shared = oriented_image(cropped, affine, extent_start=[s.start for s in box])
    representation = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()

    segmentation = segmentation_node.GetSegmentation()
    was_modifying = segmentation_node.StartModify()
    try:
        if replace:
            # derived representations (the 3D surface) describe the old labels: made again on request
            for representation_name in _derived_representation_names(segmentation):
                segmentation.RemoveRepresentation(representation_name)
            keep = {label.name for label in table}
            for segment_id in list(segmentation.GetSegmentIDs()):
                if segment_id not in keep:
                    segmentation.RemoveSegment(segment_id)
        for label in table:
            existing = segmentation.GetSegment(label.name) if replace else None
            if existing is not None:  # same ID: the user's name, colour and display properties stay
                existing.SetLabelValue(label.value)
                existing.SetTag(LABEL_VALUE_TAG, str(label.value))
                existing.AddRepresentation(representation, shared)
                continue
            segment = slicer.vtkSegment()
            segment.SetName(label.name)
            segment.SetColor(*(channel / 255.0 for channel in label.color))
            segment.SetLabelValue(label.value)
            segment.SetTag(LABEL_VALUE_TAG, str(label.value))
            entry = terminology_for(label.name, label.value)
            if entry:
                _set_segment_terminology(segment, entry)
            segment.AddRepresentation(representation, shared)
            segment_id = label.name if segmentation.GetSegment(label.name) is None else ""
            if not segmentation.AddSegment(segment, segment_id):
                raise RuntimeError(f"could not add segment {label.name!r} to {name!r}")
    finally:
        segmentation_node.EndModify(was_modifying)
    return segmentation_node


def add_segmentation_from_result(result: SegmentationResult, scene=None, name: Optional[str] = None,
                                 reference_volume_node=None, include_empty: bool = False, segmentation_node=None):
    """The result's label map as a segmentation node (see add_segmentation_node); with
    ``segmentation_node`` that node's content is replaced instead (kept: node, display, segment IDs)."""
    name = name or (f"{result.subject} segmentation" if result.subject else "Segmentation")
    return add_segmentation_node(result.labels, result.affine, result.label_table, name, scene=scene,
                                 reference_volume_node=reference_volume_node, include_empty=include_empty,
                                 segmentation_node=segmentation_node, replace=segmentation_node is not None)


def _source_representation_name(segmentation) -> str:
    if hasattr(segmentation, "GetSourceRepresentationName"):
        return segmentation.GetSourceRepresentationName()
    return segmentation.GetMasterRepresentationName()  # Slicer < 5.4


def _derived_representation_names(segmentation) -> list[str]:
    """The derived representations an output node may hold (the 3D surface), not its source."""
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    if surface != _source_representation_name(segmentation) and segmentation.ContainsRepresentation(surface):
        return [surface]
    return []


def show_segmentation_in_3d(segmentation_node, show: bool = True) -> bool:
    """What Slicer's "Show 3D" button does (qMRMLSegmentationShow3DButton::onToggled, v5.10.0): on,
    make the closed-surface representation and show it in 3D (the labelmap stays the 2D one); off,
    remove the surface unless it is the source. True when the surface is there afterwards."""
    segmentation = segmentation_node.GetSegmentation()
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    labelmap = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    source = _source_representation_name(segmentation)
    was_modifying = segmentation_node.StartModify()
    try:
        if show:
            if segmentation.CreateRepresentation(surface):
                display = segmentation_node.GetDisplayNode()
                if display is not None:
                    display.SetPreferredDisplayRepresentationName3D(surface)
                    if segmentation.ContainsRepresentation(labelmap):
                        display.SetPreferredDisplayRepresentationName2D(labelmap)
        elif source != surface:
            segmentation.RemoveRepresentation(surface)
    finally:
        segmentation_node.EndModify(was_modifying)
    return bool(segmentation.ContainsRepresentation(surface))


def segment_binary_labelmap(segmentation_node, segment_id: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(mask [i, j, k] as bool, image-to-world affine, extent start) of one segment."""
    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    extent = image.GetExtent()
    return array_from_vtk_image(image) != 0, world_geometry(image), (extent[0], extent[2], extent[4])


# ----------------------------------------------------------------------------- tables

def _table_node(scene, name: str):
    node = _scene(scene).AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetUseColumnTitleAsColumnHeader(True)
    return node


def _add_column(node, name: str, values: Sequence, kind: str = "double", unit: str = "", description: str = ""):
    array = vtk.vtkStringArray() if kind == "string" else (vtk.vtkIntArray() if kind == "int" else vtk.vtkDoubleArray())
    array.SetName(name)
    for value in values:
        if kind == "string":
            array.InsertNextValue(str(value))
        elif kind == "int":
            array.InsertNextValue(int(value))
        else:
            array.InsertNextValue(float("nan") if value is None else float(value))
    node.AddColumn(array)
    if unit:
        node.SetColumnUnitLabel(name, unit)
    node.SetColumnTitle(name, f"{name} [{unit}]" if unit else name)
    if description:
        node.SetColumnDescription(name, description)
    return array


def _unit(result: SegmentationResult, key: str, default: str = "") -> str:
    return result.units.get(key, default)


def add_volumes_table(result: SegmentationResult, scene=None, name: Optional[str] = None):
    """One row per structure: label value, name and volume (unit from result.units['volumes'])."""
    node = _table_node(scene, name or (f"{result.subject} volumes" if result.subject else "Volumes"))
    names = list(result.volumes)
    values = []
    for structure in names:
        try:
            values.append(result.label_table.by_name(structure).value)
        except KeyError:
            values.append(-1)  # totals such as "total intracranial" have no label
    _add_column(node, "Structure", names, kind="string")
    _add_column(node, "Label", values, kind="int", description="FreeSurfer label value (-1: not a single label)")
    _add_column(node, "Volume", [result.volumes[n] for n in names], unit=_unit(result, "volumes", "mm3"))
    for table_name, column in result.tables.items():
        _add_column(node, table_name.capitalize(), [column.get(n) for n in names], unit=_unit(result, table_name))
    node.Modified()
    return node


def add_qc_table(result: SegmentationResult, scene=None, name: Optional[str] = None):
    """One row per QC score and per other measure (eTIV, ...), with units."""
    node = _table_node(scene, name or (f"{result.subject} QC" if result.subject else "QC"))
    rows = [(key, value, _unit(result, "qc")) for key, value in result.qc.items()]
    rows += [(key, value, _unit(result, key, _unit(result, "measures"))) for key, value in result.measures.items()]
    _add_column(node, "Measure", [row[0] for row in rows], kind="string")
    _add_column(node, "Value", [row[1] for row in rows])
    _add_column(node, "Unit", [row[2] for row in rows], kind="string")
    node.Modified()
    return node


def add_batch_table(results: Sequence[SegmentationResult], kind: str = "volumes", scene=None,
                    name: Optional[str] = None):
    """One row per subject, one column per structure/score, for 'volumes', 'qc', 'measures' or a
    name in result.tables. Columns are the union over subjects; a missing value is NaN."""
    node = _table_node(scene, name or f"Batch {kind}")

    def values_of(result):
        if kind in ("volumes", "qc", "measures"):
            return getattr(result, kind)
        return result.tables.get(kind, {})

    columns: list[str] = []
    for result in results:
        columns += [key for key in values_of(result) if key not in columns]
    _add_column(node, "Subject", [result.subject for result in results], kind="string")
    for column in columns:
        unit = ""
        for result in results:
            if column in values_of(result):
                unit = _unit(result, column, _unit(result, kind, "mm3" if kind == "volumes" else ""))
                break
        _add_column(node, column, [values_of(result).get(column) for result in results], unit=unit)
    node.Modified()
    return node


def table_to_dict(table_node) -> dict[str, list]:
    """Columns of a table node as Python lists (NaN kept as float('nan'))."""
    table = table_node.GetTable()
    columns = {}
    for index in range(table.GetNumberOfColumns()):
        array = table.GetColumn(index)
        values = [array.GetValue(row) for row in range(array.GetNumberOfTuples())]
        columns[array.GetName()] = values
    return columns


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


# ----------------------------------------------------------------------------- inputs and charts



def check_scalar_volume_node(volume_node, allow_label_map: bool = False) -> None:
    """A clear error unless ``volume_node`` is a plain scalar volume with one component
    (or, with ``allow_label_map``, a label map: the SAMSEG filter reads a segmentation)."""
    if volume_node is None:
        raise ValueError("choose an input volume")
    name = volume_node.GetName()
    for class_name in NOT_SCALAR_INPUT_CLASSES:
        if allow_label_map and class_name == "vtkMRMLLabelMapVolumeNode":
            continue
        if volume_node.IsA(class_name):
            kind = class_name[len("vtkMRML"):-len("VolumeNode")]
            raise ValueError(f"the input {name!r} is a {kind} volume: choose a scalar (grey-scale) image "
                             "such as a T1-weighted MRI")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(f"the input {name!r} is a {volume_node.GetClassName()}, not a scalar volume")
    image = volume_node.GetImageData()
    if image is None:
        raise ValueError(f"volume {name!r} has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"the input {name!r} has {image.GetNumberOfScalarComponents()} components per voxel: "
                         "choose a single-component scalar volume (extract one component first)")


def add_score_chart(scores: dict, name: str, thresholds: Sequence[float] = (), scene=None,
                    y_title: str = "score") -> dict:
    """A bar chart of ``scores`` (one bar per name) with each flag threshold as a horizontal line.

    Returns {"chart", "table", "series": [bar, line...]}: a vtkMRMLPlotChartNode drawing
    vtkMRMLPlotSeriesNodes over one vtkMRMLTableNode (columns: Index, Name, Score, Threshold i).
    """
    scene = _scene(scene)
    names = list(scores)
    table = _table_node(scene, f"{name} table")
    _add_column(table, "Index", list(range(len(names))))
    _add_column(table, "Name", names, kind="string")
    _add_column(table, "Score", [scores[n] for n in names])
    threshold_columns = []
    for index, value in enumerate(thresholds):
        column = f"Threshold {index + 1}"
        _add_column(table, column, [float(value)] * len(names))
        threshold_columns.append((column, float(value)))
    table.Modified()

    bars = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} scores")
    bars.SetAndObserveTableNodeID(table.GetID())
    bars.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    bars.SetXColumnName("Index")
    bars.SetYColumnName("Score")
    bars.SetLabelColumnName("Name")
    bars.SetColor(0.2, 0.45, 0.8)
    series = [bars]
    for column, value in threshold_columns:
        line = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} flag at {value:g}")
        line.SetAndObserveTableNodeID(table.GetID())
        line.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
        line.SetXColumnName("Index")
        line.SetYColumnName(column)
        line.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        line.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
        line.SetColor(0.85, 0.1, 0.1)
        series.append(line)

    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    for node in series:
        chart.AddAndObservePlotSeriesNodeID(node.GetID())
    chart.SetTitle(name)
    chart.SetXAxisTitle("structure")
    chart.SetYAxisTitle(y_title)
    chart.SetLegendVisibility(True)
    return {"chart": chart, "table": table, "series": series}


def add_morphometry_columns(volumes_node, qc_node, tiv: float, metrics: dict, definitions: Optional[dict] = None,
                            target_tiv: float = 1_500_000.0) -> None:
    """Morphometry in the tables Slicer shows: a TIV-proportional column (volume / TIV x 1.5 L) in the
    volumes table and one QC-table row per image-quality metric, whose unit cell names its definition
    (spec_* the UK Biobank sMRI spec's, mriqc_* MRIQC's)."""
    volume_column = volumes_node.GetTable().GetColumnByName("Volume")
    proportional = [volume_column.GetValue(row) / tiv * target_tiv for row in range(volume_column.GetNumberOfTuples())]
    _add_column(volumes_node, "Volume (TIV 1.5 L)", proportional, unit="mm3",
                description=f"volume / TIV ({tiv:.0f} mm3) x {target_tiv:.0f} mm3 (proportional head-size correction)")
    volumes_node.Modified()
    table = qc_node.GetTable()
    measure, value, unit = (table.GetColumnByName(n) for n in ("Measure", "Value", "Unit"))
    for name, number in metrics.items():
        measure.InsertNextValue(name)
        value.InsertNextValue(float(number))
        unit.InsertNextValue("ratio" if not definitions else "ratio (" + definitions.get(name, "") + ")")
    table.Modified()
    qc_node.Modified()


def add_preprocessed_nodes(template_t1: np.ndarray, template_affine: np.ndarray, forward_xfm: str, space: str,
                           scene=None, name: str = "") -> dict:
    """segsuite preprocess's outputs as nodes: the T1w in template space (a volume node) and the
    T1w -> template transform read from its ITK .h5 file (a transform node; placing the native T1w
    under it shows that T1w in template space)."""
    from segsuite.errors import InputError

    scene = _scene(scene)
    volume = add_volume_node(np.asarray(template_t1, dtype=np.float32), template_affine,
                             f"{name} space-{space} T1w".strip(), scene)
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode", f"{name} to {space}".strip())
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(forward_xfm)
    if not storage.ReadData(transform):
        scene.RemoveNode(storage)
        scene.RemoveNode(transform)
        raise InputError(f"{forward_xfm} could not be read as an ITK transform: give the _xfm.h5 that "
                         "segsuite preprocess wrote")
    transform.SetAndObserveStorageNodeID(storage.GetID())
    return {"volume": volume, "transform": transform}
