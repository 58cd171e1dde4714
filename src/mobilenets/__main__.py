"""``python -m mobilenets`` (and ``torchrun -m mobilenets``) runs the CLI."""

import os
import sys

from .cli.main import main


def _run() -> None:
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose work is done (files written atomically, process group
        # destroyed) leaves at once: in about 1 run in 20 on CPU, a gloo/c10d background thread
        # still joinable when C++ static destructors run aborted the worker ("terminate called
        # without an active exception", SIGABRT) after a successful run, and torchrun then
        # reported the whole run as failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # importing the module (pydoc, a walk over the package) runs nothing
    _run()
