"""Stand-in for slicer.packaging as Slicer 5.12.3 has it (see ../README.md); absent for 5.10.

Re-implemented from reading Base/Python/slicer/packaging.py at v5.12.3: the arguments of each pip
run (``_build_pip_args``) and the order of the runs (``_pip_install_simple``, the path taken in
testing mode and the one the dialog path runs with a progress window around it).
"""

import os
import shlex

if os.environ.get("SEGSUITE_STANDIN_SLICER") != "5.12":
    raise ImportError("slicer.packaging exists from Slicer 5.12")


def _arguments(requirements, constraints, no_deps):
    if isinstance(requirements, str):
        args = ["install", *shlex.split(requirements)]
    elif isinstance(requirements, list):
        args = ["install", *requirements]
    else:
        raise ValueError("pip_install requirement input must be string or list")
    if no_deps:
        args.append("--no-deps")
    if constraints is not None:
        args += ["-c", str(constraints)]
    return args


def pip_install(requirements, constraints=None, no_deps_requirements=None, skip_packages=None, blocking=True,
                show_progress=True, requester=None, parent=None, logCallback=None, completedCallback=None):
    from .util import _executePythonModule

    if no_deps_requirements is not None:
        _executePythonModule("pip", _arguments(no_deps_requirements, constraints, True))
    _executePythonModule("pip", _arguments(requirements, constraints, False))


def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
               requester=None, skip_in_testing=True, show_progress=True):
    import importlib.metadata

    from packaging.requirements import Requirement

    from . import app

    def satisfied(spec):
        requirement = Requirement(str(spec))
        try:
            return requirement.specifier.contains(importlib.metadata.version(requirement.name), prereleases=True)
        except importlib.metadata.PackageNotFoundError:
            return False

    missing = [str(spec) for spec in requirements if not satisfied(spec)]
    if not missing or (skip_in_testing and app.testingEnabled()):
        return None
    pip_install(missing, constraints=constraints, requester=requester)
    return None
