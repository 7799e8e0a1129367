"""Stand-in for Slicer's application object (see ../README.md); only what the install code uses."""

import os

from . import util  # noqa: F401  (slicer.util is always imported with slicer)


class _App:
    def testingEnabled(self):
        return os.environ.get("SEGSUITE_STANDIN_TESTING") == "1"

    def processEvents(self):
        util.record({"event": "processEvents"})


app = _App()
