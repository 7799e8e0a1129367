"""Slicer adapters for SegmentationSuite: MRML nodes from engine results, the process client,
and the first-use requirements installer.

This package needs Slicer (or the ``slicer-core`` wheel for the MRML parts); the engines in
``segsuite`` never import it.
"""
