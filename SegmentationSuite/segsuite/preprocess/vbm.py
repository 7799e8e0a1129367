"""Template-space maps: resampling through the registration, Jacobian modulation, Gaussian smoothing."""

from __future__ import annotations

import numpy as np

from . import itk

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


class TemplateSampler:
    """Resamples subject-space arrays onto the template grid through one transform (template point ->
    subject point). The transform is evaluated once, as subject world points of every template voxel;
    each map is then one scipy interpolation (much faster than a resampling through the composite)."""

    def __init__(self, transform, template_grid):
        import SimpleITK as sitk

        self.shape = tuple(template_grid.GetSize())
        field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, template_grid.GetSize(),
                                                  template_grid.GetOrigin(), template_grid.GetSpacing(),
                                                  template_grid.GetDirection())
        points = itk.from_sitk(field).astype(np.float32)            # (X, Y, Z, 3) LPS displacements
        del field
        grid = itk.sitk_affine(template_grid)                        # template voxel -> RAS
        for axis in range(3):                                        # + the template voxel's own LPS position
            index = np.arange(self.shape[axis], dtype=np.float32)
            shape = [1, 1, 1]
            shape[axis] = -1
            for component in range(3):
                sign = -1.0 if component < 2 else 1.0
                points[..., component] += (sign * grid[component, axis] * index).reshape(shape)
        for component in range(3):
            points[..., component] += (-1.0 if component < 2 else 1.0) * grid[component, 3]
        points[..., :2] *= -1.0                                      # LPS -> RAS
        self.points = points
        self._indices: dict[bytes, np.ndarray] = {}

    def _index(self, affine: np.ndarray) -> np.ndarray:
        key = np.round(np.asarray(affine, dtype=np.float64), 6).tobytes()
        if key not in self._indices:
            to_voxel = np.linalg.inv(affine).astype(np.float32)
            self._indices[key] = np.moveaxis(self.points @ to_voxel[:3, :3].T + to_voxel[:3, 3], -1, 0)
        return self._indices[key]

    def __call__(self, data: np.ndarray, affine: np.ndarray, nearest: bool = False) -> np.ndarray:
        from scipy import ndimage

        return ndimage.map_coordinates(np.asarray(data, dtype=np.float32), self._index(affine), order=0 if nearest else 1,
                                       mode="constant", cval=0.0, output=np.float32)


def on_template_grid(values: np.ndarray, source_grid, template_grid) -> np.ndarray:
    """An array on ``source_grid`` (e.g. the Jacobian on the registration grid) linearly resampled to the
    template grid (both cover template space; points outside the source keep the nearest value)."""
    import SimpleITK as sitk

    if source_grid.GetSize() == template_grid.GetSize() and np.allclose(source_grid.GetSpacing(), template_grid.GetSpacing()) \
            and np.allclose(source_grid.GetOrigin(), template_grid.GetOrigin()):
        return values
    image = itk.to_sitk(values, itk.sitk_affine(source_grid))
    padded = sitk.ZeroFluxNeumannPad(image, [1, 1, 1], [1, 1, 1])
    return itk.from_sitk(sitk.Resample(padded, template_grid, sitk.Transform(), sitk.sitkLinear, 1.0))


def modulate(warped: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """Jacobian modulation: the map times the subject volume each template voxel stands for, so that
    the map's integral in template space equals the native tissue volume."""
    return (warped * jacobian).astype(np.float32)


def smooth(data: np.ndarray, affine: np.ndarray, fwhm: float) -> np.ndarray:
    """Gaussian smoothing with a full width at half maximum of ``fwhm`` mm (0: unchanged)."""
    from scipy import ndimage

    if fwhm <= 0:
        return data
    sigma = fwhm * FWHM_TO_SIGMA / np.linalg.norm(affine[:3, :3], axis=0)
    return ndimage.gaussian_filter(np.asarray(data, dtype=np.float32), sigma, mode="constant", cval=0.0)
