"""Errors of a distributed run reported once: one ``error:`` line, not one per process
followed by torchrun's 60-line ``ChildFailedError`` report.

Every worker of a failed run usually meets the same mistake (a missing data folder, a bad
class folder). A worker therefore writes its error message to the file torchrun gives it
(``TORCHELASTIC_ERROR_FILE``), where the launcher finds the first failure's message, and
prints it itself only when no ``mobilenets`` launcher is there to do so, and then only on
rank 0. ``mobilenets train --nproc-per-node N`` (:func:`launch`) prints that message as its
one line; torchrun's own log lines go to the ``mobilenets`` logger (``--verbose`` shows them).
Under a bare ``torchrun -m mobilenets``, torchrun still prints its own failure report after
rank 0's line: that report is torchrun's, outside this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from ..errors import MobilenetsError
from ..logs import captured_logs

#: Set by :func:`launch` for its workers: the launcher reports their errors.
LAUNCHED_ENV = "MOBILENETS_TORCHRUN_LAUNCHER"
_TORCHRUN_LOGGERS = ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher")


def in_worker() -> bool:
    """Whether this process is one of several that torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def report_worker_error(message: str) -> bool:
    """Record ``message`` for the launcher (in a torchrun worker); whether this process
    should print it as well."""
    if not in_worker():
        return True
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError):  # reporting must not hide the error itself
            with open(path, "w") as f:
                json.dump({"message": message, "timestamp": int(time.time())}, f)
    return not os.environ.get(LAUNCHED_ENV) and os.environ.get("RANK", "0") == "0"


def _quiet_torchrun() -> contextlib.AbstractContextManager[None]:
    """torchrun's ``W``/``E`` log lines (its OMP_NUM_THREADS notice, "failed (exitcode: 2)")
    go to the ``mobilenets`` logger at DEBUG level, which ``--verbose`` shows."""
    return captured_logs(_TORCHRUN_LOGGERS, "torchrun")


def launch(torchrun_args: list[str], out: str) -> None:
    """Run ``torchrun torchrun_args`` in this process; a failed worker is one
    :class:`MobilenetsError` carrying the first failure's own message when it left one."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun  # the launcher only: spares every other command its import

    os.environ[LAUNCHED_ENV] = "1"
    try:
        with _quiet_torchrun():
            torchrun(torchrun_args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        own = isinstance(failure.message, str) and failure.error_file_data.get("message") == failure.message
        cause = (f"rank {rank}: {failure.message}" if own else
                 f"a worker stopped with an error (printed above, exit code {failure.exitcode})")
        raise MobilenetsError(f"distributed training failed on {cause}; torchrun ended the other "
                              f"workers, and the last good checkpoint in {out} is intact") from e
    except Exception as e:  # noqa: BLE001 - a rendezvous or launch failure inside torchrun
        raise MobilenetsError(f"distributed training could not start: {e}") from e
    finally:
        os.environ.pop(LAUNCHED_ENV, None)
