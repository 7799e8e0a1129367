"""The ``segsuite`` command line: one subcommand per job.

Subcommands live in ``segsuite.commands``; each module there defines NAME, HELP,
``add_arguments(parser)`` and ``run(args)``. Exit status: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from typing import Optional, Sequence

from . import __version__, commands
from .errors import SegSuiteError, UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show full tracebacks on errors")
        module.add_arguments(sub)
        sub.set_defaults(_command=module)
    return parser


PROGRESS_PREFIX = "SEGSUITE_PROGRESS "


def progress_for(args, description: str = ""):
    """The progress callback a command should use, and a function to call when done.

    With ``--progress json`` each call prints one line ``SEGSUITE_PROGRESS {"fraction": f,
    "message": m}`` to stderr, which the Slicer process runner parses.
    """
    import json

    mode = getattr(args, "progress", "bar")
    if mode == "json":
        def report(fraction: float, message: str) -> None:
            line = json.dumps({"fraction": round(float(fraction), 4), "message": str(message)})
            print(PROGRESS_PREFIX + line, file=sys.stderr, flush=True)

        return report, lambda: None
    if mode == "none":
        return (lambda fraction, message: None), (lambda: None)
    from .progress import tqdm_progress

    return tqdm_progress(description)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status = args._command.run(args)
        return int(status or 0)
    except UsageError as error:
        print(f"segsuite {args.command}: error: {error}", file=sys.stderr)
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
        print(f"segsuite {args.command}: interrupted", file=sys.stderr)
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
