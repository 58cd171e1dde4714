"""Ctrl-C and SIGTERM during training: stop on a step boundary, save, and say how to resume."""

from __future__ import annotations

import signal
from pathlib import Path
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..errors import MobilenetsError


class TrainingInterrupted(MobilenetsError):
    """Ctrl-C or SIGTERM: a resumable checkpoint was saved."""


class Abort(KeyboardInterrupt):
    """A second Ctrl-C/SIGTERM: stop at once, without saving (the state may be mid-update)."""


class interrupt_guard:  # noqa: N801 (used as a function: ``with interrupt_guard() as stop:``)
    """SIGTERM and Ctrl-C while training only set a flag; the loop stops at the next step
    boundary and saves there. Raising at an arbitrary point (the default for Ctrl-C) could
    save weights updated by step k together with a counter saying step k is still to do,
    or half-updated weights, and the resumed run would no longer be exact. A second signal
    aborts at once without saving (the last checkpoint is kept)."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> Callable[[], bool]:
        self._flag = False
        self._old: dict[int, Any] = {}
        try:
            for s in self._SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not in the main thread: leave the default behaviour
            pass
        return lambda: self._flag

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._flag:
            raise Abort
        self._flag = True

    def __exit__(self, *exc: object) -> bool:
        for s, old in self._old.items():
            signal.signal(s, old)
        return False


def stopped(run_dir: Path, epoch: int, step: int, saved: Path | None) -> TrainingInterrupted:
    """The error that ends an interrupted run: where it stopped, what was saved, how to go on.
    ``saved`` is None after a second interrupt, which saves nothing."""
    resume = f"Resume with: mobilenets train --out {run_dir} --resume"
    if saved is not None:
        return TrainingInterrupted(f"interrupted at epoch {epoch + 1} step {step}; saved {saved}. {resume}")
    last = run_dir / "last.safetensors"
    kept = f"the last checkpoint {last} is kept" if last.is_file() else "nothing was saved"
    return TrainingInterrupted(f"aborted at epoch {epoch + 1} without saving (second interrupt); {kept}. {resume}")
