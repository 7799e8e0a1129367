"""One signal policy for every command, and the temporary-file naming that makes leftovers findable.

SIGINT, SIGTERM and SIGHUP (Ctrl-C, Slicer's Cancel, SLURM, ``timeout``) raise
:class:`Interrupted`, a KeyboardInterrupt, so every ``with`` block and ``except BaseException``
cleanup already in the code removes its temporary files; the command line then exits with
128 + the signal number and one line. After a SIGKILL nothing can clean up, so temporaries carry
the writer's pid (``.segsuite-<pid>-...``) and the next run removes those whose process is gone.

Tests reach fixed points of a run deterministically: with ``SEGSUITE_FAULT_AT=<point>`` the
process sends itself ``SEGSUITE_FAULT_SIGNAL`` (default SIGTERM) when it reaches
:func:`checkpoint` ``(point)``; points are ``before-network``, ``network`` and ``writing``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading

TEMP_PREFIX = ".segsuite-"
_TEMP_NAME = re.compile(r"^\.segsuite-(\d+)-")
HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """The process got SIGINT, SIGTERM or SIGHUP; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def signal_policy():
    """Within the block the handled signals raise Interrupted; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in HANDLED_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, handler)


def checkpoint(point: str) -> None:
    """Test hook: signal this process when SEGSUITE_FAULT_AT names ``point`` (once per process)."""
    if os.environ.get("SEGSUITE_FAULT_AT") != point:
        return
    name = os.environ.get("SEGSUITE_FAULT_SIGNAL", "SIGTERM")
    os.environ.pop("SEGSUITE_FAULT_AT", None)
    os.kill(os.getpid(), getattr(signal, name))


def temp_prefix() -> str:
    """The prefix of this process's temporary names: ``.segsuite-<pid>-``."""
    return f"{TEMP_PREFIX}{os.getpid()}-"


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask(0) and back would leave a window in
    which another thread, e.g. a Dask worker's, creates world-writable files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)   # no /proc: the short window is at least not permissive
    os.umask(mask)
    return mask


def give_umask_mode(path: str | os.PathLike) -> None:
    """mkstemp/mkdtemp make owner-only temporaries (0600/0700); one renamed into place as an output
    gets the mode a new file or folder has under the user's umask (shared results stay readable)."""
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~current_umask())


def is_temporary_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove ``.segsuite-<pid>-*`` files and folders in ``folder`` whose process is gone."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_NAME.match(name)
        if not match or _alive(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
    return removed
