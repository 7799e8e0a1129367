"""One participant run per output dataset at a time: a lock file that names its holder.

``OUTPUT_DIR/.segsuite.lock`` is created with O_EXCL (atomic, NFS included) and holds the
holder's host, pid and start time. A second run fails at once with one line naming the holder;
a lock whose holder is gone (same host, pid not running) is taken over. The lock goes on every
exit path the process lives through (the ``with`` block; a signal is an exception here); after a
SIGKILL the next run takes it over. A dot file: BIDS tools do not index it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Optional

from ..errors import SegSuiteError
from ..faults import _alive

LOCK_NAME = ".segsuite.lock"


class OutputLocked(SegSuiteError):
    """Another run holds the output dataset."""


def read_holder(path: Path) -> Optional[dict]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "an unknown run (the lock file is empty or unreadable)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {started}"


class OutputLock:
    """``with OutputLock(output_dir):`` around a run; creates ``output_dir`` if needed (and removes
    it again on release when it is still empty, so a run refused early leaves nothing)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self.created_dir = False
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self.held = False

    def acquire(self) -> "OutputLock":
        if not self.output_dir.exists():
            self.output_dir.mkdir(parents=True)
            self.created_dir = True
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is None and time.time() - self._mtime() < 5:
                    time.sleep(0.2)  # its holder may be writing it right now
                    holder = read_holder(self.path)
                if not self._stale(holder):
                    raise OutputLocked(f"{self.output_dir} is in use by another segsuite bids run ({_describe(holder)}); "
                                       f"wait for it to finish, or remove {self.path} if that run is gone") from None
                self._take_over()
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(self.holder) + "\n")
            self.held = True
            return self
        raise OutputLocked(f"cannot take the lock {self.path}: other runs keep taking it; try again")

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _stale(self, holder: Optional[dict]) -> bool:
        """The holder is gone: same host and its pid is not running (another host's cannot be checked)."""
        if holder is None:
            return time.time() - self._mtime() >= 5
        return holder.get("host") == self.holder["host"] and not _alive(int(holder.get("pid", 0)))

    def _take_over(self) -> None:
        # rename first: of two runs taking over at once, only one moves the stale file away
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if not self._stale(read_holder(aside)):  # a live run took it meanwhile: give it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            holder = read_holder(self.path)
            if holder and holder.get("pid") == self.holder["pid"] and holder.get("host") == self.holder["host"]:
                self.path.unlink(missing_ok=True)
            self.held = False
        if self.created_dir:
            try:
                self.output_dir.rmdir()  # only when still empty
            except OSError:
                pass

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
