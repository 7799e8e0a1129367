"""The ExtensionsIndex entry against the rules of Slicer/ExtensionsIndex's own CI (defect 5 of issue 13).

Our own code for the checks of ``scripts/check_description_files.py`` (ExtensionsIndex at commit
07f1d1b2, 2026-08-07) that can run offline, and of its pre-commit/prettier settings (.prettierrc.js:
prettier-plugin-multiline-arrays with multilineArraysWrapThreshold 0, i.e. every non-empty array one
item per line; end-of-file-fixer, trailing-whitespace, mixed-line-ending, forbid-tabs; check-jsonschema
against schemas/slicer-extension-catalog-entry-schema-v1.0.2.json). The online checks (clone, image
Content-Type, GitHub topic '3d-slicer-extension') are replaced by checks that the raw URLs name files
that exist in this repository and are PNG images. docs/slicer.md records the run of the real script.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from conftest import REPO_ROOT

ENTRY = REPO_ROOT / "ExtensionsIndex" / "SegmentationSuite.json"
CMAKE = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
REPOSITORY = "SlicerSegmentationSuite"
OWNER = "SegmentationSuite"
RAW_PREFIX = f"https://raw.githubusercontent.com/{OWNER}/{REPOSITORY}/main/"

# schema v1.0.2: properties and their JSON types; required keys
SCHEMA_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
                "enabled": bool, "tier": int}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
# extensions that exist in the index (build_dependencies must name one)
INDEX_EXTENSIONS = {"PyTorch", "NNUNet", "SlicerIGT", "SegmentEditorExtraEffects"}
ALLOWED_REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")


def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def cmake_value(name: str) -> str:
    match = re.search(rf'set\s*\({name}\s*"([^"]+)"[ ]*\)', CMAKE, re.IGNORECASE)
    assert match, f"no set({name} \"...\") in CMakeLists.txt"
    return match.group(1)


def test_schema():
    data = entry()
    assert SCHEMA_REQUIRED <= set(data)
    assert set(data) <= set(SCHEMA_TYPES), f"not in the schema: {set(data) - set(SCHEMA_TYPES)}"
    for key, value in data.items():
        assert isinstance(value, SCHEMA_TYPES[key]) and not (SCHEMA_TYPES[key] is int and isinstance(value, bool))
    assert 1 <= data["tier"] <= 5
    assert all(isinstance(item, str) for item in data.get("build_dependencies", []))
    assert data["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                      "slicer-extension-catalog-entry-schema-v1.0.")


def test_file_format_as_the_index_lints_it():
    raw = ENTRY.read_bytes()
    assert b"\r" not in raw and b"\t" not in raw
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    text = raw.decode("utf-8")
    assert all(line == line.rstrip() for line in text.splitlines())
    # prettier with multiline arrays, 2-space indent: our file is exactly what it would print
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    for key, value in data.items():
        if isinstance(value, list) and value:
            assert f'"{key}": [\n' in text, f"{key}: a non-empty array must have one item per line"


def test_names_and_category():
    data = entry()
    extension_name = ENTRY.stem
    assert not extension_name.lower().startswith("slicer"), "the extension name must not start with Slicer"
    project = re.findall(r'project\s*\(\s*([^\s\)\n\r]+)', CMAKE, re.IGNORECASE)
    assert project and project[0] == extension_name
    assert data["category"] == cmake_value("EXTENSION_CATEGORY") == "Segmentation"
    url = data["scm_url"]
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme in ("git", "https") and "://" in url
    repo_name = Path(parts.path.strip("/")).stem
    assert repo_name == REPOSITORY and repo_name.startswith(ALLOWED_REPOSITORY_PREFIXES)
    assert parts.path.strip("/").split("/")[0] == OWNER
    assert set(data["build_dependencies"]) <= INDEX_EXTENSIONS
    assert cmake_value("EXTENSION_DEPENDS").split() == data["build_dependencies"]


def test_urls_name_the_repository_and_files_that_exist():
    homepage = cmake_value("EXTENSION_HOMEPAGE")
    assert homepage.startswith(f"https://github.com/{OWNER}/{REPOSITORY}")
    urls = [cmake_value("EXTENSION_ICONURL")] + cmake_value("EXTENSION_SCREENSHOTURLS").split()
    assert len(urls) >= 2
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split())
    for url in urls:
        assert url.startswith(RAW_PREFIX), f"{url} is not a raw URL of {OWNER}/{REPOSITORY}"
        relative = url[len(RAW_PREFIX):]
        path = REPO_ROOT / relative
        assert path.is_file(), f"{url}: {relative} is not in the repository"
        if tracked:
            assert relative in tracked, f"{relative} exists but is not committed"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{relative} is not a PNG image"
    # no URL anywhere in the build metadata or the entry points at the old repository name
    for text in (CMAKE, ENTRY.read_text(encoding="utf-8")):
        assert f"github.com/{OWNER}/SegmentationSuite" not in text
        assert f"githubusercontent.com/{OWNER}/SegmentationSuite/" not in text


def test_licence_and_repository_size():
    assert (REPO_ROOT / "LICENSE.txt").is_file()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    total = sum((REPO_ROOT / name).stat().st_size for name in files.split("\0") if name and (REPO_ROOT / name).is_file())
    if not files:
        pytest.skip("not a git checkout")
    assert total < 100 * 1024 * 1024
