"""Latency and throughput of a MobileNet on this machine, per backend and batch size.

MAdds say little about speed: depthwise convolutions do few multiply-adds per byte moved,
so MobileNets run far below a CPU's arithmetic peak. Each result therefore also gives the
**fraction of peak**: achieved MAdds per second over the fp32 rate of a large
``torch.mm`` measured in the same run with the same threads (int8 backends can exceed
what that fraction suggests, since the reference is fp32).

Backends (:data:`BACKENDS`):

* ``eager``: the model as trained, NCHW fp32, ``torch.no_grad``: the baseline.
* ``channels_last``: BatchNorm folded, dropout removed, NHWC memory format,
  ``torch.inference_mode``: the PyTorch path without any compiler.
* ``torchscript``: the same, traced, frozen and ``torch.jit.optimize_for_inference``
  (oneDNN convolutions with pre-packed weights).
* ``compile``: the ``channels_last`` model through ``torch.compile`` (Inductor, static
  shapes, weights frozen as constants, the options of :func:`compile_options`, built by
  :func:`compile_model`; compiles once per batch size, which can take a minute).
* ``compile-bf16``: the same in bfloat16 (:func:`mobilenets.deploy.export.bf16_inference`:
  bf16 weights and activations, float32 in and out), on CPUs with native bf16
  instructions (AVX-512-BF16/AMX) only. Not exact: ``mobilenets eval --precision bf16``
  measures its accuracy.
* ``onnxruntime`` / ``onnxruntime-int8``: the exported ONNX file, float and int8
  (:mod:`mobilenets.deploy.export`), on onnxruntime's CPU provider.

A backend that cannot be built or run here (no C++ compiler for ``torch.compile``, no
bf16 instructions, no ``onnxruntime``) is reported as unavailable, with the reason,
instead of ending the run.

Timing: each backend is first warmed up (at least 3 calls and 0.25 s; compiling backends
compile there), then timed for about ``seconds`` in 3 rounds that alternate between
backends, at least 2 calls per round. Slow configurations get a few long calls, fast
ones hundreds. Latency is the median and 90th percentile of single calls.

Shared machines: while another process holds a core, every parallel region of a 2-thread
PyTorch op waits for its descheduled peer, which can make eager PyTorch 10-100× slower
while onnxruntime barely notices, so such numbers compare the machine's load, not the
backends. On Linux each round therefore measures the CPU time other processes used
meanwhile (``/proc/stat``); a round in which they took more than
:data:`CONTENTION_LIMIT` of the machine is repeated (up to :data:`MAX_RETRIES` times) and,
if it stays contended, counted in the result's ``contended_rounds`` and its note.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..ops import cpu

from ..deploy import export as deploy
from ..models.conventions import check_choice
from ..errors import MobilenetsError
from ..analysis.profile import profile

BACKENDS: tuple[str, ...] = ("eager", "channels_last", "torchscript", "compile", "compile-bf16",
                             "onnxruntime", "onnxruntime-int8")
DEFAULT_BACKENDS: tuple[str, ...] = ("eager", "channels_last", "compile", "onnxruntime",
                                     "onnxruntime-int8")
#: Inductor options of the compiling backends, from the interleaved A/B of
#: ``benchmarks/compile_options.py`` (README: Latency). ``freezing`` (through
#: :func:`compile_model`) turns the weights into constants: BatchNorm folds into the
#: convolutions and oneDNN gets pre-packed weights: 1.10-1.52× faster on the AVX2 machine
#: (V2 and V3-Large, batch 1 and 32). ``cpp_wrapper`` calls the kernels from C++ instead of
#: Python: 1.01-1.14×.
COMPILE_OPTIONS: dict[str, Any] = {"freezing": True, "cpp_wrapper": True}
#: ``max_autotune`` (Inductor times its own GEMM kernels against the library's and keeps
#: the faster) gained 3-10 % at batch 1 and cost 1-3 % at batch 32 on the AVX2 machine, so
#: it is used up to this batch size only.
AUTOTUNE_MAX_BATCH = 1
ROUNDS = 3
WARMUP_CALLS = 3
WARMUP_SECONDS = 0.25
#: Share of the machine's CPU time other processes may use during a timed round.
CONTENTION_LIMIT = 0.10
MAX_RETRIES = 4


def compile_options(batch: int) -> dict[str, Any]:
    """The Inductor options the compiling backends use at ``batch``."""
    return {**COMPILE_OPTIONS, "max_autotune": batch <= AUTOTUNE_MAX_BATCH}


#: Compilations of one ``forward`` that :func:`compile_model` allows per process. Dynamo's
#: default, 8, counts every model of a class together (and those not yet garbage-collected),
#: and past it Dynamo silently runs the *uncompiled* model: a benchmark comparing several
#: compiled models or batch sizes then times eager PyTorch under the name of ``compile``.
RECOMPILE_LIMIT = 64


def compile_model(module: nn.Module, options: dict[str, Any]) -> Callable[[torch.Tensor], Any]:
    """``torch.compile(module, dynamic=False, options=options)`` for inference, with
    ``freezing`` that really freezes and no silent fallback to the uncompiled model.

    Dynamo decides while it traces whether parameters become graph constants, and it reads
    ``torch._inductor.config.freezing`` for that; ``options=`` reaches Inductor only later,
    so ``options={"freezing": True}`` alone freezes nothing (torch 2.13: the weights stay
    graph inputs, no convolution is pre-packed). Dynamo's settings are therefore set around
    the calls where it traces: ``freezing``, and a recompile limit of
    :data:`RECOMPILE_LIMIT` that raises when hit instead of falling back to eager. Setting
    them costs 40-55 µs a call (42 µs on the Intel Xeon, timing the two ``patch``
    contexts alone), so calls whose input layout and grad mode were seen before (the
    steady state, where Dynamo's cache answers) go straight to the compiled model."""
    compiled = torch.compile(module, dynamic=False, options=options)
    freezing = bool(options.get("freezing"))
    seen: set[tuple[Any, ...]] = set()

    def run(x: torch.Tensor) -> Any:
        key = (x.shape, x.stride(), x.dtype, x.device, x.requires_grad, torch.is_grad_enabled(),
               torch.is_inference_mode_enabled())
        if key in seen:
            return compiled(x)
        with torch._inductor.config.patch(freezing=freezing), torch._dynamo.config.patch(
                recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit),
                fail_on_recompile_limit_hit=True):
            out = compiled(x)
        seen.add(key)
        return out
    return run


