"""SynthSeg's label lists, names, L/R pairs, topology classes and QC groups (SynthSeg 1.0 and 2.0).

All lists are in network channel order, which is the sorted order of the label values.
The facts come from SynthSeg's data/labels_classes_priors/*.npy files.
"""

from __future__ import annotations

import numpy as np

# Channel order of the SynthSeg 2.0 segmentation network (sorted label values).
LABELS_V2 = (0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
             41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60)
# SynthSeg 1.0 has no extra-cerebral CSF (24).
LABELS_V1 = tuple(label for label in LABELS_V2 if label != 24)

NAMES = {
    0: "background", 2: "left cerebral white matter", 3: "left cerebral cortex", 4: "left lateral ventricle",
    5: "left inferior lateral ventricle", 7: "left cerebellum white matter", 8: "left cerebellum cortex",
    10: "left thalamus", 11: "left caudate", 12: "left putamen", 13: "left pallidum", 14: "3rd ventricle",
    15: "4th ventricle", 16: "brain-stem", 17: "left hippocampus", 18: "left amygdala", 24: "csf",
    26: "left accumbens area", 28: "left ventral DC", 41: "right cerebral white matter",
    42: "right cerebral cortex", 43: "right lateral ventricle", 44: "right inferior lateral ventricle",
    46: "right cerebellum white matter", 47: "right cerebellum cortex", 49: "right thalamus", 50: "right caudate",
    51: "right putamen", 52: "right pallidum", 53: "right hippocampus", 54: "right amygdala",
    58: "right accumbens area", 60: "right ventral DC",
}

# Left label -> right label; labels in neither column are their own mirror image.
LEFT_RIGHT = {2: 41, 3: 42, 4: 43, 5: 44, 7: 46, 8: 47, 10: 49, 11: 50, 12: 51, 13: 52, 17: 53, 18: 54,
              26: 58, 28: 60}

# Topology classes for the largest-component postprocessing; class 0 is left alone.
TOPOLOGY_CLASS = {0: 0, 24: 0, 14: 1, 15: 2, 16: 3, 2: 4, 3: 4, 4: 4, 5: 4, 7: 5, 8: 5, 10: 6, 11: 7, 12: 8,
                  13: 9, 17: 10, 18: 11, 26: 12, 28: 13, 41: 14, 42: 14, 43: 14, 44: 14, 46: 15, 47: 15,
                  49: 16, 50: 17, 51: 18, 52: 19, 53: 20, 54: 21, 58: 22, 60: 23}

# QC groups (the QC network's 9 input channels / outputs) and their CSV names.
QC_GROUP = {0: 0, 24: 0, 2: 1, 41: 1, 11: 1, 50: 1, 26: 1, 58: 1, 28: 1, 60: 1, 3: 2, 42: 2,
            4: 3, 5: 3, 43: 3, 44: 3, 14: 3, 15: 3, 7: 4, 8: 4, 46: 4, 47: 4, 16: 5, 10: 6, 49: 6,
            12: 7, 13: 7, 51: 7, 52: 7, 17: 8, 18: 8, 53: 8, 54: 8}
QC_NAMES = ("general white matter", "general grey matter", "general csf", "cerebellum", "brainstem",
            "thalamus", "putamen+pallidum", "hippocampus+amygdala")
N_QC_GROUPS = 1 + len(QC_NAMES)
# The reference's QC crop excludes the voxels whose argmax CHANNEL INDEX is 24 (label 47 in 2.0);
# it defines what the QC network was trained on, so it is kept.
QC_EXCLUDED_INDEX = 24
QC_INPUT_SHAPE = 224

# Parcellation network channels: background, then Desikan-Killiany left and right (no 1004/2004).
_DK = ("bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", None, "cuneus", "entorhinal", "fusiform",
       "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital", "lateralorbitofrontal",
       "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal", "paracentral", "parsopercularis",
       "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral", "posteriorcingulate", "precentral",
       "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal", "superiorparietal",
       "superiortemporal", "supramarginal", "frontalpole", "temporalpole", "transversetemporal", "insula")
PARC_NAMES = {0: "background"}
for _offset, _hemi in ((1000, "lh"), (2000, "rh")):
    for _index, _name in enumerate(_DK, start=1):
        if _name is not None:
            PARC_NAMES[_offset + _index] = f"ctx-{_hemi}-{_name}"
PARC_LABELS = tuple(sorted(PARC_NAMES))
CORTEX_LABELS = (3, 42)
WHITE_MATTER_LABELS = (2, 41)

# The robust model's first network predicts 5 groups (np.unique of the denoiser label list).
N_DENOISER_GROUPS = 5

TOTAL_INTRACRANIAL = "total intracranial"


def segmentation_labels(v1: bool = False) -> np.ndarray:
    return np.array(LABELS_V1 if v1 else LABELS_V2, dtype=np.int32)


def flip_indices(labels) -> np.ndarray:
    """For each channel, the channel of its mirror-image structure (itself for midline labels)."""
    labels = [int(v) for v in labels]
    mirror = dict(LEFT_RIGHT)
    mirror.update({right: left for left, right in LEFT_RIGHT.items()})
    position = {label: index for index, label in enumerate(labels)}
    return np.array([position[mirror.get(label, label)] for label in labels], dtype=np.int64)


def topology_classes(labels) -> np.ndarray:
    return np.array([TOPOLOGY_CLASS[int(v)] for v in labels], dtype=np.int32)


def qc_groups(labels) -> np.ndarray:
    return np.array([QC_GROUP[int(v)] for v in labels], dtype=np.int64)


def volume_names(labels, parcellation: bool = False, v1: bool = False) -> list[str]:
    """Column names of the volumes CSV after 'subject', in the reference's order."""
    names = [NAMES[int(v)] for v in labels if v != 0]
    if parcellation:
        names += [PARC_NAMES[v] for v in PARC_LABELS if v != 0]
    if not v1:
        names = [TOTAL_INTRACRANIAL] + names
    return names
