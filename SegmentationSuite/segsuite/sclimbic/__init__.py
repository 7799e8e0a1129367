"""ScLimbic (FreeSurfer mri_sclimbic_seg) in PyTorch: subcortical limbic structures from a T1."""

from .engine import ScLimbicEngine, clean_posteriors, resolve_model_files

__all__ = ["ScLimbicEngine", "clean_posteriors", "resolve_model_files"]
