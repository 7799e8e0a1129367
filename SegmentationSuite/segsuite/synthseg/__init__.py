"""SynthSeg (Billot et al.) in PyTorch: contrast- and resolution-agnostic brain segmentation."""

from .engine import SynthSegEngine

__all__ = ["SynthSegEngine"]
