"""What every engine shares: the device and thread choice, and the engine contract.

An engine is constructed once (loading its model once) and segments many inputs:

    engine = SomeEngine(model=None, device="auto", threads=None, **options)
    engine.check_input(path)  # optional: header-level refusals (shape, resolution), no voxels read
    result = engine.segment(path_or_(array, affine), progress=callback)  # -> SegmentationResult

``build_engine`` constructs the built-in engines (and any ``package.module:Class``) by name from one
options dict: the command line of ``run-engine``, the cohort workers and scripts all go through it.
"""

from __future__ import annotations

import importlib
import inspect
from contextlib import contextmanager
from typing import Optional, Protocol

from .errors import SegSuiteError, UsageError
from .progress import ProgressCallback
from .result import SegmentationResult


class Engine(Protocol):
    def segment(self, source, progress: Optional[ProgressCallback] = None) -> SegmentationResult: ...


# Engine name -> "module:Class". Anything else of the form "package.module:Class" is accepted too.
ENGINES = {
    "synthseg": "segsuite.synthseg:SynthSegEngine",
    "sclimbic": "segsuite.sclimbic:ScLimbicEngine",
    "scepi": "segsuite.scepi:ScEpiEngine",
    "samseg-filter": "segsuite.samseg:SamsegBrainMask",
}


def resolve_engine(name: str):
    """The engine class of a built-in name or of ``package.module:Class``."""
    spec = ENGINES.get(name, name)
    if ":" not in spec:
        raise UsageError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)} or package.module:Class")
    module_name, class_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SegSuiteError(f"the {name} engine cannot be loaded ({error}); is SegmentationSuite fully installed?") from error
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise SegSuiteError(f"{module_name} has no engine class {class_name}") from None


def split_options(engine_class, options: dict) -> tuple[dict, dict]:
    """Engine options -> (constructor keywords, segment() keywords), by the engine's own signatures.

    Per-image choices such as ScLimbic's ``etiv`` are arguments of ``segment``; unknown names
    are a usage error that names them.
    """
    accepted_by_init = set(inspect.signature(engine_class.__init__).parameters) - {"self"}
    accepted_by_segment = set(inspect.signature(engine_class.segment).parameters) - {"self", "source", "progress"}
    unknown = sorted(set(options) - accepted_by_init - accepted_by_segment)
    if unknown:
        raise UsageError(f"the engine {engine_class.__name__} does not accept the option(s) {', '.join(unknown)}")
    init = {k: v for k, v in options.items() if k in accepted_by_init}
    segment = {k: v for k, v in options.items() if k not in accepted_by_init}
    return init, segment


def build_engine(name: str, model=None, device: str = "auto", threads: Optional[int] = None,
                 options: Optional[dict] = None):
    """(engine, segment() keywords): the engine constructed once from one options dict."""
    engine_class = resolve_engine(name)
    init, segment = split_options(engine_class, dict(options or {}))
    return engine_class(model=model, device=device, threads=threads, **init), segment


def check_input(engine, source) -> None:
    """The engine's header-level checks of an input (InputError on refusal); nothing for engines
    without them. Cheap: no voxels are read, so every engine can check before any network runs."""
    check = getattr(engine, "check_input", None)
    if callable(check):
        check(source)


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
        name, colon, index = choice.partition(":")
        # checked before the hardware: a misspelt device is the same mistake on any machine
        if name != "cuda" or (colon and not (index.isascii() and index.isdigit())):
            raise SegSuiteError(f"unknown device {device!r}: for a GPU use --device cuda or cuda:N, N the GPU's "
                                "number (cuda:0 is the first)")
        if not torch.cuda.is_available():
            raise SegSuiteError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise SegSuiteError(f"device {device!r} was asked for but PyTorch sees {count} CUDA GPU(s) "
                                f"(cuda:0 to cuda:{count - 1}); choose one of those or --device cuda")
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


def tf32_switches() -> list:
    """[(owner, attribute, IEEE value)] for cuDNN convolutions and CUDA matrix products: the
    precision API on torch >= 2.9 (mixing it with the allow_tf32 flags is an error), else the flags."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextmanager
def ieee_float32():
    """Float32 convolutions and matrix products in full IEEE precision for the block, then the
    caller's settings back. PyTorch lets cuDNN run float32 convolutions as TF32 (10-bit mantissa)
    on Ampere and newer GPUs by default; the Keras references compute in float32, and TF32 moved
    0.16% of SynthSeg's labels on an H100 (0.0006% in float32). No effect on the CPU."""
    switches = tf32_switches()
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in switches]
    try:
        for owner, name, value in switches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
