"""``mobilenets export`` and ``mobilenets bench``: thin commands over :mod:`mobilenets.deploy.export`
and :mod:`mobilenets.deploy.bench`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from torch import nn

from ..cli.main import add_model_options, add_reuse_memory_option, model_kwargs_from_args
from ..errors import MobilenetsError, did_you_mean


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` and ``bench`` on the main parser's sub-commands."""
    from ..deploy.bench import BACKENDS, DEFAULT_BACKENDS
    from ..deploy.export import FORMATS

    p = sub.add_parser("export", help="export a checkpoint (ONNX, TorchScript, pt2; optional "
                                      "int8), checked against PyTorch",
                       description="BatchNorm is folded and dropout removed; the batch size "
                                   "stays dynamic. The file is reloaded in its runtime and "
                                   "compared with the PyTorch model; a mismatch is an error.")
    p.add_argument("checkpoint", help="a mobilenets .safetensors checkpoint (or its run directory)")
    p.add_argument("--format", default="onnx", help=f"{' | '.join(FORMATS)} (default onnx)")
    p.add_argument("-o", "--output", help="output file (default: next to the checkpoint, "
                                          ".onnx / .int8.onnx / .pt / .pt2)")
    p.add_argument("--int8", action="store_true",
                   help="post-training static int8 quantization (ONNX, onnxruntime)")
    p.add_argument("--calibration-data", metavar="PATH",
                   help="dataset name or directory whose training images (or a flat folder of images) calibrate int8 "
                        "(and serve as parity inputs)")
    p.add_argument("--calibration-size", type=int, default=256, metavar="N",
                   help="calibration images drawn from the training split (default 256)")
    p.add_argument("--tolerance", type=float,
                   help="largest allowed max|Δ| / max|logit| (default 1e-4 float, 0.25 int8)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="int8 weights in 7 bits, which onnxruntime needs on x86 CPUs without "
                        "VNNI to avoid int16 saturation (default: on exactly when this machine "
                        "is such a CPU)")
    p.set_defaults(func=_export)

    p = sub.add_parser("bench", help="latency, throughput and fraction of peak per backend",
                       description="Times the model per backend and batch size on this "
                                   "machine (median and p90 of single calls) and compares "
                                   "its MAdds per second with a measured fp32 matmul peak.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                   help="a model name (random weights) or a checkpoint file")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--resolution", type=int,
                   help="input side (default: the checkpoint's input size, else 224)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated, from {', '.join(BACKENDS)} "
                        f"(default {','.join(DEFAULT_BACKENDS)})")
    p.add_argument("--seconds", type=float, default=1.5,
                   help="timed seconds per backend and batch size (default 1.5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_reuse_memory_option(p, "eager PyTorch 1.9-3.0x faster at batch 32 measured")
    add_model_options(p)
    p.set_defaults(func=_bench)


def _export(args: argparse.Namespace) -> int:
    from ..deploy.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.output, int8=args.int8,
                               calibration_data=args.calibration_data,
                               calibration_size=args.calibration_size, tolerance=args.tolerance,
                               reduce_range=args.reduce_range)
    print(result.summary())
    for extra in result.files[1:]:
        print(f"metadata -> {extra}")
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MobilenetsError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise MobilenetsError(f"{what} is empty")
    return values


def _bench_model(spec: str, args: argparse.Namespace) -> tuple[nn.Module, int]:
    """The model a bench argument names, and its default resolution."""
    from ..io.checkpoint import load_model
    from ..deploy.export import EXTENSIONS
    from ..models.registry import create_model, list_models

    kwargs = model_kwargs_from_args(args)
    if spec in list_models():
        return create_model(spec, **kwargs), 224
    if Path(spec).exists():
        if kwargs:
            raise MobilenetsError("model options (--width-mult, ...) apply to model names; "
                                  "a checkpoint already defines its model")
        if Path(spec).suffix in EXTENSIONS.values():
            raise MobilenetsError(f"{spec} is an exported file; bench takes the checkpoint it came "
                                  "from and makes its own exports (--backends onnxruntime,"
                                  "onnxruntime-int8 times those)")
        model, meta = load_model(spec)
        return model, int((meta.get("preprocessing") or {}).get("input_size", 224))
    raise MobilenetsError(f"{spec!r} is neither a model name{did_you_mean(spec, list_models())} "
                          f"nor an existing checkpoint; models: {', '.join(list_models())}")


def _bench(args: argparse.Namespace) -> int:
    from ..deploy.bench import BACKENDS, benchmark

    batches = _int_list(args.batch, "--batch")
    backends = list(dict.fromkeys(b.strip() for b in args.backends.split(",") if b.strip()))
    if not backends:
        raise MobilenetsError(f"--backends is empty; choose from {', '.join(BACKENDS)}")
    if not (math.isfinite(args.seconds) and 0 < args.seconds <= 600):
        raise MobilenetsError(f"--seconds must be in (0, 600], got {args.seconds}")
    if args.threads is not None and args.threads < 1:
        raise MobilenetsError(f"--threads must be >= 1, got {args.threads}")
    model, default_resolution = _bench_model(args.model, args)
    resolution = default_resolution if args.resolution is None else args.resolution
    report = benchmark(model, batches=batches, resolution=resolution,
                       backends=backends, threads=args.threads, seconds=args.seconds,
                       reuse_memory=args.reuse_memory,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0
