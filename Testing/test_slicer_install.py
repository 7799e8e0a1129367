"""Installing into Slicer's Python (issue 13, defect 2): ranges that accept what Slicer bundles,
nothing bundled ever installed, `--dry-run` as CI's Slicer-pinned environments use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("packaging")
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from segsuite_slicer import install  # noqa: E402

CONSTRAINTS = sorted((REPO_ROOT / "Testing" / "slicer_constraints").glob("slicer-*.txt"))


def pins(path: Path) -> dict[str, str]:
    rows = [line.split("==") for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in rows}


def all_specs() -> list[str]:
    specs = []
    for engine in install.ENGINES:
        normal, no_deps = install.requirements_for(engine)
        specs += normal + no_deps
    return specs


def test_constraint_files_name_their_slicer_tag_and_the_issue_versions():
    assert [p.name for p in CONSTRAINTS] == ["slicer-5.10.txt", "slicer-5.12.txt"]
    assert "tag v5.10.0" in CONSTRAINTS[0].read_text() and "tag v5.12.3" in CONSTRAINTS[1].read_text()
    five_ten, five_twelve = (pins(p) for p in CONSTRAINTS)
    assert (five_ten["numpy"], five_ten["scipy"], five_ten["simpleitk"], five_ten["requests"]) == \
        ("2.0.2", "1.13.1", "2.5.2", "2.32.3")
    assert (five_twelve["numpy"], five_twelve["scipy"], five_twelve["simpleitk"]) == ("2.4.6", "1.17.1", "2.5.5")


@pytest.mark.parametrize("constraints", CONSTRAINTS, ids=lambda p: p.stem)
def test_requirements_are_ranges_that_never_name_a_bundled_package(constraints):
    bundled = pins(constraints)
    assert set(bundled) <= install.SLICER_BUNDLED
    for spec in all_specs():
        requirement = Requirement(spec)
        assert "==" not in spec, f"{spec}: an exact pin clashes with other extensions"
        assert canonicalize_name(requirement.name) not in bundled, f"{spec} would replace Slicer's copy"
    for spec in install.BUNDLED_REQUIREMENTS:      # the bundled versions are accepted as they are
        requirement = Requirement(spec)
        assert requirement.specifier.contains(bundled[canonicalize_name(requirement.name)])


def test_missing_requirements_never_lists_bundled_packages():
    assert install.missing_requirements(["numpy>=1.0"]) == []
    assert install.missing_requirements(["numpy==0.0.1"]) == []          # bundled: checked, never installed
    assert install.missing_requirements(["surely-not-an-installed-package>=1.0"]) == [
        "surely-not-an-installed-package>=1.0"]
    assert install.missing_requirements(["pytest>=1.0", "pytest<1.0"]) == ["pytest<1.0"]
    assert install.bundled_problems() == []
    normal, no_deps = install.requirements_for("scepi")
    assert "nnunetv2>=2.5" in no_deps and "torch" not in " ".join(normal + no_deps)
    assert install.requirements_for("models") == (["filelock>=3.8"], [])


def test_constraints_pin_what_is_bundled_here_and_restart_is_offered_for_imported_packages():
    import numpy

    lines = install.bundled_constraints().splitlines()
    assert f"numpy=={numpy.__version__}" in lines
    assert all(canonicalize_name(line.split("==")[0]) in install.SLICER_BUNDLED for line in lines)
    assert install.needs_restart(["numpy>=1"])
    assert not install.needs_restart(["surely-not-an-installed-package>=1"])


def dry_run(*args, extra_path: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [extra_path, str(REPO_ROOT / "SegmentationSuite")])))
    return subprocess.run([sys.executable, "-m", "segsuite_slicer.install", "--dry-run", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_dry_run_prints_what_is_missing_one_per_line(tmp_path):
    # A sitecustomize that makes tqdm look absent: the dry run must name it, and only it.
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.metadata as m\n_version = m.version\n"
        "def version(name):\n"
        "    if name == 'tqdm':\n        raise m.PackageNotFoundError(name)\n"
        "    return _version(name)\n"
        "m.version = version\n")
    done = dry_run("--engine", "synthseg", extra_path=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["tqdm>=4.60"]
    assert dry_run("--engine", "sclimbic").stdout == ""          # everything is installed here
    assert all(Requirement(line) for line in done.stdout.splitlines())
    assert dry_run("--engine", "nonsense").returncode == 2
