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
* ``compile-bf16``: the same in bfloat16 (:func:`mobilenets.deploy.fold.bf16_inference`:
  bf16 weights and activations, float32 in and out), on CPUs with native bf16
  instructions (AVX-512-BF16/AMX) only. Not exact: ``mobilenets eval --precision bf16``
  measures its accuracy.
* ``onnxruntime`` / ``onnxruntime-int8``: the exported ONNX file, float and int8
  (:mod:`mobilenets.deploy.onnx`, :mod:`mobilenets.deploy.int8`), on onnxruntime's CPU provider.
* ``openvino``, ``executorch``, ``litert`` and their ``-int8`` variants: the model converted
  and quantized by each runtime's own tools and run in it (:mod:`mobilenets.deploy.runtimes`).

A backend that cannot be built or run here (no C++ compiler for ``torch.compile``, no
bf16 instructions, no ``onnxruntime``) is reported as unavailable, with the reason,
instead of ending the run.

Timing (interleaved rounds, contention on shared machines): :mod:`mobilenets.deploy.timing`.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.profile import profile
from ..errors import MobilenetsError
from ..io.artifact import EXTENSIONS, onnx_session, torchscript_quietly
from ..models.conventions import check_choice
from ..ops import cpu
from .export import artifact_metadata
from .fold import bf16_inference, prepare_for_inference
from .int8 import quantize_onnx
from .onnx import onnx_bytes
from .parity import top1_agreement
from .preprocess import input_channels, preprocess
from .runtimes import RUNTIMES, require
from .timing import (CONTENTION_LIMIT, ROUNDS, load_average, machine_info, matmul_peak, measure,
                     percentile, torch_threads, warm_up)

