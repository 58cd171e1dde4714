"""Counters and histograms for ``GET /metrics``, in Prometheus' text format (version 0.0.4).

Written here rather than taken from ``prometheus_client`` because the server needs four metric
families and no registry, exporter or multiprocess mode. With ``--workers N`` each process keeps
and reports its own figures (a scrape reaches one worker), as ``prometheus_client`` does without
its multiprocess directory.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Sequence

#: Request latency buckets in seconds: a MobileNet on a CPU answers in milliseconds.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Batch sizes formed by the dynamic batcher.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
PREFIX = "mobilenets_serve"

Labels = tuple[tuple[str, str], ...]


class Histogram:
    """Cumulative buckets, a sum and a count for each label set."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts: dict[Labels, list[int]] = defaultdict(lambda: [0] * (len(self.buckets) + 1))
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, value: float, labels: Labels = ()) -> None:
        self.counts[labels][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels, counts in sorted(self.counts.items()):
            running = 0
            for bound, n in zip((*self.buckets, float("inf")), counts):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f"{name}_bucket{_fmt((*labels, ('le', le)))} {running}")
            out.append(f"{name}_sum{_fmt(labels)} {self.sums[labels]:.6f}")
            out.append(f"{name}_count{_fmt(labels)} {running}")
        return out


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + text + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Everything ``/metrics`` reports; safe to update from the event loop and worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[Labels, int] = defaultdict(int)
        self.errors: dict[Labels, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.images = 0
        self.in_flight = 0

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        labels = (("endpoint", endpoint), ("status", str(status)))
        with self._lock:
            self.in_flight -= 1
            self.requests[labels] += 1
            if status >= 400:
                self.errors[labels] += 1
            self.latency.observe(seconds, (("endpoint", endpoint),))

    def batch_done(self, size: int, seconds: float) -> None:
        with self._lock:
            self.images += size
            self.batch_sizes.observe(size)
            self.inference.observe(seconds)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        p = PREFIX
        with self._lock:
            lines = [f"# HELP {p}_requests_total HTTP requests by endpoint and status code.",
                     f"# TYPE {p}_requests_total counter"]
            lines += [f"{p}_requests_total{_fmt(k)} {v}" for k, v in sorted(self.requests.items())]
            lines += [f"# HELP {p}_request_errors_total Requests answered with a 4xx or 5xx status.",
                      f"# TYPE {p}_request_errors_total counter"]
            lines += [f"{p}_request_errors_total{_fmt(k)} {v}" for k, v in sorted(self.errors.items())]
            lines += [f"# HELP {p}_request_duration_seconds Time from request to response.",
                      f"# TYPE {p}_request_duration_seconds histogram"]
            lines += self.latency.lines(f"{p}_request_duration_seconds")
            lines += [f"# HELP {p}_batch_size Images in each forward pass of the dynamic batcher.",
                      f"# TYPE {p}_batch_size histogram"]
            lines += self.batch_sizes.lines(f"{p}_batch_size")
            lines += [f"# HELP {p}_inference_seconds Time of each forward pass.",
                      f"# TYPE {p}_inference_seconds histogram"]
            lines += self.inference.lines(f"{p}_inference_seconds")
            lines += [f"# HELP {p}_images_total Images classified.", f"# TYPE {p}_images_total counter",
                      f"{p}_images_total {self.images}",
                      f"# HELP {p}_in_flight_requests Requests being answered now.",
                      f"# TYPE {p}_in_flight_requests gauge", f"{p}_in_flight_requests {self.in_flight}"]
        return "\n".join(lines) + "\n"
