"""Text from files the user did not write (class names in an untrusted checkpoint's
metadata, folder names) made safe for a terminal: escape sequences and newlines in a class
name could rewrite the screen or forge output lines, so non-printable characters are shown
escaped (``\\x1b``, ``\\n``) wherever the CLI prints such text as plain text. JSON output
needs nothing: ``json.dumps`` escapes control characters itself."""

from __future__ import annotations


def printable(text: object) -> str:
    """``str(text)`` with every non-printable character written as its Python escape."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
