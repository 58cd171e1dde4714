"""Timing on a shared CPU: warm-up, interleaved rounds, the machine's load, the matmul peak.

Each backend is first warmed up (at least 3 calls and 0.25 s; compiling backends
compile there), then timed for about ``seconds`` in 3 rounds that alternate between
backends, at least 2 calls per round. Slow configurations get a few long calls, fast
ones hundreds. Latency is the median and 90th percentile of single calls.

The backends are timed by a hand loop (:func:`measure`), not ``torch.utils.benchmark``:
its ``Timer`` times one statement at a time in blocks and reports block means, so it
cannot alternate backends round by round, give percentiles of single calls, or tell a
quiet round from one in which other processes took the cores (below); and its thread
setting reaches PyTorch only, not onnxruntime's sessions. The matmul peak, one PyTorch op
timed alone, uses ``Timer`` (:func:`matmul_peak`).

Shared machines: while another process holds a core, every parallel region of a 2-thread
PyTorch op waits for its descheduled peer, which can make eager PyTorch 10-100× slower
while onnxruntime barely notices, so such numbers compare the machine's load, not the
backends. On Linux each round therefore measures the CPU time other processes used
meanwhile (``/proc/stat``); a round in which they took more than
:data:`CONTENTION_LIMIT` of the machine is repeated (up to :data:`MAX_RETRIES` times) and,
if it stays contended, counted in the result's ``contended_rounds`` and its note.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..ops import cpu

ROUNDS = 3
WARMUP_CALLS = 3
WARMUP_SECONDS = 0.25
#: Share of the machine's CPU time other processes may use during a timed round.
CONTENTION_LIMIT = 0.10
MAX_RETRIES = 4


def sample_times(fn: Callable[[], Any], seconds: float, min_calls: int = 2,
                 max_calls: int = 10_000) -> list[float]:
    """Per-call wall times of ``fn`` for about ``seconds`` (at least ``min_calls`` calls)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls
                                      or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def warm_up(fn: Callable[[], Any]) -> None:
    """Call ``fn`` until caches, allocators and compilers have settled."""
    sample_times(fn, WARMUP_SECONDS, min_calls=WARMUP_CALLS)


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(machine busy seconds, machine total seconds, this process's CPU seconds), or
    ``None`` where ``/proc/stat`` does not exist."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, own.user + own.system


def others_share(before: tuple[float, float, float] | None,
                 after: tuple[float, float, float] | None) -> float | None:
    """Fraction of the machine's CPU time used by other processes between two snapshots."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    busy, total, own = (a - b for a, b in zip(after, before))
    return max(0.0, busy - own) / total


def measure(runners: dict[str, Callable[[], Any]], seconds: float, rounds: int = ROUNDS,
            max_retries: int = MAX_RETRIES) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Interleaved timing: ``rounds`` passes over all runners, ``seconds / rounds`` each.

    Returns the call times and, per runner, how many rounds stayed contended after
    ``max_retries`` repeats (see the module docstring).
    """
    samples: dict[str, list[float]] = {name: [] for name in runners}
    contended = dict.fromkeys(runners, 0)
    for _ in range(rounds):
        for name, fn in runners.items():
            for _attempt in range(max_retries + 1):
                before = cpu_snapshot()
                times = sample_times(fn, seconds / rounds)
                share = others_share(before, cpu_snapshot())
                if share is None or share <= CONTENTION_LIMIT:
                    break
            else:
                contended[name] += 1
            samples[name] += times
    return samples, contended


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run PyTorch with ``threads`` intra-op threads, restoring the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def matmul_peak(threads: int, size: int = 2048, seconds: float = 0.5) -> float:
    """Multiply-adds per second of a ``size``² fp32 ``torch.mm`` (fastest block of calls).

    A large square matmul is the most arithmetic-bound operation a CPU runs from
    PyTorch; its rate is the practical peak that network throughput is compared with.
    Background load can only slow a call down, so the fastest block is the best estimate.
    """
    from torch.utils import benchmark as torch_benchmark

    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    timer = torch_benchmark.Timer("torch.mm(a, b, out=out)", globals={"a": a, "b": b, "out": out},
                                  num_threads=threads)
    timer.blocked_autorange(min_run_time=WARMUP_SECONDS)  # caches and thread pool settle
    return size ** 3 / min(timer.blocked_autorange(min_run_time=seconds).times)


def load_average() -> float | None:
    """The 1-minute load average: other processes competing for the cores skew timings."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """CPU model and software versions, so results can be compared across runs."""
    name = cpu.cpuinfo("model name") or platform.processor() or platform.machine()
    info: dict[str, Any] = {"cpu": name, "isa": cpu.recorded_isa(), "logical_cpus": os.cpu_count(),
                            "torch": torch.__version__, "python": platform.python_version(),
                            "malloc": "freed memory kept" if cpu.freed_memory_kept() else "default"}
    load = load_average()
    if load is not None:
        info["load_average_start"] = load
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info
