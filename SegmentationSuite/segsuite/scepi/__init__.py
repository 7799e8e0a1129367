"""sc_epi: spinal-cord segmentation of EPI volumes (Spinal Cord Toolbox / EPISeg nnU-Net v2 model)."""

from .engine import SPINAL_CORD, ScEpiEngine, reorient, sct_to_nibabel_axcodes, undo_reorient
from .modelfolder import ModelFolder, resolve_model, safe_extract_zip
from .postprocess import (MinimumSize, PostprocessOptions, binarize, fill_holes, keep_largest_object,
                          parse_remove_small, postprocess, remove_small_objects)

__all__ = [
    "ScEpiEngine", "SPINAL_CORD", "reorient", "undo_reorient", "sct_to_nibabel_axcodes",
    "ModelFolder", "resolve_model", "safe_extract_zip",
    "MinimumSize", "PostprocessOptions", "binarize", "fill_holes", "keep_largest_object",
    "parse_remove_small", "postprocess", "remove_small_objects",
]
