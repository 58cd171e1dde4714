"""The ``mobilenets`` command line: one parser (``parser.py``), one dispatch table
(``main.COMMANDS``), handlers by topic (``models``, ``train``, ``deploy``, ``paper``)."""

from .main import main

__all__ = ["main"]
