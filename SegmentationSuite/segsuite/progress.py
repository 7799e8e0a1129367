"""Progress reporting: one callback type for all long work.

A progress callback takes ``(fraction, message)`` with fraction in [0, 1]. The command line
shows it with tqdm, Slicer with its progress bar, tests record the calls.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """A callback that ignores everything."""


def ensure_callback(progress: Optional[ProgressCallback]) -> ProgressCallback:
    return progress if progress is not None else no_progress


def sub_progress(progress: Optional[ProgressCallback], start: float, end: float) -> ProgressCallback:
    """Map a sub-task's [0, 1] onto [start, end] of the parent's range."""
    parent = ensure_callback(progress)

    def report(fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        parent(start + (end - start) * fraction, message)

    return report


class ProgressRecorder:
    """Collects every call; useful in tests and for replaying progress in another process."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, message: str) -> None:
        self.calls.append((float(fraction), str(message)))


def tqdm_progress(description: str = "", disable: bool = False) -> tuple[ProgressCallback, Callable[[], None]]:
    """A callback driving a tqdm bar in percent; returns (callback, close)."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=description, unit="%", disable=disable,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}")

    def report(fraction: float, message: str) -> None:
        bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return report, bar.close
