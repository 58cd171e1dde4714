"""One memory format through the training step: the library's layers against the ones before.

Two of :func:`mobilenets.ops.cpu.optimize`'s swaps keep a channels_last training step in one
layout (``tests/test_models.py::test_channels_last_training_step_never_mixes_memory_formats``):

* the pooling of the head and of squeeze-excite is :func:`mobilenets.ops.layers.global_avg_pool`,
  whose backward keeps channels_last, where ``x.mean`` (and ``nn.AdaptiveAvgPool2d(1)``)
  expands an NCHW gradient that the BatchNorm backward and gradient sums then mix with
  channels_last tensors;
* ReLU6 (V1, V2) runs out of place under autograd (:class:`mobilenets.ops.layers.OutOfPlaceReLU6`),
  where the in-place op made autograd clone each input.

"before" is the optimised network with those two swaps undone (the plain model's
``nn.AdaptiveAvgPool2d(1)``, squeeze-excite pooling by ``x.mean``, ``nn.ReLU6(inplace=True)``),
its depthwise layers still optimised. Both run the trainer's
CPU step (``train_throughput.py``'s optimised step: channels_last, fused SGD, bf16
autocast where the CPU has native bf16; here with freed memory kept) on the same batch in
one process, their steps interleaved, so both see the same machine state; the speed-up is
the median of the per-pair ratios, with the interquartile range. Writes ``benchmarks/results/memory_format.json`` and prints a
Markdown table.

    python benchmarks/memory_format.py [--models mobilenet_v2,...] [--steps 16] [--batch 256]
        [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mobilenets.deploy.bench import machine_info
from mobilenets.models.layers import SqueezeExcite
from mobilenets.ops import layers
from mobilenets.ops.cpu import bf16_supported, keep_freed_memory
from train_throughput import make_step

RESULTS = Path(__file__).parent / "results"

#: ``optimize``'s pooling and ReLU6 layers -> the plain ones they replaced.
PLAIN = {layers.ChannelsLastAvgPool: nn.AdaptiveAvgPool2d, layers.ChannelsLastSqueezeExcite: SqueezeExcite,
         layers.OutOfPlaceReLU6: nn.ReLU6}


def with_earlier_layers(model: nn.Module) -> nn.Module:
    """An optimised ``model`` with the head's, squeeze-excite's and ReLU6's plain modules
    back, in place."""
    for module in model.modules():
        if type(module) in PLAIN:
            module.__class__ = PLAIN[type(module)]
    return model


def measure(name: str, args: argparse.Namespace) -> dict:
    """``train_throughput.py``'s optimised step, with the earlier layers and with the library's."""
    steps = {config: make_step(name, True, True, args.batch, 28, True,
                               edit=with_earlier_layers if config == "before" else None)[0]
             for config in ("before", "library")}
    for _ in range(3):  # warm-up: oneDNN primitives, the heap settling
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {"before": [], "library": []}
    for i in range(args.steps):
        for config in (("before", "library") if i % 2 else ("library", "before")):
            times[config].append(steps[config]())
    ratios = sorted(b / a for b, a in zip(times["before"], times["library"]))
    q = statistics.quantiles(ratios, n=4)
    return {"model": name, "batch": args.batch, "before_step_s": statistics.median(times["before"]),
            "library_step_s": statistics.median(times["library"]), "speedup": statistics.median(ratios),
            "speedup_iqr": [q[0], q[2]], "times": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "memory_format.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    bf16 = bf16_supported()
    t0 = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows.append(measure(name, args))
        r = rows[-1]
        print(f"{name}: before {r['before_step_s'] * 1000:.0f} ms, library {r['library_step_s'] * 1000:.0f} ms, "
              f"×{r['speedup']:.2f}", flush=True)
    result = {"benchmark": "memory_format", "machine": machine_info(), "threads": args.threads,
              "precision": "bf16" if bf16 else "fp32", "rows": rows, "minutes": (time.perf_counter() - t0) / 60,
              "command": f"python benchmarks/memory_format.py --models {args.models} --batch {args.batch} "
                         f"--steps {args.steps} --threads {args.threads}"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n| model | before (img/s) | library (img/s) | speed-up (IQR) |\n|---|---:|---:|---:|")
    for r in rows:
        lo, hi = r["speedup_iqr"]
        print(f"| `{r['model']}` | {args.batch / r['before_step_s']:.0f} | {args.batch / r['library_step_s']:.0f} | "
              f"×{r['speedup']:.2f} ({lo:.2f}-{hi:.2f}) |")


if __name__ == "__main__":
    main()
