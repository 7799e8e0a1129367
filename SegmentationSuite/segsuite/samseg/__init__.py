"""SAMSEG support: a brain mask from SAMSEG output that fMRIPrep can use, and running SAMSEG.

- ``SamsegBrainMask``: removes non-brain labels (default 24, 165, 258, 259) from a SAMSEG
  segmentation and builds the brain mask with niworkflows refine_aseg's semantics.
- ``install_cleaned_aseg`` / ``restore_original_aseg``: FreeSurfer-subject mode for
  ``fmriprep --fs-subjects-dir``.
- ``SamsegRunner``: runs SAMSEG (separate program or environment), then the filter.
"""

from .filter import (DEFAULT_EXCLUDED_LABELS, DEFAULT_PRESET, PRESETS, REFINE_ASEG_BALL_RADIUS, SamsegBrainMask,
                     ball, describe_labels, load_segmentation, refine_aseg_mask, resolve_excluded_labels)
from .runner import (SamsegRunner, find_samseg, parse_samseg_stats, samseg_volumes, setup_command_text,
                     setup_samseg_venv)
from .subject import install_cleaned_aseg, restore_original_aseg

__all__ = [
    "DEFAULT_EXCLUDED_LABELS", "DEFAULT_PRESET", "PRESETS", "REFINE_ASEG_BALL_RADIUS", "SamsegBrainMask", "ball",
    "describe_labels", "load_segmentation", "refine_aseg_mask", "resolve_excluded_labels", "SamsegRunner",
    "find_samseg", "parse_samseg_stats", "samseg_volumes", "setup_command_text", "setup_samseg_venv",
    "install_cleaned_aseg", "restore_original_aseg",
]