@dataclass
class BenchResult:
    """One backend at one batch size; times are ``None`` when the backend was unavailable."""

    backend: str
    batch: int
    median_ms: float | None = None
    p90_ms: float | None = None
    calls: int = 0
    images_per_s: float | None = None
    gmadds_per_s: float | None = None
    peak_fraction: float | None = None
    contended_rounds: int = 0
    note: str = ""


@dataclass
class BenchReport:
    """Everything one benchmark run measured, with the machine it ran on."""

    model: str
    model_kwargs: dict[str, Any]
    resolution: int
    channels: int
    params: int
    madds: int  # per image
    threads: int
    peak_gmadds_per_s: float
    machine: dict[str, Any] = field(default_factory=dict)
    results: list[BenchResult] = field(default_factory=list)

    def result(self, backend: str, batch: int) -> BenchResult:
        return next(r for r in self.results if r.backend == backend and r.batch == batch)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["results"] = [asdict(r) for r in self.results]
        return out

    def table(self) -> str:
        """An aligned text table with a header describing the model and machine."""
        lines = [f"{self.model} {self.model_kwargs or ''}".rstrip()
                 + f": {self.params:,} parameters, {self.madds / 1e6:.2f} M MAdds at "
                   f"{self.channels}×{self.resolution}×{self.resolution}",
                 f"{self.threads} threads on {self.machine.get('cpu', 'this CPU')}; fp32 "
                 f"matmul peak {self.peak_gmadds_per_s:.1f} GMAdd/s; load average "
                 f"{self.machine.get('load_average_start', '?')} -> "
                 f"{self.machine.get('load_average_end', '?')}; malloc: "
                 f"{self.machine.get('malloc', '?')}", ""]
        rows = [("backend", "batch", "median ms", "p90 ms", "img/s", "GMAdd/s", "% peak", "calls")]
        notes = []
        for r in self.results:
            if r.median_ms is None:
                notes.append(f"{r.backend} (batch {r.batch}): {r.note}")
                continue
            rows.append((r.backend, str(r.batch), f"{r.median_ms:.2f}", f"{r.p90_ms:.2f}",
                         f"{r.images_per_s:.1f}", f"{r.gmadds_per_s:.2f}",
                         f"{100 * r.peak_fraction:.1f}", str(r.calls)))
            if r.note:
                notes.append(f"{r.backend} (batch {r.batch}): {r.note}")
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for k, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))))
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines + ([""] + notes if notes else []))


