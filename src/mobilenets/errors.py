"""The project's own error: one clear message for a user mistake, caught by the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MobilenetsError(ValueError):
    """A user-facing error: what is wrong, where, and what to do. The CLI prints its message
    and exits with status 2 (``--debug`` shows the traceback)."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid choice, or an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
