"""Third-party log noise kept out of the user's terminal, and shown with ``--verbose``."""

from __future__ import annotations

import contextlib
import io
import logging
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
