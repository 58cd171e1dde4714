"""Command-line mistakes as the rest of the CLI reports them: one ``error:`` line naming the
closest valid choice, no usage block.

argparse's own ``error()`` prints a usage block (25 lines for ``train``) and exits; the
README promises one line and a "did you mean" for a misspelled option or choice, as model
names get. :class:`Parser` raises :class:`UsageError` instead, which ``main`` prints like
any :class:`~mobilenets.errors.MobilenetsError`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import MobilenetsError, did_you_mean

#: Namespace attribute where the innermost parser that met unknown arguments records its
#: option strings, so that the top-level "unrecognized arguments" error can suggest one of
#: the command's own options rather than any command's.
_OPTIONS_ATTR = "_mobilenets_known_options"


class UsageError(MobilenetsError):
    """A command line argparse could not parse: printed as one ``error:`` line, status 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` with a suggestion.

    Sub-command parsers are of this class too (``add_subparsers`` uses the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(ns, _OPTIONS_ATTR):
            # The innermost parser gets here first; its namespace is copied into the parent's.
            setattr(ns, _OPTIONS_ATTR, (self.prog, sorted(self._option_string_actions)))
        return ns, extras

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            prog, options = getattr(ns, _OPTIONS_ATTR, (self.prog, sorted(self._option_string_actions)))
            unknown = extras[0]
            hint = did_you_mean(unknown.split("=", 1)[0], options) if unknown.startswith("-") else ""
            raise UsageError(f"unrecognized argument{'s' if len(extras) > 1 else ''}: "
                             f"{' '.join(extras)}{hint} (see `{prog} --help`)")
        if hasattr(ns, _OPTIONS_ATTR):
            delattr(ns, _OPTIONS_ATTR)
        return ns

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """A value outside ``choices``: the closest choice first, then all of them."""
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(c) for c in choices]
        what = "command" if isinstance(action, argparse._SubParsersAction) else "choice"
        raise argparse.ArgumentError(action, f"invalid {what}: {value!r}{did_you_mean(str(value), names)}; "
                                             f"choose from {', '.join(names)}")
