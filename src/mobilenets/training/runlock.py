"""One training run per run directory at a time.

Two ``train`` processes writing into the same ``--out`` both "succeed" and interleave their
files (``last.safetensors`` from one, ``best.safetensors`` from the other). A run therefore
holds an exclusive ``flock`` on ``<out>/.lock`` (which records its PID) from before it
reads anything until it ends: a second run into the same folder fails at once, naming the
first one's PID. The kernel releases the lock when its process exits, however it exits
(SIGKILL, a crash, a power cut), so a stale ``.lock`` file left behind blocks nothing.
Platforms without ``fcntl`` (Windows) run unlocked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import MobilenetsError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, take: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block (``take=False``: do nothing, for the
    processes of a distributed run other than rank 0, which alone writes files)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        take = False
    if not take:
        yield
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent is a file, read-only file system, ...
        raise MobilenetsError(f"cannot create the output directory {run_dir}: "
                              f"{e.strerror or e}; choose another --out") from e
    try:
        # O_NOFOLLOW: a ``.lock`` planted as a link to another file must not get truncated.
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        if (run_dir / LOCK_NAME).is_symlink():
            raise MobilenetsError(f"{run_dir / LOCK_NAME} is a symbolic link, not a lock file; "
                                  "remove it or choose another --out") from e
        raise MobilenetsError(f"output directory {run_dir} is not writable: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise MobilenetsError(f"another training run (PID {holder}) is using {run_dir}; wait "
                                  "for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
            _remove_empty_run_dir(run_dir)  # a run that failed to start leaves no folder behind
        raise
    finally:
        os.close(fd)  # releases the lock


def _remove_empty_run_dir(run_dir: Path) -> None:
    try:
        (run_dir / LOCK_NAME).unlink()
        run_dir.rmdir()
    except OSError:  # someone else wrote there meanwhile: leave it
        pass
