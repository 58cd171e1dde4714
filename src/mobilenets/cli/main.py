"""The ``mobilenets`` command: a thin layer over the Python API.

:func:`~mobilenets.cli.parser.build_parser` declares every command's flags and
:data:`COMMANDS` names each command's handler. Every user mistake becomes one
``error: ...`` line and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from ..errors import MobilenetsError
from . import deploy, models, paper, pick, serve, train, weights
from .parser import build_parser
from .text import printable
from .torchrun import report_worker_error

Handler = Callable[[argparse.Namespace], int]

#: Each sub-command's handler: it parses nothing, calls the Python API and prints.
COMMANDS: dict[str, Handler] = {
    "models": models.run_models,
    "summary": models.run_summary,
    "convert": models.run_convert,
    "weights": weights.run_weights,
    "train": train.run_train,
    "eval": train.run_eval,
    "predict": train.run_predict,
    "demo": train.run_demo,
    "paper": paper.run_paper,
    "export": deploy.run_export,
    "bench": deploy.run_bench,
    "pick": pick.run_pick,
    "serve": serve.run_serve,
}

__all__ = ["COMMANDS", "build_parser", "main"]


def _warning_printer(show_python_warning: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints the library's own warnings as one
    ``warning: ...`` line, like errors, and leaves others to ``show_python_warning``."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if os.path.abspath(filename).startswith(package_dir) and issubclass(category, UserWarning):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            show_python_warning(message, category, filename, lineno, file, line)

    return show


def _run(handler: Handler, args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(warnings.showwarning)
        return int(handler(args) or 0)


@contextlib.contextmanager
def _library_logs(verbose: bool) -> Iterator[None]:
    """``--verbose``: what the loaders captured from torch's loggers
    (:func:`mobilenets.io.safety.quiet_loading`) goes to stderr, for this command only."""
    if not verbose:
        yield
        return
    logger = logging.getLogger("mobilenets")
    handler, level = logging.StreamHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status: 0 done, 2 a user error, 130 interrupted."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except MobilenetsError as e:  # a UsageError: one line, no usage block
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
    args.argv = argv  # `train --nproc-per-node` re-runs the command line under torchrun
    if not args.command:
        parser.print_help()
        return 2
    try:
        with _library_logs(args.verbose):
            return _run(COMMANDS[args.command], args)
    except MobilenetsError as e:
        if args.debug:
            traceback.print_exc()
        if report_worker_error(printable(e)):  # a torchrun worker: once, for all of them
            # escaped: the message can quote file and folder names an attacker chose
            print(f"error: {printable(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mobilenets models | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
