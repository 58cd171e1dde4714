"""Which Inductor options the compiling bench backends use, measured: an interleaved A/B.

    .venv/bin/python benchmarks/compile_options.py                      # V3-Large, batch 1 and 32
    .venv/bin/python benchmarks/compile_options.py --models mobilenet_v2 --batches 1

For each model and batch size (224×224, 2 threads) it compiles the BN-folded channels-last
model (:func:`mobilenets.deploy.export.prepare_for_inference`) and, on CPUs with native bf16, its
bf16 copy (:func:`mobilenets.deploy.export.bf16_inference`) with options added one at a time: none,
``freezing``, ``+ cpp_wrapper``, ``+ max_autotune``, and times them with eager NCHW fp32 in
interleaved rounds (:func:`mobilenets.deploy.bench.measure`), in a process that keeps freed memory
as ``mobilenets bench`` does. ``freezing`` is applied through
:func:`mobilenets.deploy.bench.compile_model`, without which it freezes nothing.
``mobilenets.deploy.bench.COMPILE_OPTIONS``
and ``AUTOTUNE_MAX_BATCH`` are chosen from these results. Writes
``benchmarks/results/compile_options.json`` (merged, keyed by model and batch) and prints a
Markdown table of medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import mobilenets
from mobilenets.deploy import bench
from mobilenets.ops import cpu
from mobilenets.deploy import export as deploy

VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "freezing": {"freezing": True},
    "+cpp_wrapper": {"freezing": True, "cpp_wrapper": True},
    "+max_autotune": {"freezing": True, "cpp_wrapper": True, "max_autotune": True},
}


#: bf16 only where the CPU has it natively: emulated, each call takes 10-40x longer, and
#: interleaving such calls with the fp32 ones disturbed the fp32 timings (AVX2 machine).
PRECISIONS = ("fp32", "bf16") if cpu.bf16_supported() else ("fp32",)


def runners(name: str, batch: int) -> dict[str, Callable[[], Any]]:
    model = mobilenets.create_model(name).eval()
    ready = deploy.prepare_for_inference(model).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xc = x.contiguous(memory_format=torch.channels_last)

    def timed(module: Callable[[torch.Tensor], Any], inp: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return module(inp)
        return run

    out = {"eager": timed(model, x)}
    # A fresh copy per variant, so that no variant can reuse another's Dynamo cache entry.
    builds = {"fp32": lambda: copy.deepcopy(ready), "bf16": lambda: deploy.bf16_inference(model)}
    for precision in PRECISIONS:
        build = builds[precision]
        for variant, options in VARIANTS.items():
            out[f"{precision} {variant}"] = timed(bench.compile_model(build(), options), xc)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v3_large")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per variant")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_options.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu.keep_freed_memory()  # as mobilenets bench runs the compiling backends
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    start = time.time()
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            fns = runners(name, batch)
            for variant, fn in fns.items():
                print(f"[{time.time() - start:4.0f}s] {name} b{batch}: compiling {variant}", file=sys.stderr)
                bench.warm_up(fn)
            samples, contended = bench.measure(fns, args.seconds)
            results[f"{name}_b{batch}"] = {
                "model": name, "batch": batch, "threads": args.threads,
                "median_ms": {k: statistics.median(v) * 1e3 for k, v in samples.items()},
                "contended_rounds": contended}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    keys = [f"{p} {v}" for p in PRECISIONS for v in VARIANTS]
    print("| model | batch | eager | " + " | ".join(keys) + " |")
    print("|---|---:|---:|" + "---:|" * len(keys))
    for r in results.values():
        med = r["median_ms"]
        print(f"| `{r['model']}` | {r['batch']} | {med['eager']:.1f} | "
              + " | ".join(f"{med[k]:.1f}" for k in keys) + " |")
    print(f"\n(wrote {out}, {time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