# ----------------------------------------------------------------------------- timing

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
    """Multiply-adds per second of a ``size``² fp32 ``torch.mm`` (fastest call).

    A large square matmul is the most arithmetic-bound operation a CPU runs from
    PyTorch; its rate is the practical peak that network throughput is compared with.
    Background load can only slow a call down, so the fastest call is the best estimate.
    """
    with torch_threads(threads):
        a, b = torch.randn(size, size), torch.randn(size, size)
        out = torch.empty(size, size)

        def mm() -> None:
            torch.mm(a, b, out=out)

        warm_up(mm)
        return size ** 3 / min(sample_times(mm, seconds, min_calls=3))


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


# ----------------------------------------------------------------------------- backends

def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


class _Backends:
    """Builds the per-batch runner of each backend, sharing what batch sizes can share
    (the inference-ready model, the ONNX files, onnxruntime sessions)."""

    def __init__(self, model: nn.Module, resolution: int, threads: int, workdir: Path,
                 preprocessing: dict[str, Any]) -> None:
        self.model = copy.deepcopy(model).eval()
        self.ready = deploy.prepare_for_inference(model)
        self.ready_cl = copy.deepcopy(self.ready).to(memory_format=torch.channels_last)
        self.resolution = resolution
        self.threads = threads
        self.workdir = workdir
        self.pre = preprocessing
        self.sessions: dict[str, Any] = {}
        self.notes: dict[str, str] = {}

    def _session(self, backend: str) -> Any:
        if backend not in self.sessions:
            fp32 = self.workdir / "model.onnx"
            if not fp32.exists():
                meta = deploy.artifact_metadata(self.model, self.pre, None, "onnx")
                fp32.write_bytes(deploy.onnx_bytes(self.ready, self.pre, meta))
            path = fp32
            if backend == "onnxruntime-int8":
                path = self.workdir / "model.int8.onnx"
                # Latency does not depend on the calibrated ranges, so random images do;
                # accuracy needs real ones (`mobilenets export --int8 --calibration-data`).
                c, s = self.pre["channels"], self.pre["input_size"]
                g = torch.Generator().manual_seed(0)
                images = torch.randint(0, 256, (16, c, s, s), dtype=torch.uint8, generator=g)
                self.notes[backend] = "calibrated on random images (latency only)"
                deploy.quantize_onnx(fp32, path, images, self.pre)
            self.sessions[backend] = deploy.onnx_session(path, self.threads)
        return self.sessions[backend]

    def runner(self, backend: str, batch: int) -> Callable[[], Any]:
        c = self.pre["channels"]
        x = torch.randn(batch, c, self.resolution, self.resolution,
                        generator=torch.Generator().manual_seed(0))
        if backend == "eager":
            model = self.model

            def run() -> Any:
                with torch.no_grad():
                    return model(x)
            return run
        if backend in ("channels_last", "torchscript", "compile", "compile-bf16"):
            xc = x.contiguous(memory_format=torch.channels_last)
            module: Callable[[torch.Tensor], Any] = self.ready_cl
            if backend == "torchscript":
                with torch.no_grad(), deploy.torchscript_quietly():
                    traced = torch.jit.trace(self.ready, x, check_trace=False)
                    module = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                xc = x
            elif backend == "compile":
                module = compile_model(self.ready_cl, compile_options(batch))
            elif backend == "compile-bf16":
                from ..ops.cpu import bf16_supported

                if not bf16_supported():
                    raise MobilenetsError("this CPU has no native bf16 instructions (AVX-512-BF16 or AMX)")
                module = compile_model(deploy.bf16_inference(self.model), compile_options(batch))

            def run() -> Any:
                with torch.inference_mode():
                    return module(xc)
            return run
        session = self._session(backend)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)


