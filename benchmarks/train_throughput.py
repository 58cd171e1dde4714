"""Training throughput: the optimised CPU path against a plain baseline, side by side.

For each model, the same training step (forward, cross-entropy, backward, optimizer step) on
the same batches is timed in two configurations, alternating A/B within one run so both
see the same machine state:

* plain: the model as ``create_model`` builds it (plain ``torch.nn``), NCHW, fp32,
  ``torch.optim.SGD`` with its defaults, oneDNN's kernels throughout;
* optimised: the model through :func:`mobilenets.ops.cpu.optimize` (the library's depthwise
  weight gradient for kernels wider than the map, ReLU6 out of place, a pooling that keeps
  channels_last), channels_last memory format, the fused SGD kernel, fp32 (the trainer's
  default where the CPU has no native bf16);
* optimised + bf16: the same under bf16 autocast (where the CPU has native bf16);
* with ``--compile``, also optimised (+ bf16) + ``torch.compile`` of the model (compiled
  in the warm-up, untimed): what ``mobilenets train --compile`` does.

All configurations share one process and so glibc's malloc defaults; the trainer's malloc
setting (:func:`mobilenets.ops.cpu.keep_freed_memory`) is measured by ``malloc.py``, one process
per configuration.

The whole measurement is repeated ``--rounds`` times with fresh models: one round's ratio
moves by about 0.2 on this shared machine, so the table gives the median over rounds of
images/s and of the speed-up, with the speed-ups' range. Writes
``benchmarks/results/train_throughput.json`` (every round's figures too) and prints a
Markdown table.

    python benchmarks/train_throughput.py [--models mobilenet_v2,mobilenet_v3_large,...]
        [--batch 256] [--resolution 28] [--steps 10] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mobilenets
from mobilenets.deploy.bench import machine_info
from mobilenets.ops.cpu import bf16_supported, optimize

RESULTS = Path(__file__).parent / "results"


def make_step(model_name: str, optimised: bool, bf16: bool, batch: int, resolution: int, small_input: bool,
              compile: bool = False, edit: Callable[[nn.Module], nn.Module] | None = None,
              small_map: bool = True):
    """One configuration's training step (a function returning its seconds) and whether it
    runs under bf16 autocast; ``edit`` changes the model once it is optimised
    (``memory_format.py`` swaps layers with it); ``small_map=False`` keeps oneDNN's
    depthwise weight gradient in the optimised step (``cpu_kernels.py``'s step A/B)."""
    torch.manual_seed(0)
    model = mobilenets.create_model(model_name, num_classes=10, in_chans=1, small_input=small_input).train()
    if optimised:
        model = optimize(model, small_map_wgrad=small_map)
    if edit is not None:
        model = edit(model)
    x = torch.randn(batch, 1, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    use_bf16 = bf16 and bf16_supported()
    if optimised:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model, dynamic=False) if compile else model

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step, use_bf16


def measure_round(name: str, args: argparse.Namespace) -> dict[str, float]:
    """One round: fresh models, a warm-up, then ``args.steps`` interleaved steps per
    configuration (so every configuration sees the same machine state); returns each
    configuration's median step time in seconds."""
    shape = (args.batch, args.resolution, args.small_input)
    steps = {"plain": make_step(name, False, False, *shape)[0],
             "optimised": make_step(name, True, False, *shape)[0]}
    fast_bf16, bf16 = make_step(name, True, True, *shape)
    if bf16:
        steps["optimised_bf16"] = fast_bf16
    if args.compile:
        steps["optimised_bf16_compile" if bf16 else "optimised_compile"] = make_step(
            name, True, True, *shape, compile=True)[0]
    for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.steps):
        for k, fn in steps.items():
            times[k].append(fn())
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small")
    p.add_argument("--batch", type=int, default=256, help="default: the small-images recipe's batch")
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--no-small-input", dest="small_input", action="store_false")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3,
                   help="independent rounds (fresh models each); the table gives the median "
                        "over rounds and the speed-ups' range, since one round's ratio moves "
                        "by about 0.2 on a shared machine")
    p.add_argument("--compile", action="store_true", help="add the torch.compile'd bf16 configuration")
    p.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.models.split(","):
        rounds = [measure_round(name, args) for _ in range(args.rounds)]
        configs = list(rounds[0])
        speedups = {k: [r["plain"] / r[k] for r in rounds] for k in configs if k != "plain"}
        row = {"model": name, "batch": args.batch, "resolution": args.resolution,
               "small_input": args.small_input, "steps": args.steps, "rounds": args.rounds,
               **{f"{k}_images_per_s": statistics.median(args.batch / r[k] for r in rounds)
                  for k in configs},
               **{f"{k}_speedup": statistics.median(v) for k, v in speedups.items()},
               **{f"{k}_speedup_range": [min(v), max(v)] for k, v in speedups.items()},
               "round_images_per_s": [{k: args.batch / t for k, t in r.items()} for r in rounds]}
        rows.append(row)
        print(name, ", ".join(f"{k} {row[k + '_images_per_s']:.0f} img/s" for k in configs), flush=True)

    result = {"benchmark": "train_throughput", "torch": torch.__version__, "threads": args.threads,
              "machine": machine_info(), "rows": rows,
              "command": "python benchmarks/train_throughput.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k in ("models", "batch", "resolution", "steps", "threads", "rounds"))
              + (" --compile" if args.compile else "")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("\n| model | plain: NCHW fp32 SGD (img/s) | channels_last fp32 fused (img/s) | speed-up | "
          "+ bf16 autocast (img/s) | speed-up |" + (" + torch.compile (img/s) | speed-up |" if args.compile else ""))
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.compile else ""))
    for r in rows:
        cells = [f"{r['plain_images_per_s']:.0f}"]
        for k in ("optimised", "optimised_bf16", "optimised_bf16_compile", "optimised_compile"):
            if k + "_images_per_s" in r:
                lo, hi = r[k + "_speedup_range"]
                cells.append(f"{r[k + '_images_per_s']:.0f} | ×{r[k + '_speedup']:.2f} ({lo:.2f}-{hi:.2f})")
            elif k == "optimised_bf16":
                cells.append("– | –")
        print(f"| `{r['model']}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
