"""Extract, once, the Slicer and CTK names our modules may use, from their source at a release tag.

    python tools/extract_slicer_api_names.py SLICER_GIT_DIR CTK_GIT_DIR \
        [--tag v5.10.0] > Testing/slicer_api/slicer-5.10.0-names.txt

Both directories are git repositories (bare is fine; nothing is checked out). The CTK commit is the
one Slicer's SuperBuild/External_CTK.cmake pins at the tag. One name per line, "<kind> <name...>":

    slicer.util NAME          top-level function or class of Base/Python/slicer/util.py
    slicer NAME               what ``slicer.NAME`` can be: a wrapped C++ class (VTK/Qt export macro),
                              a module of Base/Python/slicer/, or app / mrmlScene / modules
    slicer.modules NAME       a module's lower-case name (Modules/Loadable, Scripted, CLI folders)
    vtkmethod NAME            a method or enum constant declared in an exported vtk* class header
                              (including vtkGet/Set/BooleanMacro accessors)
    qtclass CLASS BASE        a qMRML*/qSlicer*/ctk* class and its first public base
    qtmember CLASS NAME       a Q_PROPERTY, signal, slot or method of that class
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys

EXPORT_CLASS = re.compile(r"^\s*class\s+(?:[A-Za-z][A-Za-z0-9_]*_EXPORT\s+)?((?:vtk|qMRML|qSlicer|ctk)\w+)\s*"
                          r"(?::\s*public\s+([\w:]+))?\s*$", re.M)
METHOD = re.compile(r"^\s+(?:virtual\s+|static\s+|inline\s+|Q_INVOKABLE\s+|Q_SLOT\s+|explicit\s+)*"
                    r"(?:const\s+)?[\w:<>]+[\s\*&]+(?:[\w:<>]+[\s\*&]+)*(\w+)\s*\(", re.M)
MACRO = re.compile(r"\bvtk(Get|Set|Boolean|GetObject|SetObject|GetString|SetString|SetClamp|GetVector\d|"
                   r"SetVector\d|GetEnum|SetEnum|GetSmartPointer|GetNew)\w*Macro\s*\(\s*(\w+)")
ENUM_VALUE = re.compile(r"^\s+([A-Z]\w+)\s*(?:=[^,\n]*)?,?\s*(?://.*)?$", re.M)
QPROPERTY = re.compile(r"Q_PROPERTY\s*\(\s*[\w:<>\*\s]+?\s\**(\w+)\s+READ")


# Designer plugins, test-event recorders and private classes: never used from Python.
TOOLING_SUFFIXES = ("Plugin", "EventPlayer", "EventTranslator", "Private", "Test", "Tester")


def git(repository: str, *arguments: str) -> str:
    return subprocess.run(["git", "-C", repository, *arguments], check=True, capture_output=True,
                          text=True, errors="replace").stdout


def headers(repository: str, revision: str) -> list[str]:
    return [path for path in git(repository, "ls-tree", "-r", "--name-only", revision).splitlines()
            if path.endswith(".h") and "/Testing/" not in path]


def ctk_commit(slicer: str, tag: str) -> str:
    text = git(slicer, "show", f"{tag}:SuperBuild/External_CTK.cmake")
    match = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*\n\s*"([0-9a-f]{40})"', text)
    if not match:
        raise SystemExit("cannot find the CTK commit in SuperBuild/External_CTK.cmake")
    return match.group(1)


def names_from_headers(repository: str, revision: str, lines: set[str]) -> None:
    for path in headers(repository, revision):
        name = path.rsplit("/", 1)[-1][:-2]
        if not name.startswith(("vtk", "qMRML", "qSlicer", "ctk")):
            continue
        text = git(repository, "show", f"{revision}:{path}")
        classes = EXPORT_CLASS.findall(text)
        if not classes:
            continue
        for class_name, base in classes:
            if class_name.endswith(TOOLING_SUFFIXES):
                continue
            if class_name.startswith("vtk"):
                lines.add(f"slicer {class_name}")
            else:
                lines.add(f"qtclass {class_name} {base.split('::')[-1] or '-'}")
                lines.add(f"slicer {class_name}")
        main = classes[0][0]
        if main.endswith(TOOLING_SUFFIXES):
            continue
        if main.startswith("vtk"):
            for method in METHOD.findall(text):
                if method[:1].isupper():
                    lines.add(f"vtkmethod {method}")
            for kind, field in MACRO.findall(text):
                if kind.startswith("Boolean"):
                    lines.update({f"vtkmethod {field}On", f"vtkmethod {field}Off"})
                elif kind.startswith("Get"):
                    lines.add(f"vtkmethod Get{field}")
                else:
                    lines.add(f"vtkmethod Set{field}")
            for value in ENUM_VALUE.findall(text):
                lines.add(f"vtkmethod {value}")
        else:
            for property_name in QPROPERTY.findall(text):
                lines.add(f"qtmember {main} {property_name}")
            for method in METHOD.findall(text):
                if method[:1].islower() and method not in ("operator",):
                    lines.add(f"qtmember {main} {method}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slicer")
    parser.add_argument("ctk")
    parser.add_argument("--tag", default="v5.10.0")
    args = parser.parse_args(argv)
    slicer_commit = git(args.slicer, "rev-parse", f"{args.tag}^{{commit}}").strip()
    ctk = ctk_commit(args.slicer, args.tag)
    lines: set[str] = {"slicer app", "slicer mrmlScene", "slicer modules"}

    util = ast.parse(git(args.slicer, "show", f"{args.tag}:Base/Python/slicer/util.py"))
    for node in util.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            lines.add(f"slicer.util {node.name}")
    for path in git(args.slicer, "ls-tree", "--name-only", f"{args.tag}:Base/Python/slicer/").splitlines():
        if path.endswith(".py") and not path.startswith("__"):
            lines.add(f"slicer {path[:-3]}")
    for kind in ("Loadable", "Scripted", "CLI"):
        for folder in git(args.slicer, "ls-tree", "-d", "--name-only", f"{args.tag}:Modules/{kind}/").splitlines():
            lines.add(f"slicer.modules {folder.lower()}")
    names_from_headers(args.slicer, args.tag, lines)
    names_from_headers(args.ctk, ctk, lines)

    sys.stdout.write(f"# Slicer {args.tag} {slicer_commit}; CTK {ctk} (pinned by SuperBuild/External_CTK.cmake)\n"
                     f"# made by tools/extract_slicer_api_names.py; {len(lines)} names\n")
    sys.stdout.write("".join(f"{line}\n" for line in sorted(lines)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
