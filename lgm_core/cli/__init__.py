"""Command-line interface: ``python -m lgm_core <command> ...``.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments, returns an exit code). Add a new command to the imports and the tuple in
:func:`command_modules` (a missing command module is an ImportError, never skipped). The command
modules import their heavy dependencies inside ``func``, so building the parser stays cheap.
Errors the user can fix (:class:`CLIError`, ``FileNotFoundError``, ``ValueError``) end the
program with exit code 2 and a one-line reason on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import List, Optional, Tuple


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def command_modules() -> Tuple[ModuleType, ...]:
    """The command modules, in the order ``--help`` lists them. (Imported here, not at the top:
    they import :class:`CLIError` and :func:`progress` from this package.)"""
    from . import batch, demo, generate, mesh, prepare_data, reconstruct, render, train

    return (reconstruct, render, generate, batch, mesh, prepare_data, train, demo)


def build_parser(prog: str = "lgm") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="LGM: multi-view images -> 3D Gaussians -> renders and meshes.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules():
        module.register(sub)
    return parser


def progress(message: str) -> None:
    """Progress and status lines go to stderr so stdout stays clean for piping."""
    print(message, file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None, prog: str = "lgm") -> int:
    """Run a command; ``prog`` is the name shown in usage lines (the ``lgm`` entry point, or
    ``python -m lgm_core`` from ``__main__``)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError, RuntimeError, OSError, MemoryError) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, MemoryError):
            message = f"out of memory ({message}): use smaller inputs or settings"
        print(f"error: {message}", file=sys.stderr)
        return 2
