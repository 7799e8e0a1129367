"""The model manager seen from Slicer: listing and actions through ``segsuite models`` (no Qt here).

Actions run in a child process (download, install, import, verify, remove), so they show progress
and can be cancelled like the engines. Listing expects ``segsuite models list --json`` to print a
JSON list of objects with ``id``, ``status``, ``size`` (bytes), ``licence`` and ``citation``.
"""

from __future__ import annotations

import json
import subprocess
from typing import Optional

from segsuite.runner import ProcessRunner

COLUMNS = ["Model", "Status", "Size", "Licence", "Citation"]


def human_size(value) -> str:
    try:
        size = float(value)
    except (TypeError, ValueError):
        return str(value or "")
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def model_rows(models: list[dict]) -> list[list[str]]:
    """Rows for the table: id, status, size, licence, citation."""
    rows = []
    for model in models:
        rows.append([str(model.get("id", "")), str(model.get("status", "")), human_size(model.get("size")),
                     str(model.get("licence", "")), str(model.get("citation", ""))])
    return rows


def list_models(python: Optional[str] = None, timeout: float = 60.0) -> list[dict]:
    """The registry with each model's status, from a child process (keeps Slicer's imports clean)."""
    runner = ProcessRunner.for_segsuite(["models", "list", "--json"], python=python)
    result = subprocess.run(runner.command, env=runner.env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        from segsuite.runner import error_message_from_log

        raise RuntimeError(error_message_from_log(result.stderr.splitlines())
                           or f"'segsuite models list' failed with status {result.returncode}")
    models = json.loads(result.stdout)
    if isinstance(models, dict):  # {"models": [...]} or {id: {...}}
        models = models.get("models") or [dict(value, id=key) for key, value in models.items()]
    return list(models)


def action_arguments(action: str, model_id: str = "", path: str = "") -> list[str]:
    """``segsuite models`` arguments for a GUI action."""
    if action == "download":
        return ["models", "download", model_id]
    if action == "install":
        return ["models", "install", model_id, "--from", path]
    if action == "import-freesurfer":
        return ["models", "import-freesurfer"] + ([path] if path else [])
    if action == "verify":
        return ["models", "verify"] + ([model_id] if model_id else [])
    if action == "remove":
        return ["models", "remove", model_id]
    if action == "path":
        return ["models", "path"]
    raise ValueError(f"unknown model action {action!r}")


def start_action(action: str, model_id: str = "", path: str = "", python: Optional[str] = None) -> ProcessRunner:
    return ProcessRunner.for_segsuite(action_arguments(action, model_id, path), python=python).start()


def cache_folder(python: Optional[str] = None, timeout: float = 60.0) -> str:
    runner = ProcessRunner.for_segsuite(["models", "path"], python=python)
    result = subprocess.run(runner.command, env=runner.env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise RuntimeError("'segsuite models path' did not report the cache folder")
    return lines[-1].strip()