BACKENDS: tuple[str, ...] = ("eager", "channels_last", "torchscript", "compile", "compile-bf16",
                             "onnxruntime", "onnxruntime-int8",
                             *(name for fmt in RUNTIMES for name in (fmt, f"{fmt}-int8")))
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
#: An int8 backend whose top-1 agrees with the float model on fewer held-out images than
#: this is left out of the ranking (issue 29's limit).
MIN_AGREEMENT = 0.99


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
    #: int8 backends' top-1 agreement with the float model on held-out real images, when
    #: :func:`benchmark` was given some (``None``: not measured).
    agreement: dict[str, float] = field(default_factory=dict)

    def result(self, backend: str, batch: int) -> BenchResult:
        return next(r for r in self.results if r.backend == backend and r.batch == batch)

    def eligible(self, backend: str) -> bool:
        """Within the accuracy limit: float backends reproduce the model (their exports are
        parity-checked), int8 ones count when their agreement was measured and is at least
        :data:`MIN_AGREEMENT`, or when it was not measured (the ranking then says so)."""
        agreement = self.agreement.get(backend)
        return agreement is None or agreement >= MIN_AGREEMENT

    def ranking(self, batch: int) -> list[BenchResult]:
        """The backends timed at ``batch`` within the accuracy limit, fastest first."""
        timed = [r for r in self.results if r.batch == batch and r.median_ms is not None]
        return sorted((r for r in timed if self.eligible(r.backend)), key=lambda r: r.median_ms)

    def verdict(self, batch: int) -> str:
        """One line: the backend to ship at ``batch``, by how much it beats the next one and
        the fastest float one, and what its accuracy rests on."""
        ranked = self.ranking(batch)
        if not ranked:
            return f"batch {batch}: no backend ran"
        best = ranked[0]
        parts = [f"batch {batch}: fastest {best.backend} ({best.median_ms:.2f} ms)"]
        if len(ranked) > 1:
            parts.append(f"{ranked[1].median_ms / best.median_ms:.2f}x faster than the next, "
                         f"{ranked[1].backend}")
        floats = [r for r in ranked if not r.backend.endswith("-int8")]
        if best.backend.endswith("-int8"):
            if floats:
                parts.append(f"{floats[0].median_ms / best.median_ms:.2f}x faster than the fastest "
                             f"float backend, {floats[0].backend}")
            agreement = self.agreement.get(best.backend)
            parts.append(f"int8 agrees with float on {agreement:.1%} of held-out images"
                         if agreement is not None else
                         "int8 accuracy not measured here: give a checkpoint and --calibration-data")
        excluded = [b for b, a in self.agreement.items() if a < MIN_AGREEMENT]
        if excluded:
            parts.append(f"left out below {MIN_AGREEMENT:.0%} agreement: {', '.join(excluded)}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["results"] = [asdict(r) for r in self.results]
        out["ranking"] = {str(b): [r.backend for r in self.ranking(b)]
                          for b in dict.fromkeys(r.batch for r in self.results)}
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
        verdicts = [self.verdict(b) for b in dict.fromkeys(r.batch for r in self.results)]
        return "\n".join(lines + ([""] + notes if notes else []) + [""] + verdicts)


# ----------------------------------------------------------------------------- backends

def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


class _Backends:
    """Builds the per-batch runner of each backend, sharing what batch sizes can share
    (the inference-ready model, the ONNX files, onnxruntime sessions)."""

    def __init__(self, model: nn.Module, resolution: int, threads: int, workdir: Path,
                 preprocessing: dict[str, Any], images: torch.Tensor | None = None) -> None:
        self.model = copy.deepcopy(model).eval()
        #: Real uint8 images: the first half calibrates int8, the second measures its agreement.
        self.images = images
        self.agreement: dict[str, float] = {}
        self.ready = prepare_for_inference(model)
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
                meta = artifact_metadata(self.model, self.pre, None, "onnx")
                fp32.write_bytes(onnx_bytes(self.ready, self.pre, meta))
            path = fp32
            if backend == "onnxruntime-int8":
                path = self.workdir / "model.int8.onnx"
                quantize_onnx(fp32, path, self._calibration(backend), self.pre)
            session = self.sessions[backend] = onnx_session(path, self.threads)
            if backend == "onnxruntime-int8":
                name = session.get_inputs()[0].name
                self._measure_agreement(backend, lambda x: session.run(None, {name: x})[0])
        return self.sessions[backend]

    def _calibration(self, backend: str) -> torch.Tensor:
        """uint8 images to calibrate ``backend``'s int8 on: the first half of the real images,
        or random ones, which give int8's latency but not its accuracy."""
        if self.images is not None:
            return self.images[:max(1, len(self.images) // 2)]
        c, s = self.pre["channels"], self.pre["input_size"]
        self.notes[backend] = "calibrated on random images (latency only)"
        return torch.randint(0, 256, (16, c, s, s), dtype=torch.uint8,
                             generator=torch.Generator().manual_seed(0))

    def _measure_agreement(self, backend: str, run: Callable[[Any], Any]) -> None:
        """int8's top-1 agreement with the float model on the held-out half of the images."""
        if self.images is not None and len(self.images) >= 2:
            held_out = preprocess(self.images[len(self.images) // 2:], self.pre)
            self.agreement[backend] = top1_agreement(run, self.model, held_out)
            self.notes[backend] = f"int8 agrees with float on {self.agreement[backend]:.1%} of {len(held_out)} held-out images"

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
                with torch.no_grad(), torchscript_quietly():
                    traced = torch.jit.trace(self.ready, x, check_trace=False)
                    module = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                xc = x
            elif backend == "compile":
                module = compile_model(self.ready_cl, compile_options(batch))
            elif backend == "compile-bf16":
                from ..ops.cpu import bf16_supported

                if not bf16_supported():
                    raise MobilenetsError("this CPU has no native bf16 instructions (AVX-512-BF16 or AMX)")
                module = compile_model(bf16_inference(self.model), compile_options(batch))

            def run() -> Any:
                with torch.inference_mode():
                    return module(xc)
            return run
        if backend.removesuffix("-int8") in RUNTIMES:
            fn, xn = self._runtime(backend), x.numpy()
            return lambda: fn(xn)
        session = self._session(backend)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)

    def _runtime(self, backend: str) -> Callable[[Any], Any]:
        """A runtime's artifact, converted once (int8: calibrated on random images, which
        give its latency but not its accuracy) and loaded with the run's threads."""
        if backend not in self.sessions:
            fmt = backend.removesuffix("-int8")
            runtime = require(fmt)
            c, s = self.pre["channels"], self.pre["input_size"]
            g = torch.Generator().manual_seed(0)
            calibration = None
            if backend.endswith("-int8"):
                calibration = preprocess(self._calibration(backend), self.pre)
            path = self.workdir / f"{backend}{EXTENSIONS[fmt]}"
            runtime.convert(self.ready, torch.randn(2, c, s, s, generator=g), path, calibration)
            self.sessions[backend] = runtime.load(path, self.threads)
            if calibration is not None:
                self._measure_agreement(backend, self.sessions[backend])
        return self.sessions[backend]


def _check_arguments(batches: Sequence[int], resolution: int, backends: Sequence[str]) -> None:
    for b in backends:
        check_choice("backend", b, BACKENDS)
    if not batches or min(batches) < 1:
        raise MobilenetsError(f"batch sizes must be >= 1, got {list(batches)}")
    if resolution < 8:
        raise MobilenetsError(f"resolution must be >= 8, got {resolution}")


def _prepared(factory: _Backends, batch: int, backends: Sequence[str],
              log: Callable[[str], None]) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The warmed-up runner of each backend at ``batch``, and why the others are unavailable."""
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
    return runners, failed


def _result(backend: str, batch: int, times: list[float], contended: int, madds: int,
            peak: float, note: str) -> BenchResult:
    """One backend's timed calls at ``batch`` as figures; ``madds`` per image, ``peak`` in MAdd/s."""
    median = statistics.median(times)
    rate = madds * batch / median
    notes = [note]
    if contended:
        notes.append(f"{contended} of {ROUNDS} rounds timed while other "
                     f"processes used > {CONTENTION_LIMIT:.0%} of the CPU")
    return BenchResult(backend, batch, median * 1e3, percentile(times, 90) * 1e3, len(times),
                       batch / median, rate / 1e9, rate / peak, contended,
                       "; ".join(n for n in notes if n))


def benchmark(model: nn.Module, *, batches: Sequence[int] = (1, 8, 32), resolution: int = 224,
              backends: Sequence[str] = DEFAULT_BACKENDS, threads: int | None = None,
              seconds: float = 1.5, peak_size: int = 2048, reuse_memory: bool = True,
              log: Callable[[str], None] | None = None, images: torch.Tensor | None = None,
              preprocessing: dict[str, Any] | None = None) -> BenchReport:
    """Time ``model`` on every backend and batch size; see the module docstring.

    ``images`` (real uint8 ``(N, C, H, W)`` images in ``preprocessing``'s size) make the
    int8 backends calibrate on their first half and measure their top-1 agreement with the
    float model on the second (:attr:`BenchReport.agreement`); without them int8 is
    calibrated on random images, which time it but say nothing of its accuracy.

    ``seconds`` is the timed budget per backend and batch size, ``peak_size`` the side of
    the matmul that measures the peak, ``log`` receives progress lines. ``reuse_memory``
    applies :func:`mobilenets.ops.cpu.keep_freed_memory` to the whole process first, as the
    trainer and ``mobilenets eval``/``predict`` do; the report's ``machine["malloc"]``
    records which allocator behaviour was measured.
    """
    _check_arguments(batches, resolution, backends)
    threads = threads or torch.get_num_threads()
    log = log or (lambda _msg: None)
    if reuse_memory:
        cpu.keep_freed_memory()
    channels = input_channels(model)
    # Export needs a preprocessing record; its mean/std do not change the graph's speed.
    pre = {"input_size": resolution, "channels": channels, "mean": [0.5] * channels,
           "std": [0.5] * channels}
    if preprocessing is not None:
        pre = {**pre, "mean": list(preprocessing["mean"]), "std": list(preprocessing["std"])}
    if images is not None and tuple(images.shape[1:]) != (channels, resolution, resolution):
        raise MobilenetsError(f"images are {tuple(images.shape[1:])} (C, H, W) but the benchmark "
                              f"runs ({channels}, {resolution}, {resolution})")
    prof = profile(model, resolution)
    log(f"measuring the fp32 matmul peak ({threads} threads)")
    peak = matmul_peak(threads, peak_size)
    report = BenchReport(getattr(model, "model_name", type(model).__name__),
                         dict(getattr(model, "model_kwargs", {})), resolution, channels,
                         prof.params, prof.madds, threads, peak / 1e9, machine_info())
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        factory = _Backends(model, resolution, threads, Path(tmp), pre, images)
        for batch in batches:
            runners, failed = _prepared(factory, batch, backends, log)
            log(f"batch {batch}: timing {', '.join(runners)}")
            samples, contended = measure(runners, seconds)
            report.results += [
                BenchResult(b, batch, note=failed[b]) if b in failed else
                _result(b, batch, samples[b], contended[b], prof.madds, peak, factory.notes.get(b, ""))
                for b in backends]
    report.agreement = dict(factory.agreement)
    if load_average() is not None:
        report.machine["load_average_end"] = load_average()
    return report
