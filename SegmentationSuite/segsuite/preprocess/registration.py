"""Affine + deformable registration with PICSL greedy (``picsl-greedy``), ITK transforms out.

greedy finds the mapping of fixed (template) points into the moving (subject) image:
``y = A(x + u(x))``, A an affine and u a displacement field on the fixed grid, and the inverse
field v with ``x = z + v(z)``, ``z = A^-1(y)``. Both are kept as SimpleITK transforms: the forward
(template -> subject) resampling transform, which resamples subject images into the template, and
the inverse. docs/preprocess.md has the measurements that chose greedy and these settings.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import SegSuiteError
from . import itk

# Multi-resolution schedules (iterations at 4x, 2x, 1x of the registration grid)
AFFINE_ITERATIONS = "100x50x0"
DEFORMABLE_ITERATIONS = "100x50x10"
NCC_RADIUS = "2x2x2"
SMOOTHING = "2vox 1vox"  # greedy's gradient and warp smoothing sigmas
# Zero margin around the fixed grid: the inverse warp lives on that grid, and a template brain touching
# its border (nilearn's copy does, at the cerebellum) would otherwise map just outside it, where
# the inverse is 0 (forward-then-inverse errors of 2-4 mm at the border slices without it, up to 0.5 mm with 8 mm).
MARGIN_MM = 12.0
# greedy adds white noise to the images for NCC from a random seed unless given one: a fixed seed
# makes a rerun with one thread identical (with more, greedy's parallel sums still differ slightly)
SEED = 1


@dataclass
class Registration:
    """The registration of a subject image (moving) to a fixed image (the template)."""

    affine_lps: np.ndarray          # 4x4, fixed LPS point -> moving LPS point (before the warp: A)
    warp: object                    # SimpleITK vector image u on the registration grid (LPS mm)
    inverse_warp: object            # SimpleITK vector image v
    seconds: dict = field(default_factory=dict)

    def forward(self):
        """Template point -> subject point (resamples subject images into the template)."""
        return itk.composite(itk.affine_transform(self.affine_lps), itk.displacement_transform(_copy(self.warp)))

    def inverse(self):
        """Subject point -> template point (resamples template images into the subject)."""
        return itk.composite(itk.displacement_transform(_copy(self.inverse_warp)),
                             itk.affine_transform(np.linalg.inv(self.affine_lps)))

    def jacobian(self) -> np.ndarray:
        """Jacobian determinant of the forward mapping on the warp's grid (volume of subject per template volume)."""
        return itk.jacobian_determinant(self.warp, self.affine_lps[:3, :3])


def _copy(image):
    import SimpleITK as sitk

    return sitk.Image(image)


@contextlib.contextmanager
def _quiet_native_output():
    """greedy's optimisers print to the process's stdout/stderr from C++ (past Python's sys.stdout):
    point both descriptors at /dev/null while it runs."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, null):
            os.close(descriptor)


def _run(greedy, command: str, threads: int, **images) -> None:
    with open(os.devnull, "w") as quiet, _quiet_native_output():
        try:
            greedy.execute(f"-threads {int(threads)} -seed {SEED} -d 3 -V 0 {command}", out=quiet, err=quiet, **images)
        except RuntimeError as error:
            failure = str(error)
        else:
            return
    raise SegSuiteError(f"greedy registration failed: {failure}")


def on_grid(image, spacing: Optional[float]):
    """``image`` resampled (linear) to an isotropic ``spacing`` over the same field of view."""
    import SimpleITK as sitk

    if spacing is None or np.allclose(image.GetSpacing(), spacing):
        return image
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [float(spacing)] * 3,
                         image.GetDirection(), 0.0, image.GetPixelID())


def with_margin(image):
    """``image`` padded with zeros by MARGIN_MM on every side."""
    import SimpleITK as sitk

    voxels = [int(np.ceil(MARGIN_MM / s)) for s in image.GetSpacing()]
    return sitk.ConstantPad(image, voxels, voxels, 0.0)


def register(moving, fixed, spacing: Optional[float] = 2.0, threads: int = 2,
             affine_iterations: str = AFFINE_ITERATIONS, deformable_iterations: str = DEFORMABLE_ITERATIONS,
             extra_channels=(), progress=None) -> Registration:
    """Register ``moving`` to ``fixed`` (SimpleITK float images in mm): a 12-parameter affine (NCC,
    image centres aligned first), then greedy's diffeomorphic-style deformable step (NCC), both on
    the fixed image resampled to ``spacing`` mm (None: its own grid) with a margin. ``extra_channels``: further
    (fixed, moving) pairs, e.g. tissue maps, that drive the deformable step beside the T1."""
    import time

    from picsl_greedy import Greedy3D

    from ..progress import ensure_callback

    report = ensure_callback(progress)
    seconds = {}
    start = time.perf_counter()
    fixed_grid = with_margin(on_grid(fixed, spacing))
    greedy = Greedy3D()
    report(0.0, "affine registration")
    _run(greedy, f"-i fixed moving -a -dof 12 -ia-image-centers -n {affine_iterations} -m NCC 4x4x4 -o affine",
         threads, fixed=fixed_grid, moving=moving, affine=None)
    seconds["affine"] = time.perf_counter() - start
    report(0.3, "deformable registration")
    channels = ""
    images = {}
    for number, (fixed_channel, moving_channel) in enumerate(extra_channels):
        channels += f" -i fixed{number} moving{number}"
        images[f"fixed{number}"] = with_margin(on_grid(fixed_channel, spacing))
        images[f"moving{number}"] = moving_channel
    _run(greedy, f"-i fixed moving{channels} -it affine -n {deformable_iterations} -m NCC {NCC_RADIUS} "
         f"-s {SMOOTHING} -wp 0 -o warp -oinv inverse", threads,
         fixed=fixed_grid, moving=moving, warp=None, inverse=None, **images)
    seconds["deformable"] = time.perf_counter() - start - seconds["affine"]
    report(1.0, "registered")
    return Registration(affine_lps=itk.ras_to_lps_matrix(np.asarray(greedy["affine"], dtype=np.float64)),
                        warp=greedy["warp"], inverse_warp=greedy["inverse"], seconds=seconds)
