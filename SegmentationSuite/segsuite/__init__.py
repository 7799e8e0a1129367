"""SegmentationSuite core: segmentation engines that run inside 3D Slicer and on their own.

This package never imports slicer or qt, so the same engines serve the Slicer modules,
Slicer's Python console and the ``segsuite`` command line.
"""

__version__ = "0.1.0"

from .errors import SegSuiteError  # noqa: E402,F401
