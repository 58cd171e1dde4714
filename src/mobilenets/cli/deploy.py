"""``mobilenets export`` and ``mobilenets bench``: thin commands over :mod:`mobilenets.deploy.export`
and :mod:`mobilenets.deploy.bench`."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from typing import Any
from pathlib import Path

from torch import nn

from ..deploy.bench import BACKENDS, benchmark
from ..deploy.export import export_checkpoint
from ..errors import MobilenetsError, did_you_mean
from ..io.artifact import require_checkpoint
from ..io.checkpoint import load_model
from ..models.registry import create_model, list_models
from .options import model_kwargs_from_args


def run_export(args: argparse.Namespace) -> int:
    """Export, reload in the target runtime and compare with PyTorch (in the library call)."""
    result = export_checkpoint(args.checkpoint, args.format, args.output, int8=args.int8,
                               calibration_data=args.calibration_data,
                               calibration_size=args.calibration_size, tolerance=args.tolerance,
                               reduce_range=args.reduce_range)
    print(result.summary())
    for extra in result.files[1:]:
        print(f"{'metadata' if extra.suffix == '.json' else 'with'} -> {extra}")
    return 0


@contextlib.contextmanager
def _third_party_quiet(verbose: bool) -> Iterator[None]:
    """Inductor writes its autotune tables straight to ``sys.stderr`` and torch warns about
    its own deprecated calls: without ``--verbose`` both go to the ``mobilenets`` logger
    (DEBUG), not the user's terminal. Our own progress lines keep the real stderr."""
    if verbose:
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(torch|torchao|onnx|onnxruntime|onnxscript|openvino|"
                                                     r"nncf|executorch|litert_torch|ai_edge_litert|coremltools)(\.|$)")
            yield
    finally:
        if buffer.getvalue():
            logging.getLogger("mobilenets").debug("bench, third-party output:\n%s", buffer.getvalue())


def _int_list(text: str, what: str) -> list[int]:
    """``--batch 1,8,32`` as integers; anything else is a user error, not a traceback."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MobilenetsError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise MobilenetsError(f"{what} is empty")
    return values


def _bench_model(spec: str, args: argparse.Namespace) -> tuple[nn.Module, int, dict | None]:
    """The model a bench argument names, its default resolution and (a checkpoint's) metadata."""
    kwargs = model_kwargs_from_args(args)
    if spec in list_models():
        return create_model(spec, **kwargs), 224, None
    if Path(spec).exists():
        if kwargs:
            raise MobilenetsError("model options (--width-mult, ...) apply to model names; "
                                  "a checkpoint already defines its model")
        model, meta = load_model(require_checkpoint(spec, "bench", " and makes its own exports "
                                                    "(--backends onnxruntime,onnxruntime-int8 times those)"))
        return model, int((meta.get("preprocessing") or {}).get("input_size", 224)), meta
    raise MobilenetsError(f"{spec!r} is neither a model name{did_you_mean(spec, list_models())} "
                          f"nor an existing checkpoint; models: {', '.join(list_models())}")


def _bench_images(args: argparse.Namespace, model: nn.Module, meta: dict | None,
                  resolution: int) -> tuple[Any, dict | None]:
    """``--calibration-data``'s images and the checkpoint's preprocessing, with which bench
    measures int8's agreement with the float model (a checkpoint's own size only)."""
    if args.calibration_data is None:
        return None, None
    if meta is None:
        raise MobilenetsError("--calibration-data measures int8 accuracy, which needs trained "
                              "weights: give a checkpoint, not a model name")
    from ..deploy.calibration import load_calibration_images
    from ..deploy.preprocess import resolve_preprocessing

    pre = resolve_preprocessing(model, meta).record()
    if resolution != pre["input_size"]:
        raise MobilenetsError(f"--calibration-data needs the checkpoint's input size "
                              f"{pre['input_size']}, not --resolution {resolution}")
    return load_calibration_images(args.calibration_data, args.calibration_size, pre,
                                   holdout=meta.get("holdout")), pre


def run_bench(args: argparse.Namespace) -> int:
    """Latency and throughput per backend and batch size; progress goes to stderr."""
    batches = _int_list(args.batch, "--batch")
    backends = list(dict.fromkeys(b.strip() for b in args.backends.split(",") if b.strip()))
    if not backends:
        raise MobilenetsError(f"--backends is empty; choose from {', '.join(BACKENDS)}")
    if not (math.isfinite(args.seconds) and 0 < args.seconds <= 600):
        raise MobilenetsError(f"--seconds must be in (0, 600], got {args.seconds}")
    if args.threads is not None and args.threads < 1:
        raise MobilenetsError(f"--threads must be >= 1, got {args.threads}")
    model, default_resolution, meta = _bench_model(args.model, args)
    resolution = default_resolution if args.resolution is None else args.resolution
    images, pre = _bench_images(args, model, meta, resolution)
    err = sys.stderr  # our progress lines; what third parties write goes elsewhere
    with _third_party_quiet(args.verbose):
        report = benchmark(model, batches=batches, resolution=resolution,
                           backends=backends, threads=args.threads, seconds=args.seconds,
                           reuse_memory=args.reuse_memory, images=images, preprocessing=pre,
                           log=lambda msg: print(msg, file=err, flush=True))
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    failed = [r for r in report.results if r.median_ms is None]
    if failed and len(failed) == len(report.results):  # nothing was timed: not a result
        raise MobilenetsError(f"no backend ran at any batch size ({failed[0].backend}, batch "
                              f"{failed[0].batch}: {failed[0].note})")
    return 0
