"""Third-party log noise kept out of the user's terminal, and shown with ``--verbose``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def captured_logs(loggers: Sequence[str], label: str) -> Iterator[None]:
    """What ``loggers`` say inside the block is captured instead of printed (torch's ``W...``
    lines, a traceback it logs before raising), then passed to the ``mobilenets`` logger at
    DEBUG level under ``label``; ``mobilenets --verbose`` shows that logger."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    saved = []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        if buffer.getvalue():
            logging.getLogger("mobilenets").debug("%s:\n%s", label, buffer.getvalue())


@contextlib.contextmanager
def captured_descriptors(label: str) -> Iterator[None]:
    """What native code (C++ runtimes: absl, cpuinfo, XNNPACK) writes straight to file
    descriptors 1 and 2 inside the block goes to a temporary file, then to the ``mobilenets``
    logger at DEBUG level under ``label``; Python's own streams are flushed first, so that
    nothing of ours is captured."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if text:
                logging.getLogger("mobilenets").debug("%s (native output):\n%s", label, text)


@contextlib.contextmanager
def quiet_third_party(loggers: Sequence[str], label: str) -> Iterator[None]:
    """Everything a third-party converter or runtime shows inside the block kept out of the
    terminal and passed to the ``mobilenets`` logger at DEBUG level (``--verbose``): native
    output (:func:`captured_descriptors`), its Python ``loggers`` (:func:`captured_logs`),
    what it prints or draws as progress bars on ``sys.stdout``/``sys.stderr``, and its
    warnings."""
    shown = io.StringIO()
    try:
        with captured_descriptors(label), captured_logs(loggers, label), \
                contextlib.redirect_stdout(shown), contextlib.redirect_stderr(shown), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if shown.getvalue().strip():
            logging.getLogger("mobilenets").debug("%s:\n%s", label, shown.getvalue())
