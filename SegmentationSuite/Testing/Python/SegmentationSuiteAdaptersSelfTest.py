"""Inside Slicer: a label map becomes a segmentation whose labelmaps match it in world space,
and it shows in the application scene with FreeSurfer names (the GUI counterpart of the pytest suite)."""

import unittest

import numpy as np
import slicer

from segsuite.labels import freesurfer_lut
from segsuite_slicer import mrml


class SegmentationSuiteAdaptersSelfTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_lia_label_map_to_segmentation(self):
        labels = np.zeros((10, 12, 8), dtype=np.int32)
        labels[2:5, 3:6, 1:4] = 17
        labels[6:9, 3:6, 1:4] = 53
        affine = np.array([[-1.0, 0, 0, 5], [0, 0, 1.0, -3], [0, -1.0, 0, 7], [0, 0, 0, 1]])
        table = freesurfer_lut().subset([0, 17, 53])
        node = mrml.add_segmentation_node(labels, affine, table, "test")
        self.assertEqual(list(node.GetSegmentation().GetSegmentIDs()), ["Left-Hippocampus", "Right-Hippocampus"])
        reference = mrml.add_volume_node(labels.astype(np.int16), affine, "reference")
        exported = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(node, exported,
                                                                              slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        array, exported_affine = mrml.array_affine_from_volume_node(exported)
        self.assertTrue(np.allclose(exported_affine, affine))
        self.assertEqual(int((array > 0).sum()), int((labels > 0).sum()))
        del reference


def runTest():
    unittest.main(module=__name__, exit=False, argv=["SegmentationSuiteAdaptersSelfTest"])
