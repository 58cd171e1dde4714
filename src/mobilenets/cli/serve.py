"""``mobilenets serve``: load the model here (so a bad file is one ``error:`` line), then run
uvicorn on the app of :mod:`mobilenets.serve`; with ``--workers N``, N processes that each
load it, handed their settings through the environment."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict

from ..errors import MobilenetsError
from .options import reuse_memory

#: Seconds in-flight requests get to finish after Ctrl-C or SIGTERM.
GRACEFUL_SECONDS = 30


def _require_stack() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MobilenetsError(f"serve needs the serve extra ({e.name} is missing): "
                              "pip install 'mobilenets[serve]'") from e


def _check(args: argparse.Namespace) -> None:
    checks = [(1 <= args.port <= 65535, f"--port must be in [1, 65535], got {args.port}"),
              (args.workers >= 1, f"--workers must be >= 1, got {args.workers}"),
              (1 <= args.max_batch <= 1024, f"--max-batch must be in [1, 1024], got {args.max_batch}"),
              (0 <= args.max_wait_ms <= 10_000, f"--max-wait-ms must be in [0, 10000], got {args.max_wait_ms}"),
              (0 < args.max_body_mb <= 1024, f"--max-body-mb must be in (0, 1024], got {args.max_body_mb}"),
              (args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}")]
    for ok, message in checks:
        if not ok:
            raise MobilenetsError(message)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _sigterm_returns() -> Iterator[None]:
    """uvicorn re-raises SIGTERM once its graceful shutdown is over (every request answered);
    a no-op handler then lets the command return 0 instead of dying by the signal."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_serve(args: argparse.Namespace) -> int:
    """Serve one model until Ctrl-C or SIGTERM; in-flight requests finish first."""
    _require_stack()
    _check(args)
    import torch
    import uvicorn

    from ..serve import ServeOptions, build_app, load_served
    from ..serve.app import configure_logging

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    torch.set_num_threads(threads)
    reuse_memory(args)
    served = load_served(args.model, pretrained=args.pretrained, trust_code=args.trust_code,
                         backend=args.backend)
    options = ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                           max_body_mb=args.max_body_mb)
    configure_logging()
    if not _is_loopback(args.host):
        print(f"warning: serving on {args.host}: other machines can reach this server "
              "(it has no authentication)", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {served.name} ({served.backend}) on http://{shown}:{args.port}/ "
          f"(max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, {args.workers} worker(s), "
          f"{threads} thread(s) each); Ctrl-C stops", file=sys.stderr, flush=True)
    common = {"host": args.host, "port": args.port, "log_level": args.log_level,
              "timeout_graceful_shutdown": GRACEFUL_SECONDS}
    if args.workers == 1:
        with _sigterm_returns():
            uvicorn.run(build_app(served, options), **common)
        return 0
    os.environ["MOBILENETS_SERVE_CONFIG"] = json.dumps({
        "source": args.model, "pretrained": args.pretrained, "trust_code": args.trust_code,
        "backend": args.backend, "threads": threads, "reuse_memory": args.reuse_memory,
        "options": asdict(options)})
    with _sigterm_returns():
        uvicorn.run("mobilenets.serve.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0
