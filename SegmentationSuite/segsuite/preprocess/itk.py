"""numpy (array, RAS affine) <-> SimpleITK images, and the ITK transforms of a registration.

ITK works in LPS millimetres and a *resampling* transform maps points of the fixed (output) space
into the moving (input) space; ANTs, fMRIPrep (nitransforms) and Slicer read the same files.
"""

from __future__ import annotations

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(array: np.ndarray, affine: np.ndarray, dtype=np.float32):
    """A SimpleITK image of a (X, Y, Z) array on the grid of a RAS voxel-to-world affine."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=dtype).transpose(2, 1, 0)))
    lps = LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
    image.SetDirection(tuple(float(d) for d in (lps[:3, :3] / spacing).ravel()))
    return image


def sitk_affine(image) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return LPS @ affine


def from_sitk(image) -> np.ndarray:
    """The (X, Y, Z[, C]) array of a SimpleITK image (vector components last)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    return array.transpose(2, 1, 0, 3) if array.ndim == 4 else array.transpose(2, 1, 0)


def ras_to_lps_matrix(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 point mapping in RAS coordinates as the same mapping in LPS coordinates."""
    return LPS @ np.asarray(matrix, dtype=np.float64) @ LPS


def affine_transform(matrix_lps: np.ndarray):
    import SimpleITK as sitk

    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in matrix_lps[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in matrix_lps[:3, 3]))
    return transform


def displacement_transform(field):
    """A DisplacementFieldTransform of a vector image (LPS mm displacements); the image is consumed."""
    import SimpleITK as sitk

    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(field)


def composite(*transforms):
    """The composite that applies the *last* given transform to a point first (ITK's order)."""
    import SimpleITK as sitk

    return sitk.CompositeTransform(list(transforms))


def jacobian_determinant(field, linear: np.ndarray) -> np.ndarray:
    """det of d(A(x + u(x)))/dx on the field's grid: det(A) * det(I + grad u), float32 (X, Y, Z).

    ``field`` is the displacement image (LPS mm) and ``linear`` the 3x3 part of the affine."""
    displacement = from_sitk(field).astype(np.float32)           # (X, Y, Z, 3), LPS components
    index_to_lps = (LPS @ sitk_affine(field))[:3, :3]             # voxel index -> LPS mm
    to_index = np.linalg.inv(index_to_lps)
    # gradient[..., c, k] = d u_c / d index_k, then chain rule to physical coordinates
    gradient = np.stack([np.stack(np.gradient(displacement[..., c], axis=(0, 1, 2)), axis=-1) for c in range(3)], axis=-2)
    gradient = gradient @ to_index.astype(np.float32)
    gradient += np.eye(3, dtype=np.float32)
    return (np.linalg.det(gradient) * np.float32(np.linalg.det(linear))).astype(np.float32)