def benchmark(model: nn.Module, *, batches: Sequence[int] = (1, 8, 32), resolution: int = 224,
              backends: Sequence[str] = DEFAULT_BACKENDS, threads: int | None = None,
              seconds: float = 1.5, peak_size: int = 2048, reuse_memory: bool = True,
              log: Callable[[str], None] | None = None) -> BenchReport:
    """Time ``model`` on every backend and batch size; see the module docstring.

    ``seconds`` is the timed budget per backend and batch size, ``peak_size`` the side of
    the matmul that measures the peak, ``log`` receives progress lines. ``reuse_memory``
    applies :func:`mobilenets.ops.cpu.keep_freed_memory` to the whole process first, as the
    trainer and ``mobilenets eval``/``predict`` do; the report's ``machine["malloc"]``
    records which allocator behaviour was measured.
    """
    for b in backends:
        check_choice("backend", b, BACKENDS)
    if not batches or min(batches) < 1:
        raise MobilenetsError(f"batch sizes must be >= 1, got {list(batches)}")
    if resolution < 8:
        raise MobilenetsError(f"resolution must be >= 8, got {resolution}")
    threads = threads or torch.get_num_threads()
    log = log or (lambda _msg: None)
    if reuse_memory:
        cpu.keep_freed_memory()
    channels = deploy.input_channels(model)
    # Export needs a preprocessing record; its mean/std do not change the graph's speed.
    pre = {"input_size": resolution, "channels": channels, "mean": [0.5] * channels,
           "std": [0.5] * channels}
    prof = profile(model, resolution)
    log(f"measuring the fp32 matmul peak ({threads} threads)")
    peak = matmul_peak(threads, peak_size)
    report = BenchReport(getattr(model, "model_name", type(model).__name__),
                         dict(getattr(model, "model_kwargs", {})), resolution, channels,
                         prof.params, prof.madds, threads, peak / 1e9, machine_info())
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        factory = _Backends(model, resolution, threads, Path(tmp), pre)
        for batch in batches:
            runners: dict[str, Callable[[], Any]] = {}
            failed: dict[str, str] = {}
            for backend in backends:
                log(f"batch {batch}: preparing {backend}")
                try:
                    fn = factory.runner(backend, batch)
                    warm_up(fn)
                    runners[backend] = fn
                except Exception as e:  # noqa: BLE001 - any failure means "unavailable here"
                    failed[backend] = f"unavailable: {_first_line(e)}"
            log(f"batch {batch}: timing {', '.join(runners)}")
            samples, contended = measure(runners, seconds)
            for backend in backends:
                if backend in failed:
                    report.results.append(BenchResult(backend, batch, note=failed[backend]))
                    continue
                times = samples[backend]
                median = statistics.median(times)
                rate = prof.madds * batch / median
                notes = [factory.notes.get(backend, "")]
                if contended[backend]:
                    notes.append(f"{contended[backend]} of {ROUNDS} rounds timed while other "
                                 f"processes used > {CONTENTION_LIMIT:.0%} of the CPU")
                report.results.append(BenchResult(
                    backend, batch, median * 1e3, percentile(times, 90) * 1e3, len(times),
                    batch / median, rate / 1e9, rate / peak, contended[backend],
                    "; ".join(n for n in notes if n)))
    if load_average() is not None:
        report.machine["load_average_end"] = load_average()
    return report

