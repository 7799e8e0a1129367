"""The ``segsuite`` command line: one subcommand per job.

Subcommands live in ``segsuite.commands``; each module there defines NAME, HELP,
``add_arguments(parser)`` and ``run(args)``. Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from typing import Optional, Sequence

from . import __version__, commands
from .errors import SegSuiteError, UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line and exits 2."""

    help_hint = ""  # set by main to the named subcommand's help, where argparse reports from the top

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = OneLineParser.help_hint if self.prog == "segsuite" and OneLineParser.help_hint else f"{self.prog} --help"
        self.exit(2, f"{self.prog}: error: {message} (see {hint})\n")


def positive_threads(text: str) -> int:
    """--threads N: a whole number of at least 1 (0 would silently mean PyTorch's choice)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread count {text!r}: give a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads must be at least 1, got {value}")
    return value


def add_global_flags(parser) -> None:
    """--verbose and --progress also after the subcommand (and its action)."""
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default=argparse.SUPPRESS,
                        help="progress display: bar (on a terminal; plain lines otherwise), json, none")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_global_flags(sub)


def command_modules() -> list:
    modules = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            modules.append(module)
    return modules


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="segsuite", description="Brain and spinal-cord segmentation (SegmentationSuite).")
    parser.add_argument("--version", action="version", version=f"segsuite {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display: a bar (default), JSON lines on stderr for other programs, or none")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in command_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        for action in sub._actions:
            if getattr(action, "dest", "") == "threads" and action.type is int:
                action.type = positive_threads
        add_global_flags(sub)
        sub.set_defaults(_command=module)
    return parser


PROGRESS_PREFIX = "SEGSUITE_PROGRESS "


def progress_for(args, description: str = ""):
    """The progress callback a command should use, and a function to call when done.

    With ``--progress json`` each call prints one line ``SEGSUITE_PROGRESS {"fraction": f,
    "message": m}`` to stderr, which the Slicer process runner parses.
    """
    import json

    from .faults import checkpoint

    mode = getattr(args, "progress", "bar")
    if mode == "json":
        def report(fraction: float, message: str) -> None:
            line = json.dumps({"fraction": round(float(fraction), 4), "message": str(message)})
            print(PROGRESS_PREFIX + line, file=sys.stderr, flush=True)
            checkpoint("network")

        return report, lambda: None
    if mode == "none":
        def report(fraction: float, message: str) -> None:
            checkpoint("network")

        return report, (lambda: None)
    if not sys.stderr.isatty():  # a log file or a pipe: plain lines, no carriage-return bars
        state = {"step": -1, "message": None}

        def report(fraction: float, message: str) -> None:
            step = int(10 * min(max(float(fraction), 0.0), 1.0))
            words = "".join(c for c in str(message) if not c.isdigit())
            if step != state["step"] or words != state["message"]:
                state.update(step=step, message=words)
                print(f"{description}: {10 * step:3d}% {message}".strip(), file=sys.stderr, flush=True)
            checkpoint("network")

        return report, (lambda: None)
    from .progress import tqdm_progress

    bar_report, close = tqdm_progress(description)

    def report(fraction: float, message: str) -> None:
        bar_report(fraction, message)
        checkpoint("network")

    return report, close


def display_path(path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    path = os.path.abspath(os.fspath(path))
    here = os.getcwd()
    try:
        relative = os.path.relpath(path, here)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith(os.pardir) else relative


def print_written(paths) -> None:
    """What a command wrote, one line per file on stdout."""
    for path in paths:
        print(f"wrote {display_path(path)}", flush=True)


def _help_hint(parser, argv) -> str:
    """'segsuite CMD [ACTION] --help' for the subcommand named on the command line."""
    words = list(sys.argv[1:] if argv is None else argv)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for index, word in enumerate(words):
                if word in action.choices:
                    hint = f"segsuite {word}"
                    sub = action.choices[word]
                    for inner in sub._actions:
                        if isinstance(inner, argparse._SubParsersAction):
                            following = [w for w in words[index + 1:] if w in inner.choices]
                            if following:
                                hint += f" {following[0]}"
                    return hint + " --help"
    return "segsuite --help"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .faults import Interrupted, signal_policy

    parser = build_parser()
    OneLineParser.help_hint = _help_hint(parser, argv)
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    with signal_policy():
        try:
            return _run(args)
        except Interrupted as stop:  # a signal during the error report itself
            return 128 + stop.signum


def _run(args) -> int:
    from .faults import Interrupted, checkpoint

    try:
        checkpoint("start")
        status = args._command.run(args)
        return int(status or 0)
    except Interrupted as stop:
        print(f"segsuite {args.command}: interrupted by {stop.name}; temporary files removed, "
              "no output written", file=sys.stderr, flush=True)
        return 128 + stop.signum
    except UsageError as error:
        print(f"segsuite {args.command}: error: {error} (see {OneLineParser.help_hint})", file=sys.stderr)
        return 2
    except SegSuiteError as error:
        if args.verbose:
            traceback.print_exc()
        print(f"segsuite {args.command}: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"segsuite {args.command}: interrupted by SIGINT; temporary files removed, no output written",
              file=sys.stderr)
        return 130
    except MemoryError:
        if args.verbose:
            traceback.print_exc()
        print(f"segsuite {args.command}: error: out of memory; try --fast, --crop, fewer threads or a GPU", file=sys.stderr)
        return 1
    except Exception as error:  # an unexpected failure: still one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"segsuite {args.command}: internal error: {type(error).__name__}: {error} "
              "(rerun with --verbose for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
