"""Training throughput: the optimised CPU path against a plain baseline, side by side.

For each model, the same training step (forward, cross-entropy, backward, optimizer step) on
the same batches is timed in two configurations, alternating A/B within one run so both
see the same machine state:

* plain: NCHW, fp32, ``torch.optim.SGD`` with its defaults;
* optimised: channels_last memory format, bf16 autocast (where the CPU has native bf16),
  the fused SGD kernel.

Writes ``benchmarks/results/train_throughput.json`` and prints a Markdown table of median
images/s and the speed-up ratio.

    python benchmarks/train_throughput.py [--models mobilenet_v2,mobilenet_v3_large,...]
        [--batch 256] [--resolution 28] [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import mobilenets
from mobilenets.train import bf16_supported

RESULTS = Path(__file__).parent / "results"


def make_step(model_name: str, optimised: bool, batch: int, resolution: int, small_input: bool):
    torch.manual_seed(0)
    model = mobilenets.create_model(model_name, num_classes=10, in_chans=1, small_input=small_input).train()
    x = torch.randn(batch, 1, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    use_bf16 = optimised and bf16_supported()
    if optimised:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step, use_bf16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--no-small-input", dest="small_input", action="store_false")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.models.split(","):
        plain, _ = make_step(name, False, args.batch, args.resolution, args.small_input)
        fast, bf16 = make_step(name, True, args.batch, args.resolution, args.small_input)
        for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
            plain(), fast()
        times = {"plain": [], "optimised": []}
        for _ in range(args.steps):
            times["plain"].append(plain())
            times["optimised"].append(fast())
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"model": name, "batch": args.batch, "resolution": args.resolution,
               "small_input": args.small_input, "bf16": bf16,
               "plain_images_per_s": args.batch / med["plain"],
               "optimised_images_per_s": args.batch / med["optimised"],
               "speedup": med["plain"] / med["optimised"], "steps": args.steps}
        rows.append(row)
        print(f"{name}: plain {row['plain_images_per_s']:.0f} img/s, optimised "
              f"{row['optimised_images_per_s']:.0f} img/s, x{row['speedup']:.2f}", flush=True)

    result = {"benchmark": "train_throughput", "torch": torch.__version__, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "rows": rows,
              "command": "python benchmarks/train_throughput.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k in ("models", "batch", "resolution", "steps", "threads"))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("\n| model | plain (NCHW fp32) img/s | optimised (channels_last bf16 fused) img/s | speed-up |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| `{r['model']}` | {r['plain_images_per_s']:.0f} | {r['optimised_images_per_s']:.0f} | "
              f"×{r['speedup']:.2f} |")


if __name__ == "__main__":
    main()
