"""The best MobileNet for a latency budget on this machine (``mobilenets pick``).

The papers trade accuracy for speed with width and resolution multipliers (V1 Tables 6-7,
the V2 and V3 sweeps) and V3 searched for a latency target, but their latencies are a
Pixel phone's. :func:`pick` times every configuration with a published ImageNet top-1
(:mod:`mobilenets.deploy.candidates`) on *this* machine, with random weights (latency does
not depend on their values), on the requested backends at the requested batch size, and
returns the Pareto front per backend (no other configuration is both at least as accurate
and at least as fast) and the most accurate configuration within the budget.

Timing is :mod:`mobilenets.deploy.bench`'s: its backends build the runners (so a backend
added to :data:`~mobilenets.deploy.bench.BACKENDS` works here too) and
:func:`mobilenets.deploy.timing.measure` times them all in interleaved rounds, so that
load from other processes falls on every candidate alike.

The top-1 figures are the publishers' ImageNet results for float models, not an accuracy
on the user's data, and int8 backends may lose some of it.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MobilenetsError
from ..models.conventions import check_choice
from ..models.registry import create_model
from ..ops import cpu
from . import bench
from .candidates import Candidate, published_candidates, quick_candidates
from .timing import machine_info, measure, percentile, torch_threads

DEFAULT_BACKENDS: tuple[str, ...] = ("onnxruntime",)
#: Timed seconds per candidate and backend: full run, and ``--quick``.
SECONDS = 1.0
QUICK_SECONDS = 0.3


@dataclass
class Timing:
    """One candidate on one backend; ``median_ms`` is ``None`` when it could not run."""

    median_ms: float | None = None
    p90_ms: float | None = None
    calls: int = 0
    contended_rounds: int = 0
    note: str = ""


@dataclass(frozen=True)
class Point:
    """A timed candidate on one backend: a point of the accuracy/latency plane."""

    candidate: Candidate = field(compare=False)
    backend: str
    median_ms: float
    top1: float

    def describe(self) -> str:
        return (f"{self.candidate.label()} ({self.top1:.1f}% top-1, {self.median_ms:.2f} ms "
                f"on {self.backend})")


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes, fastest first.

    A point stays when it is strictly more accurate than every faster-or-equal point; of
    points equal on both axes the first given stays.
    """
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.median_ms, -p.top1)):
        if not front or p.top1 > front[-1].top1:
            front.append(p)
    return front


def best_within(points: Sequence[Point], budget_ms: float) -> Point | None:
    """The most accurate point whose latency is within ``budget_ms``; ties go to the faster."""
    fits = [p for p in points if p.median_ms <= budget_ms]
    return min(fits, key=lambda p: (-p.top1, p.median_ms)) if fits else None


def fastest(points: Sequence[Point]) -> Point | None:
    return min(points, key=lambda p: (p.median_ms, -p.top1)) if points else None


@dataclass
class PickReport:
    """Every candidate's latency per backend, with the budget and the machine."""

    budget_ms: float
    batch: int
    threads: int
    backends: list[str]
    seconds: float
    candidates: list[Candidate]
    timings: list[dict[str, Timing]]  # parallel to candidates: backend -> timing
    skipped: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    #: How long timing took (building, exporting and timing every network), for ``--quick``'s
    #: promise of well under a minute.
    wall_seconds: float | None = None

    def points(self, backend: str | None = None) -> list[Point]:
        """The timed (candidate, backend) points, of one backend or all."""
        return [Point(c, b, t.median_ms, c.top1)
                for c, per in zip(self.candidates, self.timings) for b, t in per.items()
                if t.median_ms is not None and backend in (None, b)]

    def front(self, backend: str) -> list[Point]:
        return pareto_front(self.points(backend))

    def choice(self) -> Point | None:
        """The best point within the budget over all backends."""
        return best_within(self.points(), self.budget_ms)

    def verdict(self) -> str:
        """One sentence: the choice, or that nothing fits and what is fastest."""
        best = self.choice()
        budget = f"{self.budget_ms:g} ms" + (f" at batch {self.batch}" if self.batch > 1 else "")
        if best is not None:
            return f"best within {budget}: {best.describe()}"
        quickest = fastest(self.points())
        return (f"nothing fits within {budget}; the fastest candidate is "
                f"{quickest.describe() if quickest else 'none'}")

    def table(self) -> str:
        """The front of each backend as an aligned table, then notes and the verdict."""
        lines = [f"{len(self.candidates)} candidates with published ImageNet top-1, batch "
                 f"{self.batch}, {self.threads} threads on {self.machine.get('cpu', 'this CPU')}"]
        if self.skipped:
            lines.append(self.skipped)
        for backend in self.backends:
            front = self.front(backend)
            lines += ["", f"Pareto front on {backend} ({len(front)} of "
                          f"{len(self.points(backend))} timed):"]
            lines += _aligned([("model", "width", "px", "top-1 %", "median ms", "p90 ms", "source")]
                              + [_row(p, self._timing(p)) for p in front])
        failed = sorted({f"{b}: {t.note}" for per in self.timings for b, t in per.items()
                         if t.median_ms is None})
        if failed:
            lines += ["", "not timed: " + "; ".join(failed)]
        measured = {id(per): per for per in self.timings}.values()  # shared by equal networks
        timed = [t for per in measured for t in per.values() if t.median_ms is not None]
        contended = sum(t.contended_rounds > 0 for t in timed)
        if contended:
            lines += ["", f"{contended} of {len(timed)} timings had rounds in which other "
                          "processes used the CPU: latencies are noisy, rerun on a quiet machine"]
        lines += ["", "top-1 is the publisher's ImageNet figure for the float model (not your "
                      "data's; int8 backends may lose some)", self.verdict()]
        return "\n".join(lines)

    def _timing(self, p: Point) -> Timing:
        return self.timings[self.candidates.index(p.candidate)][p.backend]

    def to_json(self) -> dict[str, Any]:
        def point(p: Point | None) -> dict[str, Any] | None:
            return None if p is None else {**p.candidate.to_json(), "backend": p.backend,
                                           "median_ms": p.median_ms}
        return {
            "command": self.command, "machine": self.machine, "budget_ms": self.budget_ms,
            "batch": self.batch, "threads": self.threads, "backends": self.backends,
            "seconds": self.seconds, "wall_seconds": self.wall_seconds, "skipped": self.skipped,
            "candidates": [{**c.to_json(), "latency": {b: asdict(t) for b, t in per.items()}}
                           for c, per in zip(self.candidates, self.timings)],
            "fronts": {b: [point(p) for p in self.front(b)] for b in self.backends},
            "choice": point(self.choice()),
            "choice_per_backend": {b: point(best_within(self.points(b), self.budget_ms))
                                   for b in self.backends},
            "fastest": point(fastest(self.points())), "verdict": self.verdict(),
        }


