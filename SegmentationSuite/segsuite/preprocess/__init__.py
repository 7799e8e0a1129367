"""Structural-MRI preprocessing: N4, brain extraction from a segmentation, registration to MNI152
(picsl-greedy), template-space, modulated and smoothed tissue maps, ITK transforms. No slicer/qt."""

from .subject import Preprocessed, output_paths, preprocess_subject, write_preprocessed
from .templates import NLIN2009A, NLIN2009C, Template, load_template

__all__ = ["Preprocessed", "Template", "NLIN2009A", "NLIN2009C", "load_template", "output_paths",
           "preprocess_subject", "write_preprocessed"]
