"""Drive a server from outside: start ``mobilenets serve`` as a child process, send it a
bounded load, stop it with SIGTERM. ``benchmarks/serve_load.py`` and the tests use this.

The load is a fixed number of requests from ``concurrency`` client threads, each with its own
keep-alive connection, to 127.0.0.1 only; it stops by itself. Every request is accounted for:
answered with the status it should get, answered with another, or lost (no answer).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MobilenetsError


@dataclass(frozen=True)
class Upload:
    """One request body: its content type, and the status class it must get (2 or 4)."""

    body: bytes
    content_type: str
    expect: int = 2
    name: str = ""


@dataclass
class LoadResult:
    """What a load run saw."""

    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    statuses: Counter = field(default_factory=Counter)
    batch_sizes: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # answered, but not with the expected status
    lost: int = 0  # no answer at all

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else float("nan")
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "throughput_rps": round(self.requests / self.seconds, 2) if self.seconds else None,
                "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
                "ok": sum(n for s, n in self.statuses.items() if 200 <= s < 300),
                "client_errors": sum(n for s, n in self.statuses.items() if 400 <= s < 500),
                "server_errors": sum(n for s, n in self.statuses.items() if s >= 500),
                "unexpected": len(self.wrong), "lost": self.lost,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}


def free_port() -> int:
    """A TCP port nobody listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one(conn: http.client.HTTPConnection, upload: Upload, path: str) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body=upload.body, headers={"Content-Type": upload.content_type})
    response = conn.getresponse()
    data = response.read()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, {}


def run_load(port: int, uploads: Sequence[Upload], requests: int, concurrency: int,
             path: str = "/v1/predict?top_k=5", timeout: float = 60.0) -> LoadResult:
    """``requests`` POSTs, uploads taken in turn, from ``concurrency`` threads."""
    result, lock, counter = LoadResult(requests, 0.0), threading.Lock(), itertools.count()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while (i := next(counter)) < requests:
            upload = uploads[i % len(uploads)]
            start = time.perf_counter()
            try:
                status, data = _one(conn, upload, path)
            except (OSError, http.client.HTTPException):
                conn.close()  # a closed connection: count it, reconnect for the next request
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                with lock:
                    result.lost += 1
                continue
            ms = (time.perf_counter() - start) * 1000
            with lock:
                result.statuses[status] += 1
                if status // 100 != upload.expect:
                    result.wrong.append(f"{upload.name or upload.content_type}: {status} {data}")
                elif status == 200:
                    result.latencies_ms.append(ms)
                    result.batch_sizes[data.get("batch_size", 0)] += 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    return result


class ServerProcess:
    """``mobilenets serve MODEL --port P ARGS`` as a child; a context manager that waits for
    ``/readyz`` and ends it with SIGTERM (checking that it exits by itself, status 0)."""

    def __init__(self, model: str | os.PathLike, *args: str, port: int | None = None,
                 ready_timeout: float = 120.0, log: str | os.PathLike | None = None) -> None:
        self.port = port or free_port()
        self.command = [sys.executable, "-m", "mobilenets", "serve", str(model), "--port", str(self.port), *args]
        self.ready_timeout, self.log_path = ready_timeout, Path(log) if log else None
        self.proc: subprocess.Popen | None = None
        self._log: Any = None
        self.exit_code: int | None = None

    def __enter__(self) -> ServerProcess:
        out = self._log = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        src = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(self.command, stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MobilenetsError(f"server exited with status {self.proc.returncode} before it was ready")
            if self.get("/readyz")[0] == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise MobilenetsError(f"server not ready after {self.ready_timeout:.0f} s")

    def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``; status 0 when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then wait for the exit; kill only when it does not come."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = None if self.proc is None else self.proc.returncode
        if self._log is not None:
            self._log.close()
        return self.exit_code

    def __exit__(self, *exc: object) -> None:
        self.stop()
