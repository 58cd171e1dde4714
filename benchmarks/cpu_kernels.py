"""Single-kernel timings behind two choices in the library, measured side by side.

1. Depthwise convolutions stay in fp32 under CPU bf16 autocast (``ConvNormAct``): forward +
   backward of depthwise layers of V3-Large at 28 px, fp32 vs bf16, channels-last.
2. QAT rounds with its own straight-through function (``mobilenets.qat.round_trip``) instead
   of ``torch.fake_quantize_per_tensor_affine``: forward + backward on a channels-last
   activation.

Medians of interleaved repeats; writes ``benchmarks/results/cpu_kernels.json`` and prints
Markdown tables.

    python benchmarks/cpu_kernels.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mobilenets.qat import round_trip

RESULTS = Path(__file__).parent / "results"
#: (batch, channels, size, kernel, stride) of depthwise layers of V3-Large on 28-px inputs.
DEPTHWISE = [(64, 72, 28, 5, 2), (64, 240, 14, 3, 2), (64, 672, 7, 5, 1), (64, 960, 4, 5, 1),
             (64, 200, 7, 3, 1)]


def median_ms(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def depthwise_case(n: int, c: int, size: int, k: int, s: int, repeats: int) -> dict:
    fns = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        conv = torch.nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False).to(dtype)
        conv = conv.to(memory_format=torch.channels_last)
        x = torch.randn(n, c, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)

        def step(conv=conv, x=x):
            y = conv(x)
            y.backward(torch.ones_like(y))
        fns[name] = step
    ms = median_ms(fns, repeats)
    return {"shape": [n, c, size, size], "kernel": k, "stride": s, "fp32_ms": ms["fp32"],
            "bf16_ms": ms["bf16"], "bf16_slowdown": ms["bf16"] / ms["fp32"]}


def fake_quant_case(repeats: int) -> dict:
    x = torch.randn(128, 72, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    scale, zero = torch.tensor(0.02), torch.tensor(128, dtype=torch.int32)
    fns = {"torch": lambda: torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255).sum().backward(),
           "mobilenets": lambda: round_trip(x, scale, zero, 0, 255).sum().backward()}
    ms = median_ms(fns, repeats)
    return {"shape": list(x.shape), "torch_ms": ms["torch"], "mobilenets_ms": ms["mobilenets"],
            "speedup": ms["torch"] / ms["mobilenets"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(RESULTS / "cpu_kernels.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dw = [depthwise_case(*case, repeats=args.repeats) for case in DEPTHWISE]
    fq = fake_quant_case(args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "depthwise": dw,
                               "fake_quant": fq}, indent=2) + "\n")
    print("| depthwise layer (N, C, H, W), k, s | fp32 ms | bf16 ms | bf16 / fp32 |\n|---|---:|---:|---:|")
    for r in dw:
        print(f"| {tuple(r['shape'])}, {r['kernel']}, {r['stride']} | {r['fp32_ms']:.1f} | "
              f"{r['bf16_ms']:.1f} | ×{r['bf16_slowdown']:.1f} |")
    print(f"\nfake quantization of {tuple(fq['shape'])} channels-last, forward + backward: torch "
          f"{fq['torch_ms']:.1f} ms, mobilenets {fq['mobilenets_ms']:.1f} ms (×{fq['speedup']:.1f})")


if __name__ == "__main__":
    main()
