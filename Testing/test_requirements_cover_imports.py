"""README's install (requirements.txt) holds every package the core imports, lazy imports included.

Pillow was imported only inside the morphometry mosaic writer and reached CI through slicer-core's
matplotlib, so README's install failed at `segsuite morphometry`; the import-all test of the
installed layout sees module-level imports only.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "SegmentationSuite" / "segsuite"
# subpackages whose packages README installs separately, each from its own requirements file(s)
EXTRAS = {"cohort": ["requirements-cohort.txt"],
          "scepi": ["requirements-scepi.txt", "requirements-scepi-nodeps.txt"]}
# imported only after importlib.util.find_spec says it is there; without it the code takes another path
# (templateflow: MNI152NLin2009cAsym when installed, else nilearn's template files)
OPTIONAL = {("preprocess", "templateflow")}


def pinned(*files: str) -> set[str]:
    names = set()
    for name in files:
        for line in (REPO_ROOT / name).read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(==|>=|<|\[)", line)
            if match:
                names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def third_party_imports(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return {top for top in tops if top not in sys.stdlib_module_names and top != "segsuite"}


def test_every_import_of_the_core_is_in_requirements_txt():
    distributions = packages_distributions()
    core = pinned("requirements.txt")
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        subpackage = path.relative_to(PACKAGE).parts[0]
        allowed = core | pinned(*EXTRAS[subpackage]) if subpackage in EXTRAS else core
        for module in sorted(third_party_imports(path)):
            if (subpackage, module) in OPTIONAL:
                assert f'find_spec("{module}")' in path.read_text(encoding="utf-8"), f"{path}: {module} is not guarded"
                continue
            names = {re.sub(r"[-_.]+", "-", name).lower() for name in distributions.get(module, [module])}
            if not names & allowed:
                missing.append(f"{path.relative_to(REPO_ROOT)} imports {module} ({', '.join(sorted(names))})")
    assert not missing, "not in README's requirements: " + "; ".join(missing)


def test_the_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("import os\n\ndef mosaic():\n    from PIL import Image\n    import numpy.linalg\n",
                      encoding="utf-8")
    assert third_party_imports(module) == {"PIL", "numpy"}
