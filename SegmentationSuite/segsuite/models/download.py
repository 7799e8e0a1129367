"""Streaming HTTP download of one URL into a ``.part`` file, with resume and retries.

This is the only code in segsuite that opens network connections. requests honours the usual
proxy variables (HTTPS_PROXY, NO_PROXY, ...) because trust_env stays on.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import requests

from .. import __version__
from ..checksum import sha256_of
from ..errors import ModelError
from .config import DownloadSettings

ByteProgress = Callable[[int, Optional[int]], None]   # (bytes so far, total or None)
USER_AGENT = f"segsuite/{__version__} (SegmentationSuite model manager)"


class DownloadError(Exception):
    """This URL did not give the file; ``reason`` is one line for the user's list of URLs tried."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Retry(Exception):
    """A transient failure: try the same URL again after a pause, resuming if possible."""


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept-Encoding"] = "identity"   # sizes and Range offsets count stored bytes
    return session



def check_free_space(folder: Path, needed: int, settings: DownloadSettings) -> None:
    free = shutil.disk_usage(folder).free
    if needed + settings.min_free_bytes > free:
        raise ModelError(f"not enough free disk space in {folder}: {_mb(needed)} needed, {_mb(free)} free; "
                         "free some space or set SEGSUITE_HOME to a folder on a larger disk")


def disk_error(error: OSError, path: Path) -> ModelError:
    """A clear message for a local write failure (never retried, never blamed on the server)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
        fix = "free some space or set SEGSUITE_HOME to a folder on a larger disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "permission denied"
        fix = "make the folder writable or set SEGSUITE_HOME to a folder you can write to"
    else:
        what = error.strerror or str(error)
        fix = "check the folder or set SEGSUITE_HOME to another one"
    return ModelError(f"cannot write {path}: {what}; {fix}")


def fetch(url: str, part: Path, *, session: requests.Session, settings: DownloadSettings,
          expected_size: Optional[int] = None, progress: Optional[ByteProgress] = None,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Download ``url`` into ``part``, resuming from what ``part`` already holds.

    Retries connection errors, 5xx/429 and short bodies with exponential backoff, resuming with
    an HTTP Range request. Raises DownloadError when this URL cannot give the file (404, other 4xx,
    or still failing after the retries) so the caller moves to the next URL, and ModelError for a
    local problem (disk full, permissions) that another URL would not fix.
    """
    failures = 0
    while True:
        try:
            _fetch_once(url, part, session, settings, expected_size, progress)
            return
        except _Retry as error:
            failures += 1
            if failures > settings.retries:
                raise DownloadError(f"{error} (gave up after {failures} attempts)") from None
            sleep(min(settings.backoff * 2 ** (failures - 1), settings.backoff_max))


def _fetch_once(url, part: Path, session, settings, expected_size, progress) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with session.get(url, headers=headers, stream=True, timeout=settings.timeout,
                         allow_redirects=True) as response:
            status = response.status_code
            if status == 416 and offset and offset == expected_size:
                return                      # the .part is already complete
            if status == 416:
                part.unlink(missing_ok=True)
                raise _Retry("HTTP 416 for a resumed download")
            if status in (404, 410):
                raise DownloadError(f"HTTP {status} (not found)")
            if status == 429 or status >= 500:
                raise _Retry(f"HTTP {status}")
            if status >= 400 or status not in (200, 206):
                raise DownloadError(f"HTTP {status}")
            if status == 206 and not _range_starts_at(response, offset):
                offset = 0                  # an unexpected range: start again cleanly
                part.unlink(missing_ok=True)
                raise _Retry("server answered with an unexpected byte range")
            if status == 200:
                offset = 0                  # server ignored Range (or none asked): rewrite from the start
            declared = response.headers.get("Content-Length")
            remaining = int(declared) if declared and declared.isdigit() else None
            total = offset + remaining if remaining is not None else expected_size
            if expected_size is not None and total is not None and total != expected_size:
                raise DownloadError(f"size {total} bytes, expected {expected_size}")
            check_free_space(part.parent, (total or 0) - offset, settings)
            received = _write_body(response, part, offset, total, settings, progress)
    except requests.exceptions.SSLError as error:
        raise DownloadError(f"TLS error: {error}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as error:
        raise _Retry(f"connection failed: {type(error).__name__}") from None
    except requests.exceptions.RequestException as error:
        raise DownloadError(f"{type(error).__name__}: {error}") from None
    if remaining is not None and received < remaining:
        raise _Retry(f"body ended after {offset + received} of {total} bytes")
    if expected_size is not None and offset + received < expected_size:
        raise _Retry(f"body ended after {offset + received} of {expected_size} bytes")


def _range_starts_at(response, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")    # "bytes 100-199/200"
    try:
        return int(content_range.split()[1].split("-")[0]) == offset
    except (IndexError, ValueError):
        return False


def _write_body(response, part: Path, offset: int, total, settings, progress) -> int:
    received = 0
    try:
        with open(part, "ab" if offset else "wb") as stream:
            for chunk in response.iter_content(chunk_size=settings.chunk_size):
                if not chunk:
                    continue
                stream.write(chunk)
                received += len(chunk)
                if progress:
                    progress(offset + received, total)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        if isinstance(error, requests.exceptions.RequestException):
            raise
        raise disk_error(error, part) from None
    return received


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
