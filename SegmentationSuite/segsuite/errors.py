"""The one exception type for problems a user can cause and fix."""


class SegSuiteError(Exception):
    """A user-facing error: the message says what was wrong and what to do.

    The command line prints it as one line (exit status 1) and Slicer shows it in a dialog;
    neither shows a traceback unless asked to (``--verbose``).
    """


class InputError(SegSuiteError):
    """An input image, label map or argument cannot be used as given."""


class ModelError(SegSuiteError):
    """Model weights are missing, corrupt, or do not match the network."""


class OutputExistsError(SegSuiteError):
    """An output file exists and overwriting it was not allowed."""


class UsageError(SegSuiteError):
    """The command line was used wrongly (exit status 2, like argparse's own errors)."""


def with_flags(message: str, flags) -> str:
    """``message`` with the flags it names (``--conform``) as another command calls them
    (``--sclimbic-conform``): engine errors name the engine's own command's flags."""
    import re

    for flag, renamed in (flags or {}).items():
        message = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", renamed, message)
    return message