def _row(p: Point, t: Timing) -> tuple[str, ...]:
    c = p.candidate
    return (c.model, str(c.width_mult), str(c.resolution), f"{c.top1:.1f}",
            f"{p.median_ms:.2f}", f"{t.p90_ms:.2f}", c.source)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned text columns, right-aligned numbers, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {1, 2, 3, 4, 5}
    out = []
    for k, row in enumerate(rows):
        out.append("  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# ----------------------------------------------------------------------------- measuring

def _summary(times: list[float], contended: int, note: str) -> Timing:
    return Timing(statistics.median(times) * 1e3, percentile(times, 90) * 1e3, len(times),
                  contended, note)


def _runners(candidates: Sequence[Candidate], backends: Sequence[str], batch: int, threads: int,
             workdir: Path, log: Callable[[str], None]
             ) -> tuple[dict[str, Callable[[], Any]], dict[str, str], dict[str, str]]:
    """The warmed-up runner of each (network, backend), by ``"index:backend"``, with why the
    others could not run and the backends' own notes (int8 calibrated on random images)."""
    runners: dict[str, Callable[[], Any]] = {}
    failed: dict[str, str] = {}
    notes: dict[str, str] = {}
    for i, c in enumerate(candidates):
        log(f"[{i + 1}/{len(candidates)}] {c.label()}: building on {', '.join(backends)}")
        try:
            model = create_model(c.model, **c.kwargs)
        except MobilenetsError as e:
            failed.update({f"{i}:{b}": f"unavailable: {e}" for b in backends})
            continue
        channels = int(c.kwargs.get("in_chans", 3))
        # Export needs a preprocessing record; its mean/std do not change the graph's speed.
        pre = {"input_size": c.resolution, "channels": channels, "mean": [0.5] * channels,
               "std": [0.5] * channels}
        (workdir / str(i)).mkdir()
        factory = bench._Backends(model, c.resolution, threads, workdir / str(i), pre)
        ready, unavailable = bench._prepared(factory, batch, backends, lambda _msg: None)
        runners.update({f"{i}:{b}": fn for b, fn in ready.items()})
        failed.update({f"{i}:{b}": why for b, why in unavailable.items()})
        notes.update({f"{i}:{b}": why for b, why in factory.notes.items()})
    return runners, failed, notes


def measure_candidates(candidates: Sequence[Candidate], backends: Sequence[str], *,
                       batch: int = 1, threads: int | None = None, seconds: float = SECONDS,
                       log: Callable[[str], None] | None = None) -> list[dict[str, Timing]]:
    """Each candidate's :class:`Timing` per backend (see the module docstring).

    Candidates with equal :meth:`~mobilenets.deploy.candidates.Candidate.timing_key` share
    one measurement. ``seconds`` is the timed budget per network and backend.
    """
    threads = threads or torch.get_num_threads()
    log = log or (lambda _msg: None)
    keys = [c.timing_key() for c in candidates]
    unique = list(dict.fromkeys(keys))
    first = [candidates[keys.index(k)] for k in unique]
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="mobilenets-pick-") as tmp:
        runners, failed, notes = _runners(first, backends, batch, threads, Path(tmp), log)
        log(f"timing {len(runners)} network/backend pairs, {seconds:g} s each, interleaved")
        samples, contended = measure(runners, seconds)
    per_key = [{b: Timing(note=failed[f"{i}:{b}"]) if f"{i}:{b}" in failed else
                _summary(samples[f"{i}:{b}"], contended[f"{i}:{b}"], notes.get(f"{i}:{b}", ""))
                for b in backends} for i in range(len(unique))]
    return [per_key[unique.index(k)] for k in keys]


