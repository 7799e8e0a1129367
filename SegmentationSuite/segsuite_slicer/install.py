"""First use inside Slicer: install what an engine lacks, never touching what Slicer bundles.

Requirements are ranges that accept the versions Slicer 5.10 and 5.12 bundle (see
Testing/slicer_constraints/). A package Slicer bundles (numpy, scipy, SimpleITK, requests, pillow,
packaging, pip, ...) is only checked: it is never installed, upgraded or downgraded, and every pip
run, PyTorch's included, runs under a constraints file pinning the versions present now, so pip
cannot change them as a dependency either. The user is asked once, PyTorch included; in Slicer's
testing mode nothing is installed (testing_mode.refuse_in_testing). Each pip run is one step with
at least one requirement (``pip_steps``): on Slicer 5.12+ through ``slicer.packaging.pip_install``
(progress dialog), on 5.10 through ``slicer.util.pip_install``; the restart offer for an already
imported package is made here on both.

Checking needs no Slicer: ``python -m segsuite_slicer.install --dry-run [--engine NAME]`` prints
the requirement specs it would install, one per line (nothing when all are satisfied).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
import tempfile
from argparse import ArgumentParser
from typing import Optional, Sequence

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Bundled with Slicer 5.10 and 5.12 (SuperBuild/External_python-*.cmake, External_SimpleITK.cmake):
# checked, never installed.
SLICER_BUNDLED = frozenset(canonicalize_name(name) for name in (
    "numpy", "scipy", "simpleitk", "vtk", "requests", "certifi", "idna", "charset-normalizer", "urllib3",
    "pillow", "packaging", "pyparsing", "six", "pydicom", "dicomweb-client", "retrying", "dcmqi", "highdicom",
    "pyjpegls", "typing-extensions", "setuptools", "pip", "wheel", "chardet", "couchdb", "gitdb", "smmap",
    "gitpython", "cryptography", "pyjwt", "wrapt", "deprecated", "pycparser", "cffi", "pynacl",
    "python-dateutil", "pygithub"))
# What the engines need from Slicer's bundle (ranges that hold for 5.10 and 5.12).
BUNDLED_REQUIREMENTS = ["numpy>=1.23", "scipy>=1.9", "SimpleITK>=2.2", "requests>=2.28"]
# Listing models needs only the bundle; download/install/remove lock the cache with filelock.
MODELS_REQUIREMENTS = ["filelock>=3.8"]
CORE_REQUIREMENTS = ["nibabel>=5.0", "h5py>=3.7", "tqdm>=4.60", "pandas>=1.5"] + MODELS_REQUIREMENTS
# The sc_epi engine (nnU-Net v2): nnunetv2 and dynamic-network-architectures without their
# dependency chain, which would pull a CUDA torch through timm/torchvision.
SCEPI_NO_DEPS_REQUIREMENTS = ["nnunetv2>=2.5", "dynamic-network-architectures>=0.3"]
SCEPI_REQUIREMENTS = ["acvl-utils>=0.2", "batchgenerators>=0.25", "batchgeneratorsv2>=0.2", "blosc2>=2.0",
                      "einops>=0.6", "scikit-image>=0.21", "scikit-learn>=1.3", "tifffile>=2023.1",
                      "imagecodecs>=2023.1", "yacs>=0.1.8", "connected-components-3d>=3.12",
                      "matplotlib>=3.5", "seaborn>=0.12", "graphviz>=0.20"]
# segsuite preprocess: the registration (picsl-greedy) and the MNI152NLin2009aSym files in nilearn's wheel.
PREPROCESS_REQUIREMENTS = ["picsl-greedy>=1.4", "nilearn>=0.10"]
TORCH_REQUIREMENT = ">=2.1"
# What the PyTorch extension installs, unconstrained, before its first torch install
# (SlicerPyTorch PyTorchUtils.py _installLightTheTorch, e1c85cc); it pins pip below Slicer 5.12's.
LIGHT_THE_TORCH = "light-the-torch>=0.5"
ENGINES = ("synthseg", "sclimbic", "scepi", "samseg", "samseg-filter", "models", "preprocess")
# The SAMSEG label filter and the model manager are numpy/scipy only.
TORCH_ENGINES = frozenset({"synthseg", "sclimbic", "scepi"})
REQUESTER = "SegmentationSuite"
log = logging.getLogger("SegmentationSuite")


def requirements_for(engine: str) -> tuple[list[str], list[str]]:
    """(normal, no-deps) requirements ``engine`` needs beyond PyTorch and Slicer's bundle."""
    if engine == "models":
        return list(MODELS_REQUIREMENTS), []
    if engine == "scepi":
        return CORE_REQUIREMENTS + SCEPI_REQUIREMENTS, list(SCEPI_NO_DEPS_REQUIREMENTS)
    if engine == "preprocess":  # with a segmentation given; without one SynthSeg's requirements come too
        return CORE_REQUIREMENTS + PREPROCESS_REQUIREMENTS, []
    return list(CORE_REQUIREMENTS), []


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfied(spec: str) -> bool:
    requirement = Requirement(spec)
    version = installed_version(requirement.name)
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The requirements not installed in an accepted version; bundled packages are never listed."""
    return [spec for spec in requirements
            if canonicalize_name(Requirement(spec).name) not in SLICER_BUNDLED and not satisfied(spec)]


def bundled_problems() -> list[str]:
    """Bundled packages the engines cannot use (these are reported, never replaced)."""
    return [f"{spec} (found {installed_version(Requirement(spec).name) or 'none'})"
            for spec in BUNDLED_REQUIREMENTS if not satisfied(spec)]


def torch_installed() -> bool:
    return installed_version("torch") is not None


def plan(engine: str) -> tuple[list[str], list[str]]:
    """(normal, no-deps) requirement specs that would be installed for ``engine``."""
    requirements, no_deps = requirements_for(engine)
    return missing_requirements(requirements), missing_requirements(no_deps)


def needs_torch(engine: str) -> bool:
    return engine in TORCH_ENGINES


def bundled_constraints() -> str:
    """Constraint lines pinning every bundled package present now at its current version, each once.

    A distribution can be on the path twice: ``import setuptools`` (or pkg_resources) appends
    setuptools/_vendor, which holds its own packaging and wheel. The first one on the path is the
    one imported and the one pip sees; a second pin of the same name makes pip refuse the file.
    """
    pins: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():  # in sys.path order
        name = distribution.metadata.get("Name") or ""
        key = canonicalize_name(name) if name else ""
        if key in SLICER_BUNDLED and key not in pins:
            pins[key] = f"{name}=={distribution.version}"
    return "\n".join(sorted(pins.values(), key=str.lower)) + "\n"


def pip_steps(missing: Sequence[str], missing_no_deps: Sequence[str]) -> list[list[str]]:
    """The pip install arguments (between "install" and "-c FILE") of each step, none empty.

    The --no-deps step comes first, as slicer.packaging's no_deps_requirements does; a step with
    no requirement is never made (pip exits 1 on "install -c FILE" alone).
    """
    steps = []
    if missing_no_deps:
        steps.append(["--no-deps", *missing_no_deps])
    if missing:
        steps.append(list(missing))
    return steps


def _top_level_modules(spec: str) -> set[str]:
    """Import names of an installed distribution (from its top_level.txt or file list)."""
    name = Requirement(spec).name
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return {name.replace("-", "_")}
    text = distribution.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    return {str(f).split("/")[0].removesuffix(".py") for f in (distribution.files or []) if "/" in str(f) or
            str(f).endswith(".py")} or {name.replace("-", "_")}


def needs_restart(changed: Sequence[str]) -> bool:
    """True when a package that had to change is already imported in this process."""
    return any(module in sys.modules for spec in changed for module in _top_level_modules(spec))


def ensure_requirements(engine: str, ask: bool = True) -> bool:
    """Inside Slicer: install what ``engine`` lacks, asking once (PyTorch included). False if declined."""
    import slicer

    from .testing_mode import refuse_in_testing

    problems = bundled_problems()
    if problems:
        raise RuntimeError("SegmentationSuite needs newer versions of packages that come with Slicer: "
                           + ", ".join(problems) + ". Install a newer Slicer (5.10 or later).")
    missing, missing_no_deps = plan(engine)
    need_torch = needs_torch(engine) and not torch_installed()
    if not (missing or missing_no_deps or need_torch):
        return True
    listing = missing + missing_no_deps + (["torch (through the PyTorch extension)"] if need_torch else [])
    refuse_in_testing("install Python packages (" + ", ".join(listing) + ")")
    if ask and not slicer.util.confirmOkCancelDisplay(
            "SegmentationSuite needs these Python packages, which will be downloaded and installed now "
            "(this can take several minutes):\n\n" + "\n".join(listing), windowTitle="SegmentationSuite: first use"):
        return False
    already_imported = needs_restart(missing + missing_no_deps)
    with tempfile.TemporaryDirectory() as folder:
        constraints = os.path.join(folder, "slicer-bundled-constraints.txt")
        with open(constraints, "w", encoding="utf-8") as file:
            file.write(bundled_constraints())
        if need_torch:
            _install_torch(constraints)
        for step in pip_steps(missing, missing_no_deps):
            _pip_install(step, constraints)
    if already_imported and slicer.util.confirmYesNoDisplay(
            "Python packages that were already loaded were updated. Restart Slicer now to use them?",
            windowTitle="SegmentationSuite: restart"):
        slicer.util.restart()
    return True


def _slicer_packaging():
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging


def _pip_install(arguments: list[str], constraints: str) -> None:
    """One pip step under the constraints file: Slicer 5.12+ shows its progress dialog, 5.10 blocks."""
    import slicer

    packaging = _slicer_packaging()
    if packaging is not None and hasattr(packaging, "pip_install"):        # Slicer 5.12+
        packaging.pip_install(list(arguments), constraints=constraints, requester=REQUESTER)
    else:                                                                   # Slicer 5.10
        slicer.util.pip_install(list(arguments) + ["-c", constraints])


def _pip_accepts(specs: Sequence[str], constraints: str) -> bool:
    """Whether pip can install ``specs`` under the constraints (a dry run: nothing changes)."""
    import subprocess

    from .engine_run import slicer_python

    done = subprocess.run([slicer_python(), "-m", "pip", "install", "--dry-run", "--quiet", "-c", constraints,
                           *specs], capture_output=True, text=True)
    if done.returncode != 0:
        log.info("SegmentationSuite: pip cannot install %s without changing Slicer's packages:\n%s",
                 " ".join(specs), done.stderr[-2000:])
    return done.returncode == 0


def light_the_torch_usable() -> bool:
    """light-the-torch is installed and accepts the pip that is installed (it patches pip's internals)."""
    if installed_version("light-the-torch") is None:
        return False
    for spec in importlib.metadata.requires("light-the-torch") or []:
        requirement = Requirement(spec)
        if canonicalize_name(requirement.name) == "pip" and not requirement.specifier.contains(
                installed_version("pip") or "0", prereleases=True):
            return False
    return True


def _install_torch(constraints: str) -> None:
    """PyTorch without changing anything Slicer bundles, Slicer's pip included.

    The PyTorch extension's light-the-torch picks the CUDA build for the driver, but its releases
    pin pip below what Slicer 5.12 ships, and PyTorchUtils installs it unconstrained, downgrading
    Slicer's pip. So light-the-torch is used only when it is there already (and fits the pip), or
    pip can install it under our constraints; otherwise torch comes from PyPI with pip, under them.
    """
    import slicer

    try:
        import PyTorchUtils
    except ImportError:  # the PyTorch extension is a dependency, but may have been removed
        PyTorchUtils = None
    if PyTorchUtils is not None:
        if not light_the_torch_usable() and _pip_accepts([LIGHT_THE_TORCH], constraints):
            _pip_install([LIGHT_THE_TORCH], constraints)
            importlib.invalidate_caches()
        if light_the_torch_usable():
            logic = PyTorchUtils.PyTorchUtilsLogic()
            if not logic.torchInstalled():
                torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("PyTorch was not installed; SegmentationSuite cannot run without it")
            slicer.app.processEvents()
            return
    _pip_install([f"torch{TORCH_REQUIREMENT}"], constraints)
    slicer.app.processEvents()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m segsuite_slicer.install",
                                     description="What SegmentationSuite would install into this Python.")
    parser.add_argument("--dry-run", action="store_true", required=True,
                        help="print the requirement specs that would be installed, one per line")
    parser.add_argument("--engine", choices=ENGINES, action="append",
                        help="only what this engine needs (repeatable; default: every engine)")
    args = parser.parse_args(argv)
    problems = bundled_problems()
    if problems:
        print("incompatible bundled packages (never replaced): " + ", ".join(problems), file=sys.stderr)
        return 1
    specs: list[str] = []
    for engine in args.engine or ENGINES:
        normal, no_deps = plan(engine)
        specs += [spec for spec in normal + no_deps if spec not in specs]
    for spec in specs:
        print(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
