"""``mobilenets pick``: a thin command over :func:`mobilenets.deploy.pick.pick`."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from ..deploy.pick import pick, plot_front
from ..errors import MobilenetsError
from .deploy import _third_party_quiet


def run_pick(args: argparse.Namespace) -> int:
    """Time the candidates, print the fronts and the choice; progress goes to stderr."""
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.seconds is not None and not (math.isfinite(args.seconds) and 0 < args.seconds <= 600):
        raise MobilenetsError(f"--seconds must be in (0, 600], got {args.seconds}")
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise MobilenetsError(f"--plot writes a PNG: give a .png file, got {args.plot!r}")
    for flag, out in (("--json", args.json), ("--plot", args.plot)):
        if out and not Path(out).parent.is_dir():  # before minutes of timing, not after
            raise MobilenetsError(f"{flag}: folder {str(Path(out).parent)!r} does not exist")
    err = sys.stderr  # our progress lines; what the exporters write goes elsewhere
    with _third_party_quiet(args.verbose):
        report = pick(args.budget_ms, backends=backends, batch=args.batch, threads=args.threads,
                      quick=args.quick, seconds=args.seconds,
                      log=lambda msg: print(msg, file=err, flush=True),
                      command=shlex.join(["mobilenets", *args.argv]))
    print(report.table())
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        except OSError as e:
            raise MobilenetsError(f"--json: cannot write {args.json!r}: {e.strerror}") from e
        print(f"json -> {args.json}")
    if args.plot:
        print(f"plot -> {plot_front(report, args.plot)}")
    return 0