def _check(budget_ms: float, backends: Sequence[str], batch: int, threads: int | None) -> None:
    if not (math.isfinite(budget_ms) and budget_ms > 0):
        raise MobilenetsError(f"the latency budget must be a positive number of ms, got {budget_ms}")
    if not backends:
        raise MobilenetsError(f"no backend given; choose from {', '.join(bench.BACKENDS)}")
    for b in backends:
        check_choice("backend", b, bench.BACKENDS)
    if batch < 1:
        raise MobilenetsError(f"batch size must be >= 1, got {batch}")
    if threads is not None and threads < 1:
        raise MobilenetsError(f"threads must be >= 1, got {threads}")


def pick(budget_ms: float, *, backends: Sequence[str] = DEFAULT_BACKENDS, batch: int = 1,
         threads: int | None = None, quick: bool = False,
         candidates: Sequence[Candidate] | None = None, seconds: float | None = None,
         reuse_memory: bool = True, log: Callable[[str], None] | None = None,
         command: str | None = None) -> PickReport:
    """Time the candidates and report the front and the best choice within ``budget_ms``.

    ``candidates`` defaults to :func:`~mobilenets.deploy.candidates.published_candidates`
    (``quick``: its :func:`~mobilenets.deploy.candidates.quick_candidates` subset and
    :data:`QUICK_SECONDS` of timing). ``reuse_memory`` keeps freed memory for the process,
    as ``bench`` does. ``command`` is recorded in the JSON. Raises
    :class:`~mobilenets.errors.MobilenetsError` for a bad budget, backend, batch or thread
    count, and when no candidate could be timed on any backend.
    """
    backends = list(dict.fromkeys(backends))
    _check(budget_ms, backends, batch, threads)
    pool = list(published_candidates() if candidates is None else candidates)
    if not pool:
        raise MobilenetsError("no candidate to time")
    skipped = ""
    if quick:
        pool, skipped = quick_candidates(pool)
    seconds = seconds or (QUICK_SECONDS if quick else SECONDS)
    threads = threads or torch.get_num_threads()
    if reuse_memory:
        cpu.keep_freed_memory()
    machine = machine_info()
    start = time.perf_counter()
    timings = measure_candidates(pool, backends, batch=batch, threads=threads, seconds=seconds,
                                 log=log)
    report = PickReport(budget_ms, batch, threads, backends, seconds, pool, timings, skipped,
                        machine, command, time.perf_counter() - start)
    if not report.points():
        why = next(t.note for per in timings for t in per.values())
        raise MobilenetsError(f"no candidate could be timed on {', '.join(backends)} ({why})")
    return report


def plot_front(report: PickReport, path: str | Path) -> Path:
    """Published top-1 against measured latency (PNG): every timed candidate as a dot, each
    backend's front as a line, the budget as a dashed line and the choice as a star.

    Drawn on a :class:`matplotlib.figure.Figure` (its own Agg canvas, no pyplot), imported
    here so that the module imports without matplotlib, as :mod:`mobilenets.training.plots`.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MobilenetsError("--plot needs matplotlib: pip install matplotlib") from e
    path = Path(path)
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for backend in report.backends:
        points = report.points(backend)
        line, = ax.plot([p.median_ms for p in report.front(backend)],
                        [p.top1 for p in report.front(backend)], "o-", drawstyle="steps-post",
                        label=f"{backend} front")
        ax.plot([p.median_ms for p in points], [p.top1 for p in points], ".",
                color=line.get_color(), alpha=0.35)
    ax.axvline(report.budget_ms, color="grey", linestyle="--", label=f"budget {report.budget_ms:g} ms")
    best = report.choice()
    if best is not None:
        ax.plot([best.median_ms], [best.top1], "*", markersize=16, color="crimson",
                label=f"choice: {best.candidate.label()} on {best.backend}")
    ax.set_xscale("log")
    ax.set_xlabel(f"median latency per batch of {report.batch} (ms, log scale)")
    ax.set_ylabel("published ImageNet top-1 (%)")
    ax.set_title(f"{report.machine.get('cpu', 'this CPU')}, {report.threads} threads", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
