"""The one rule for Slicer's testing mode: no network, no pip, no weights, no restart.

The extensions factory runs every ctest-registered test with ``Slicer --testing``
(``slicer_add_python_unittest`` in CMake/SlicerMacroPythonTesting.cmake, v5.10.0 and v5.12.3) on a
bare Slicer without network. There SegmentationSuite installs no Python package (pip or PyTorch),
downloads no sample data or weights, and never offers to restart (``confirmYesNoDisplay`` answers
yes by itself in testing mode). Everything that would do one of those calls ``refuse_in_testing``
first, so the refusal is one clear error instead of a hang, a silent skip or a changed Slicer.
"""

from __future__ import annotations


class TestingModeRefusal(RuntimeError):
    """Raised instead of something that must not happen while Slicer runs in testing mode."""

    __test__ = False  # not a pytest test class


def testing_mode() -> bool:
    """True inside a Slicer application started with ``--testing`` (False outside Slicer)."""
    try:
        import slicer
    except ImportError:
        return False
    app = getattr(slicer, "app", None)
    if app is None or not hasattr(app, "testingEnabled"):  # slicer-core, PythonSlicer
        return False
    return bool(app.testingEnabled())


def refuse_in_testing(action: str) -> None:
    """Raise TestingModeRefusal naming ``action`` when Slicer runs in testing mode."""
    if testing_mode():
        raise TestingModeRefusal(
            f"Slicer runs in testing mode (--testing): SegmentationSuite does not {action} there. "
            "Run the module's full self-test from the module panel with 'Reload and Test' instead.")
