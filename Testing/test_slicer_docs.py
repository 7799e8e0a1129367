"""docs/slicer.md against the code and the Extensions Index (issue 29, defect 13).

An Extensions Manager lists the entries of the ExtensionsIndex branch of its Slicer version, so the
docs must not promise "5.10 or later" and must give the submission steps for the `5.10` and `5.12`
branches; and every Slicer name the module files and segsuite_slicer/ use is listed, with the file and
tag it was read at, in the "Slicer behaviours" section.
"""

from __future__ import annotations

import ast
import re

from conftest import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "slicer.md").read_text(encoding="utf-8")
MODULE_DIR = REPO_ROOT / "SegmentationSuite"
SLICER_FILES = sorted(MODULE_DIR.glob("*.py")) + sorted((MODULE_DIR / "segsuite_slicer").glob("*.py"))
TAGS = ("v5.10.0", "v5.12.3", "both", "each tag", "dd4caeae", "e1c85cc")
# used without a slicer.X.Y attribute chain, or by the test machinery rather than the code
ALSO_RELIED_ON = ["testingEnabled", "runUnitTest", "onReloadAndTest", "slicer_add_python_unittest",
                  "run_extension_ctest_with_test", "_build_pip_args", "_pip_install_simple", "installTorch",
                  "confirmYesNoDisplay", "confirmOkCancelDisplay", "PythonSlicer"]


def section(title_start: str) -> str:
    parts = re.split(r"^## ", DOC, flags=re.M)
    matching = [part for part in parts if part.startswith(title_start)]
    assert matching, f"docs/slicer.md has no section '## {title_start}...'"
    return matching[0]


def slicer_names_used() -> set[str]:
    names = set()
    for path in SLICER_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            chain = []
            while isinstance(node, ast.Attribute):
                chain.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "slicer" and len(chain) >= 2 and \
                    chain[-1] in ("util", "app", "modules"):
                names.add(chain[-2])
    return names


def test_install_names_the_slicer_versions_the_index_serves():
    install = section("Install")
    assert "or later" not in install
    assert "5.10" in install and "5.12" in install and "`main`" in install


def test_submission_steps_for_each_index_branch():
    steps = section("Submitting to the Extensions Index")
    for branch in ("`main`", "`5.12`", "`5.10`"):
        assert branch in steps
    assert "scm_revision" in steps and "ExtensionsIndex/SegmentationSuite.json" in steps
    assert "pull request" in steps and "build_dependencies" in steps


def test_every_slicer_name_used_is_listed_with_file_and_tag():
    behaviours = section("Slicer behaviours the extension relies on")
    rows = [line for line in behaviours.splitlines() if line.startswith("| ") and not line.startswith("| Behaviour")
            and not line.startswith("|---")]
    assert len(rows) >= 20
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4, row
        assert re.search(r"[\w/]+\.(py|h|cmake|md|cxx)", cells[1]), f"no source file in: {row}"
        assert any(tag in cells[2] for tag in TAGS), f"no tag in: {row}"
    used = slicer_names_used()
    assert {"pip_install", "restart", "processEvents", "tables"} <= used   # the scan finds what the code uses
    missing = sorted(name for name in used | set(ALSO_RELIED_ON) if name not in behaviours)
    assert not missing, f"used but not listed in docs/slicer.md's Slicer behaviours: {missing}"
