"""A synthetic head with markers on the patient's left, front and top, in RAS, LIA or an oblique grid.

Marker labels: 17 (Left-Hippocampus) on the patient's left, 18 (Left-Amygdala) in front, 10
(Left-Thalamus) on top, inside a brain of label 2. The finder reads where a marker is shown.
"""

from __future__ import annotations

import numpy as np

LEFT, FRONT, TOP, BRAIN = 17, 18, 10, 2
SHAPE = (40, 48, 36)


def phantom_ras() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, affine) in RAS voxel order (x grows to the patient's right)."""
    grid = np.indices(SHAPE).astype(np.float32)
    centre = (np.array(SHAPE) - 1) / 2
    radius = np.array(SHAPE) * 0.42
    inside = (((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(axis=0) <= 1
    labels = np.where(inside, BRAIN, 0).astype(np.int32)
    cx, cy, cz = (int(c) for c in centre)
    labels[4:10, cy - 8:cy + 9, cz - 3:cz + 4] = LEFT           # low x: the patient's left
    labels[cx - 2:cx + 3, 38:43, cz - 2:cz + 3] = FRONT          # high y: anterior
    labels[cx - 2:cx + 3, cy - 2:cy + 3, 25:30] = TOP            # high z: superior
    image = np.where(inside, 100.0, 5.0).astype(np.float32) + labels * 3.0
    affine = np.diag([1.0, 1.0, 1.2, 1.0])
    affine[:3, 3] = -np.array(SHAPE) / 2
    return image, labels, affine


def phantom(orientation: str):
    """The phantom stored as ``orientation`` ('RAS', 'LIA' or 'oblique'): same anatomy, other grid."""
    import nibabel as nib

    image, labels, affine = phantom_ras()
    if orientation == "RAS":
        return image, labels, affine
    if orientation == "LIA":
        target = nib.orientations.axcodes2ornt(("L", "I", "A"))
        transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), target)
        new_affine = affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
        return (nib.orientations.apply_orientation(image, transform),
                nib.orientations.apply_orientation(labels, transform), new_affine)
    if orientation == "oblique":  # 20 degrees about S and 12 about R: still nearest to RAS
        a, b = np.radians(20), np.radians(12)
        about_s = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        about_r = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        rotated = affine.copy()
        rotated[:3, :] = about_s @ about_r @ affine[:3, :]
        return image, labels, rotated
    raise ValueError(orientation)


def marker_side(tile_labels: np.ndarray, value: int) -> tuple[float, float]:
    """(row, column) of a marker's centre as fractions of the tile (0: top/left, 1: bottom/right)."""
    rows, columns = np.nonzero(tile_labels == value)
    assert rows.size, f"marker {value} is not in this view"
    return rows.mean() / tile_labels.shape[0], columns.mean() / tile_labels.shape[1]


def letter_at(rgb: np.ndarray, letter: str, where: str, color=(255, 214, 0)) -> bool:
    """Whether ``letter``'s glyph is burned into the ``where`` ('left', 'right', 'top', 'bottom')
    quarter of the tile ``rgb``."""
    from segsuite.qcviews import glyph

    height, width = rgb.shape[:2]
    regions = {"left": (slice(None), slice(0, width // 4)), "right": (slice(None), slice(width - width // 4, width)),
               "top": (slice(0, height // 4), slice(None)), "bottom": (slice(height - height // 4, height), slice(None))}
    region = np.all(rgb[regions[where]] == color, axis=-1)
    for scale in (1, 2):
        ink = glyph(letter, scale)
        h, w = ink.shape
        for row in range(region.shape[0] - h + 1):
            for column in range(region.shape[1] - w + 1):
                if np.array_equal(region[row:row + h, column:column + w], ink):
                    return True
    return False
