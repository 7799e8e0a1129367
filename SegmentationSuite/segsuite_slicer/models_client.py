"""The model manager seen from Slicer: listing and actions through ``segsuite models`` (no Qt here).

Everything runs in a child process that the GUI polls with a timer, never waiting on it: actions
(download, install, import, verify, remove) show progress and can be cancelled like the engines, and
the listing (``ModelsCommand(["models", "list", "--json"])``) no longer blocks the GUI thread.
Listing expects ``segsuite models list --json`` to print a JSON list of objects with ``id``,
``status``, ``size`` (bytes), ``licence`` and ``citation``.
"""

from __future__ import annotations

import json
import time
from typing import Optional

from segsuite.runner import FinishedEvent, LogEvent, ProcessRunner, error_message_from_log

from .testing_mode import refuse_in_testing

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


def parse_listing(text: str) -> list[dict]:
    """``segsuite models list --json`` output -> a list of model dicts."""
    models = json.loads(text)
    if isinstance(models, dict):  # {"models": [...]} or {id: {...}}
        models = models.get("models") or [dict(value, id=key) for key, value in models.items()]
    return list(models)


class ModelsCommand:
    """One ``segsuite models ...`` child process whose stdout is collected; ``poll`` never blocks."""

    def __init__(self, arguments: list, python: Optional[str] = None):
        self.runner = ProcessRunner.for_segsuite(arguments, python=python)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.done = False

    def start(self) -> "ModelsCommand":
        self.runner.start()
        return self

    def poll(self) -> Optional[str]:
        """None while running; the whole stdout once the command succeeded; raises if it failed."""
        if self.done:
            return "\n".join(self.stdout)
        for event in self.runner.poll():
            if isinstance(event, LogEvent):
                (self.stdout if event.stream == "stdout" else self.stderr).append(event.line)
            elif isinstance(event, FinishedEvent):
                self.done = True
                if event.returncode != 0:
                    command = " ".join(self.runner.command[self.runner.command.index("segsuite") + 1:])
                    raise RuntimeError(error_message_from_log(self.stderr)
                                       or f"'segsuite {command}' failed with status {event.returncode}")
                return "\n".join(self.stdout)
        return None

    def cancel(self) -> None:
        if self.runner.running:
            self.runner.cancel()

    def wait(self, timeout: float = 60.0, poll_interval: float = 0.05) -> str:
        """For scripts and self-tests (blocks): the stdout, or an error."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.poll()
            if output is not None:
                return output
            if time.monotonic() > deadline:
                self.cancel()
                raise RuntimeError(f"the model manager did not answer within {timeout:.0f} s")
            time.sleep(poll_interval)


def start_listing(python: Optional[str] = None) -> ModelsCommand:
    return ModelsCommand(["models", "list", "--json"], python=python).start()


def list_models(python: Optional[str] = None, timeout: float = 60.0) -> list[dict]:
    """Blocking listing, for scripts and self-tests (the GUI polls ``start_listing`` instead)."""
    return parse_listing(start_listing(python).wait(timeout))


def start_cache_folder(python: Optional[str] = None) -> ModelsCommand:
    return ModelsCommand(["models", "path"], python=python).start()


def cache_folder_from_output(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("'segsuite models path' did not report the cache folder")
    return lines[-1].strip()


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
    if action == "download":
        refuse_in_testing(f"download the model {model_id}")
    return ProcessRunner.for_segsuite(action_arguments(action, model_id, path), python=python).start()


def cache_folder(python: Optional[str] = None, timeout: float = 60.0) -> str:
    return cache_folder_from_output(start_cache_folder(python).wait(timeout))


class ModelActions:
    """The Models module's one running action (download, install, verify, ...): started after the
    requirements check, cancelled without blocking the GUI thread, stopped and waited for at cleanup."""

    def __init__(self) -> None:
        self.runner: Optional[ProcessRunner] = None
        self._cancel_thread = None

    def busy(self) -> bool:
        return self.runner is not None and self.runner.running

    def start(self, action: str, model_id: str = "", path: str = "", python: Optional[str] = None,
              ensure_requirements=None) -> Optional[str]:
        """Start ``action``; None when it started, else the one-line reason to show (nothing started).

        ``ensure_requirements(engine)`` (segsuite_slicer.install's, inside Slicer) installs what the
        cache lock needs; its failure is a message here, not a traceback."""
        if self.busy():
            return "The model manager is busy; wait for it or cancel it first."
        if ensure_requirements is not None:
            try:
                if not ensure_requirements("models"):
                    return "The Python packages the model manager needs were not installed: nothing was done."
            except Exception as error:  # pip, the network, a refused bundled version: one line for the user
                return f"Could not install the Python packages the model manager needs: {error}"
        try:
            self.runner = start_action(action, model_id, path, python=python)
        except Exception as error:
            return f"Could not start the model manager: {error}"
        self._cancel_thread = None
        return None

    def cancel(self) -> None:
        """Returns at once; the process tree stops in a worker thread (terminate, kill after 3 s)."""
        from .engine_run import cancel_in_background

        if self.busy():
            self._cancel_thread = cancel_in_background(self.runner, self._cancel_thread)

    def stop(self) -> None:
        """Module cleanup and application exit: returns when the process tree is gone."""
        from .engine_run import stop_and_wait

        stop_and_wait(self.runner, self._cancel_thread)
