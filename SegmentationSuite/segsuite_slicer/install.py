"""First use inside Slicer: install the Python requirements after asking, PyTorch via the PyTorch extension.

Pinned versions live here so every module installs the same set. Checking what is missing needs
no Slicer (tested anywhere); installing uses ``slicer.packaging`` (Slicer 5.12+) or
``slicer.util.pip_install`` before that.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Optional

# numpy, SimpleITK and requests come with Slicer: never replace Slicer's own copies.
CORE_REQUIREMENTS = [
    "nibabel==5.4.2",
    "h5py==3.16.0",
    "scipy==1.17.1",
    "tqdm==4.70.1",
    "pandas==3.1.1",
    "filelock==4.2.11",
    "platformdirs==4.14.7",
]
# The sc_epi engine (nnU-Net v2): installed without their dependency chain, which would pull a
# CUDA torch through timm/torchvision.
SCEPI_NO_DEPS_REQUIREMENTS = ["nnunetv2==2.8.1", "dynamic-network-architectures==0.4.4"]
SCEPI_REQUIREMENTS = ["acvl-utils==0.2.6", "batchgenerators==0.25.5", "batchgeneratorsv2==0.3.6", "blosc2==4.14.1",
                      "einops==0.8.2", "scikit-image==0.26.0", "scikit-learn==1.9.1", "tifffile==2026.3.3",
                      "imagecodecs==2026.3.6", "yacs==0.1.8", "connected-components-3d==4.1.1"]
TORCH_REQUIREMENT = ">=2.1"

ENGINE_EXTRAS = {"scepi": (SCEPI_REQUIREMENTS, SCEPI_NO_DEPS_REQUIREMENTS)}


def _name_and_version(requirement: str) -> tuple[str, Optional[str]]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:==\s*([^;\s]+))?", requirement)
    if not match:
        raise ValueError(f"unsupported requirement {requirement!r}")
    return match.group(1), match.group(2)


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements not installed at exactly the pinned version."""
    missing = []
    for requirement in requirements:
        name, version = _name_and_version(requirement)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if version is not None and installed != version:
            missing.append(requirement)
    return missing


def requirements_for(engine: str) -> tuple[list[str], list[str]]:
    """(normal, no-deps) requirements an engine needs beyond PyTorch."""
    extra, no_deps = ENGINE_EXTRAS.get(engine, ([], []))
    return CORE_REQUIREMENTS + list(extra), list(no_deps)


def torch_installed() -> bool:
    try:
        importlib.metadata.version("torch")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def ensure_requirements(engine: str, ask: bool = True) -> bool:
    """Inside Slicer: install what ``engine`` lacks, asking first. False if the user said no."""
    import slicer

    requirements, no_deps = requirements_for(engine)
    missing = missing_requirements(requirements)
    missing_no_deps = missing_requirements(no_deps)
    need_torch = not torch_installed()
    if not (missing or missing_no_deps or need_torch):
        return True
    listing = "\n".join(missing + missing_no_deps + (["torch (through the PyTorch extension)"] if need_torch else []))
    if ask and not slicer.util.confirmOkCancelDisplay(
            "SegmentationSuite needs these Python packages, which will be downloaded and installed now "
            f"(this can take several minutes):\n\n{listing}", windowTitle="SegmentationSuite: first use"):
        return False
    if need_torch:
        _install_torch()
    pip_install = _pip_installer()
    if missing_no_deps:
        pip_install(["--no-deps"] + missing_no_deps)
    if missing:
        pip_install(missing)
    return True


def _pip_installer():
    """slicer.packaging.pip_install (5.12+) or slicer.util.pip_install, taking a list of arguments."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    if packaging is None:
        try:
            import slicer.packaging as packaging  # noqa: F811 - a submodule not loaded yet
        except ImportError:
            packaging = None
    if packaging is not None and hasattr(packaging, "pip_install"):
        return lambda arguments: packaging.pip_install(arguments, requester="SegmentationSuite")
    return lambda arguments: slicer.util.pip_install(arguments)


def _install_torch() -> None:
    """PyTorch through the PyTorch extension (it picks the CUDA build that fits the computer)."""
    import slicer

    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("SegmentationSuite needs PyTorch: install the 'PyTorch' extension from the Extensions "
                           "Manager, restart Slicer, and try again") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        torch = logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch was not installed; SegmentationSuite cannot run without it")
    slicer.app.processEvents()
