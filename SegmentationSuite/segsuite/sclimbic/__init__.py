"""ScLimbic (FreeSurfer mri_sclimbic_seg) in PyTorch: subcortical limbic structures from a T1."""

from .engine import ScLimbicEngine, resolve_model_files

__all__ = ["ScLimbicEngine", "resolve_model_files"]
