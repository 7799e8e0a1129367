"""Run ``segsuite`` (or any command) in a child process: progress, cancel, errors.

The Slicer modules use this to keep long work off the GUI thread: the engine runs in its own
process started with ``--progress json``; the GUI polls :meth:`ProcessRunner.poll` from a timer,
moves its progress bar, and Cancel kills the whole process tree. Nothing here needs Slicer or Qt,
so it is tested anywhere.

    runner = ProcessRunner.for_segsuite(["run-engine", "--engine", "synthseg", ...])
    runner.start()
    while runner.running:            # or runner.run(progress) to block
        for event in runner.poll(): ...
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import SegSuiteError
from .progress import ProgressCallback, ensure_callback

PROGRESS_PREFIX = "SEGSUITE_PROGRESS "  # what segsuite.cli.progress_for prints with --progress json
_ERROR_LINE = re.compile(r"(?:^|:\s)(?:internal )?error:\s*(.*)$")


class ProcessError(SegSuiteError):
    """The child process failed; the message is its own last error line."""

    def __init__(self, message: str, returncode: Optional[int] = None, log: Sequence[str] = ()):
        super().__init__(message)
        self.returncode = returncode
        self.log = list(log)


class ProcessCancelled(SegSuiteError):
    """The run was cancelled by the user."""


@dataclass(frozen=True)
class ProgressEvent:
    fraction: float
    message: str


@dataclass(frozen=True)
class LogEvent:
    line: str
    stream: str  # "stdout" or "stderr"


@dataclass(frozen=True)
class FinishedEvent:
    returncode: int


Event = Union[ProgressEvent, LogEvent, FinishedEvent]


def parse_progress_line(line: str) -> Optional[ProgressEvent]:
    """A ProgressEvent for a ``SEGSUITE_PROGRESS {...}`` line, else None."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        payload = json.loads(line[len(PROGRESS_PREFIX):])
        return ProgressEvent(min(max(float(payload["fraction"]), 0.0), 1.0), str(payload.get("message", "")))
    except (ValueError, KeyError, TypeError):
        return None


def error_message_from_log(lines: Sequence[str]) -> Optional[str]:
    """The text of the last ``...error: text`` line, which is how segsuite reports user errors."""
    for line in reversed(lines):
        match = _ERROR_LINE.search(line.strip())
        if match and match.group(1):
            return match.group(1).strip()
    return None


def segsuite_package_parent() -> str:
    """The folder holding the ``segsuite`` package, for the child's PYTHONPATH."""
    return str(Path(__file__).resolve().parent.parent)


class ProcessRunner:
    """One child process with line-by-line output, progress parsing and tree-wide cancel."""

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None):
        self.command = [str(part) for part in command]
        self.env = env
        self.cwd = cwd
        self.process: Optional[subprocess.Popen] = None
        self.log: list[str] = []
        self.fraction = 0.0
        self.message = ""
        self.cancelled = False
        self._queue: "queue.Queue[tuple[str, Optional[str]]]" = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._open_streams = 0
        self._finished_reported = False

    @classmethod
    def for_segsuite(cls, arguments: Sequence[str], python: Optional[str] = None, env: Optional[dict] = None,
                     cwd: Optional[str] = None) -> "ProcessRunner":
        """``python -m segsuite --progress json <arguments>`` with segsuite importable in the child."""
        environment = dict(os.environ if env is None else env)
        parent = segsuite_package_parent()
        paths = [parent] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p and p != parent]
        environment["PYTHONPATH"] = os.pathsep.join(paths)
        environment["PYTHONUNBUFFERED"] = "1"
        environment["PYTHONIOENCODING"] = "utf-8"
        command = [python or sys.executable, "-m", "segsuite", "--progress", "json", *arguments]
        return cls(command, env=environment, cwd=cwd)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ProcessRunner":
        if self.process is not None:
            raise RuntimeError("this runner was already started")
        options: dict = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            options["start_new_session"] = True  # own process group: cancel reaches grandchildren
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, text=True,
                                            encoding="utf-8", errors="replace", bufsize=1, **options)
        except OSError as error:
            raise ProcessError(f"cannot start {self.command[0]}: {error.strerror or error}") from error
        for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            thread = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            thread.start()
            self._readers.append(thread)
        self._open_streams = 2
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """True until the process has exited and all of its output has been polled."""
        if self.process is None:
            return False
        return self.process.poll() is None or self._open_streams > 0 or not self._queue.empty()

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll() if self.process is not None else None

    def poll(self) -> list[Event]:
        """Everything that happened since the last call; never blocks."""
        events: list[Event] = []
        while True:
            try:
                stream, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._open_streams -= 1
                continue
            progress = parse_progress_line(line) if stream == "stderr" else None
            if progress is not None:
                self.fraction, self.message = progress.fraction, progress.message
                events.append(progress)
            else:
                self.log.append(line)
                events.append(LogEvent(line, stream))
        if (not self._finished_reported and self.process is not None and self._open_streams <= 0
                and self.process.poll() is not None):
            self._finished_reported = True
            events.append(FinishedEvent(self.process.returncode))
        return events

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the process to exit (output keeps being queued for poll())."""
        if self.process is None:
            raise RuntimeError("not started")
        code = self.process.wait(timeout)
        for thread in self._readers:
            thread.join(timeout=5)
        return code

    def cancel(self, grace: float = 3.0) -> None:
        """Stop the process and everything it started: terminate, then kill after ``grace`` s."""
        self.cancelled = True
        if self.process is None or self.process.poll() is not None:
            if self.process is not None and os.name != "nt":
                _signal_group(self.process.pid, signal.SIGKILL)  # leftovers of an exited leader
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        else:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # -- results ---------------------------------------------------------------------------
    def error_message(self) -> str:
        """What went wrong, in the child's own words when it said so."""
        code = self.returncode
        found = error_message_from_log(self.log)
        if found:
            return found
        tail = " | ".join(line for line in self.log[-5:] if line.strip())
        return f"the process {os.path.basename(self.command[0])} exited with status {code}" + (f": {tail}" if tail else "")

    def check(self) -> None:
        """Raise ProcessCancelled / ProcessError unless the process finished successfully."""
        code = self.returncode
        if self.cancelled:
            raise ProcessCancelled("cancelled")
        if code is None:
            raise RuntimeError("the process is still running")
        if code != 0:
            raise ProcessError(self.error_message(), code, self.log)

    def run(self, progress: Optional[ProgressCallback] = None, poll_interval: float = 0.05,
            cancel_event: Optional[threading.Event] = None, timeout: Optional[float] = None) -> None:
        """Start (if needed), forward progress until the end, raise on failure or cancel."""
        report = ensure_callback(progress)
        if self.process is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            for event in self.poll():
                if isinstance(event, ProgressEvent):
                    report(event.fraction, event.message)
            if cancel_event is not None and cancel_event.is_set():
                self.cancel()
            elif deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise ProcessError(f"the process did not finish within {timeout} s and was stopped", None, self.log)
            time.sleep(poll_interval)
        self.poll()
        self.check()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
