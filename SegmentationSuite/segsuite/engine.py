"""What every engine shares: the device and thread choice, and the engine contract.

An engine is constructed once (loading its model once) and segments many inputs:

    engine = SomeEngine(model=None, device="auto", threads=None, **options)
    result = engine.segment(path_or_(array, affine), progress=callback)  # -> SegmentationResult
"""

from __future__ import annotations

from typing import Optional, Protocol

from .errors import SegSuiteError
from .progress import ProgressCallback
from .result import SegmentationResult


class Engine(Protocol):
    def segment(self, source, progress: Optional[ProgressCallback] = None) -> SegmentationResult: ...


def resolve_device(device: Optional[str] = "auto") -> str:
    """'auto' -> cuda if available, else mps, else cpu; explicit choices are checked."""
    import torch

    choice = (device or "auto").lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SegSuiteError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        return choice
    if choice == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise SegSuiteError("device 'mps' was asked for but it is not available; use --device cpu")
        return choice
    if choice == "cpu":
        return choice
    raise SegSuiteError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")


def set_threads(threads: Optional[int]) -> None:
    """Limit PyTorch's CPU threads (None or <= 0 keeps PyTorch's default)."""
    import torch

    if threads is not None and threads > 0:
        torch.set_num_threads(int(threads))
