"""SCT-style postprocessing of sc_epi outputs: -thr, -largest, -fill-holes, -remove-small (mm3 / vox, per class)."""

from __future__ import annotations

import numpy as np
import pytest

from segsuite.errors import UsageError
from segsuite.scepi.postprocess import (MinimumSize, PostprocessOptions, binarize, fill_holes, keep_largest_object,
                                        parse_remove_small, postprocess, remove_small_objects)


def blobs() -> np.ndarray:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8, 2:8, 2:8] = 1      # 216 voxels
    labels[12:14, 12:14, 12:14] = 1  # 8 voxels
    labels[17, 2, 2] = 1           # 1 voxel
    return labels


def test_binarize_is_strictly_greater_than_threshold():
    soft = np.array([0.0, 0.2, 0.5, 0.50001, 0.9], np.float32)
    assert binarize(soft, 0.5).tolist() == [0, 0, 0, 1, 1]
    assert binarize(soft, 0.1).tolist() == [0, 1, 1, 1, 1]
    assert binarize(soft, 0.5).dtype == np.uint8


def test_keep_largest_object_keeps_only_the_biggest_face_connected_blob():
    labels = blobs()
    kept = keep_largest_object(labels)
    assert kept.sum() == 216 and kept[2:8, 2:8, 2:8].all()
    assert labels.sum() == 225, "the input must not be modified"
    # Two cubes touching only at an edge are separate objects under face connectivity.
    edge = np.zeros((10, 10, 10), np.uint8)
    edge[0:3, 0:3, 0:3] = 1
    edge[3:5, 3:5, 0:3] = 1
    assert keep_largest_object(edge).sum() == 27


def test_keep_largest_object_keeps_class_values_and_handles_empty():
    labels = blobs()
    labels[4, 4, 4] = 2
    kept = keep_largest_object(labels)
    assert kept[4, 4, 4] == 2 and kept.sum() == 216 + 1
    assert keep_largest_object(np.zeros((4, 4, 4), np.uint8)).sum() == 0


def test_fill_holes_fills_enclosed_cavities_only():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:9, 2:9, 2:9] = 1
    labels[4:7, 4:7, 4:7] = 0          # enclosed cavity: filled
    labels[5, 5, 0:2] = 0              # (outside already)
    open_cavity = labels.copy()
    open_cavity[5, 5, 2:5] = 0         # a channel to the outside: not a hole
    assert fill_holes(labels)[2:9, 2:9, 2:9].all()
    assert fill_holes(labels).sum() == 7 ** 3
    assert fill_holes(open_cavity).sum() == open_cavity.sum()


def test_fill_holes_per_class_and_refuses_soft_values():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:6, 1:6, 1:6] = 2
    labels[3, 3, 3] = 0
    labels[7:11, 7:11, 7:11] = 1
    filled = fill_holes(labels)
    assert filled[3, 3, 3] == 2 and filled[8, 8, 8] == 1
    with pytest.raises(UsageError, match="-thr"):
        fill_holes(np.array([[[0.2, 0.7]]], np.float32))


def test_remove_small_in_voxels():
    labels = blobs()
    out = remove_small_objects(labels, (1, 1, 1), MinimumSize((8.0,), "vox"))
    assert out.sum() == 216 + 8, "objects of exactly the minimum size are kept"
    out = remove_small_objects(labels, (1, 1, 1), MinimumSize((9.0,), "vox"))
    assert out.sum() == 216


def test_remove_small_in_mm3_uses_the_voxel_volume():
    labels = blobs()
    # Voxels of 0.5 x 0.5 x 2 mm = 0.5 mm3: 8 voxels are 4 mm3, the single voxel 0.5 mm3.
    assert remove_small_objects(labels, (0.5, 0.5, 2.0), MinimumSize((4.0,), "mm3")).sum() == 216 + 8
    assert remove_small_objects(labels, (0.5, 0.5, 2.0), MinimumSize((4.5,), "mm3")).sum() == 216
    # The same threshold in mm3 on 2 mm isotropic voxels (8 mm3 each) removes nothing of size >= 1 voxel.
    assert remove_small_objects(labels, (2, 2, 2), MinimumSize((4.0,), "mm3")).sum() == 225


def test_remove_small_uses_18_connectivity():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1, 1, 1] = labels[2, 2, 1] = 1  # edge neighbours: one object of 2 under 18-connectivity
    labels[4, 4, 4] = labels[5, 5, 5] = 1  # corner neighbours: two objects of 1
    out = remove_small_objects(labels, (1, 1, 1), MinimumSize((2.0,), "vox"))
    assert out[1, 1, 1] == 1 and out[2, 2, 1] == 1 and out[4:, 4:, 4:].sum() == 0


def test_remove_small_one_value_per_class():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:2, 0:2, 0:2] = 1   # 8 voxels of class 1
    labels[5:7, 5:7, 5:6] = 2   # 4 voxels of class 2
    labels[8, 8, 8] = 2         # 1 voxel of class 2
    out = remove_small_objects(labels, (1, 1, 1), MinimumSize((10.0, 2.0), "vox"), class_values=[1, 2])
    assert (out == 1).sum() == 0 and (out == 2).sum() == 4
    out = remove_small_objects(labels, (1, 1, 1), MinimumSize((2.0,), "vox"), class_values=[1, 2])
    assert (out == 1).sum() == 8 and (out == 2).sum() == 4
    with pytest.raises(UsageError, match="one per class"):
        remove_small_objects(labels, (1, 1, 1), MinimumSize((1.0, 2.0, 3.0), "vox"), class_values=[1, 2])


@pytest.mark.parametrize("values, sizes, unit", [
    (["10mm3"], (10.0,), "mm3"), (["5vox"], (5.0,), "vox"), (["3"], (3.0,), "vox"),
    (["2.5mm3", "4mm3"], (2.5, 4.0), "mm3"), ("7vox", (7.0,), "vox"),
])
def test_parse_remove_small(values, sizes, unit):
    parsed = parse_remove_small(values)
    assert parsed.sizes == sizes and parsed.unit == unit


@pytest.mark.parametrize("values", [["ten"], ["5mm2"], ["5mm3", "2vox"], []])
def test_parse_remove_small_rejects_bad_values(values):
    with pytest.raises(UsageError):
        parse_remove_small(values)


def test_postprocess_applies_options_in_sct_order():
    labels = blobs()
    labels[4, 4, 4] = 0  # a hole in the big cube
    options = PostprocessOptions(keep_largest=True, fill_holes=True, remove_small=MinimumSize((1000.0,), "vox"))
    assert postprocess(labels, (1, 1, 1), options).sum() == 0
    options = PostprocessOptions(keep_largest=True, fill_holes=True)
    out = postprocess(labels, (1, 1, 1), options)
    assert out.sum() == 216 and out[4, 4, 4] == 1
    assert not PostprocessOptions().any and PostprocessOptions(threshold=0.3).any
