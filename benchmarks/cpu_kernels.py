"""Single-kernel timings behind three choices in the library, measured side by side.

1. ``bf16``: depthwise convolutions stay in fp32 under CPU bf16 autocast (``ConvNormAct``):
   forward + backward of depthwise layers of V3-Large at 28 px, fp32 vs bf16, channels-last.
2. ``fake-quant``: QAT rounds with its own straight-through function
   (``mobilenets.training.qat.round_trip``) instead of ``torch.fake_quantize_per_tensor_affine``:
   forward + backward on a channels-last activation.
3. ``small-map``: the depthwise weight gradient of kernels wider than the map
   is :class:`mobilenets.ops.depthwise.SmallMapDepthwise`'s batched matmul instead of oneDNN's
   kernel: the weight gradient alone, fp32 channels-last, for V3-Small's and V3-Large's 5×5
   layers on the small-input stem's 4×4 maps, and a 7×7 map where the library keeps oneDNN's.
4. ``small-map-step``: what that weight gradient gives the whole training step of V3-Small
   and V3-Large (``train_throughput.py``'s optimised fp32 step, batch 256, 28 px, with
   freed memory kept as the trainer does), with and without it, interleaved.

Medians of interleaved repeats; writes ``benchmarks/results/cpu_kernels.json`` (with the
machine's CPU and instruction sets) and prints Markdown tables.

    python benchmarks/cpu_kernels.py --threads 1
    python benchmarks/cpu_kernels.py --threads 2 --parts small-map --out benchmarks/results/cpu_kernels_avx2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from mobilenets.deploy.bench import machine_info
from mobilenets.ops.cpu import keep_freed_memory
from mobilenets.ops.depthwise import SmallMapDepthwise
from mobilenets.training.qat import round_trip

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


#: (batch, channels, size, kernel) of 5×5 stride-1 depthwise layers at the trainer's batch.
SMALL_MAPS = [(256, 576, 4, 5), (256, 960, 4, 5), (256, 576, 7, 5)]


def small_map_case(n: int, c: int, size: int, k: int, repeats: int) -> dict:
    x = torch.randn(n, c, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k)
    grad = torch.randn(n, c, size, size).contiguous(memory_format=torch.channels_last)
    ctx = SimpleNamespace(saved_tensors=(x, w), stride=(1, 1), padding=(k // 2, k // 2),
                          needs_input_grad=(False, True))
    fns = {"onednn": lambda: torch.ops.aten.convolution_backward(
               grad, x, w, None, (1, 1), (k // 2, k // 2), (1, 1), False, (0, 0), c, (False, True, False)),
           "mobilenets": lambda: SmallMapDepthwise.backward(ctx, grad)}
    ms = median_ms(fns, repeats)
    return {"shape": [n, c, size, size], "kernel": k, "onednn_ms": ms["onednn"],
            "mobilenets_ms": ms["mobilenets"], "speedup": ms["onednn"] / ms["mobilenets"],
            "library_uses_it": size < k}


def small_map_step_case(model: str, repeats: int) -> dict:
    from train_throughput import make_step

    fns = {name: make_step(model, True, False, 256, 28, True, small_map=on)[0]
           for name, on in (("onednn", False), ("mobilenets", True))}
    ms = median_ms(fns, repeats)
    return {"model": model, "onednn_ms": ms["onednn"], "mobilenets_ms": ms["mobilenets"],
            "speedup": ms["onednn"] / ms["mobilenets"]}


PARTS = ("bf16", "fake-quant", "small-map", "small-map-step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated, from {', '.join(PARTS)} (default all)")
    p.add_argument("--out", default=str(RESULTS / "cpu_kernels.json"))
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        p.error(f"unknown --parts {', '.join(sorted(parts - set(PARTS)))}")
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "torch": torch.__version__, "machine": machine_info()}
    if "bf16" in parts:
        result["depthwise"] = dw = [depthwise_case(*case, repeats=args.repeats) for case in DEPTHWISE]
        print("| depthwise layer (N, C, H, W), k, s | fp32 ms | bf16 ms | bf16 / fp32 |\n|---|---:|---:|---:|")
        for r in dw:
            print(f"| {tuple(r['shape'])}, {r['kernel']}, {r['stride']} | {r['fp32_ms']:.1f} | "
                  f"{r['bf16_ms']:.1f} | ×{r['bf16_slowdown']:.1f} |")
    if "fake-quant" in parts:
        result["fake_quant"] = fq = fake_quant_case(args.repeats)
        print(f"\nfake quantization of {tuple(fq['shape'])} channels-last, forward + backward: torch "
              f"{fq['torch_ms']:.1f} ms, mobilenets {fq['mobilenets_ms']:.1f} ms (×{fq['speedup']:.1f})")
    if "small-map" in parts:
        result["small_map"] = sm = [small_map_case(*case, repeats=args.repeats) for case in SMALL_MAPS]
        print("\n| depthwise weight gradient (N, C, H, W), k | oneDNN ms | SmallMapDepthwise ms | "
              "speed-up | used by the library |\n|---|---:|---:|---:|---|")
        for r in sm:
            print(f"| {tuple(r['shape'])}, {r['kernel']} | {r['onednn_ms']:.1f} | {r['mobilenets_ms']:.1f} | "
                  f"×{r['speedup']:.1f} | {'yes' if r['library_uses_it'] else 'no'} |")
    if "small-map-step" in parts:
        # Process-wide, so after the kernel parts, which ran with glibc's defaults.
        result["small_map_step_freed_memory_kept"] = kept = keep_freed_memory()
        result["small_map_step"] = st = [small_map_step_case(m, args.repeats)
                                         for m in ("mobilenet_v3_small", "mobilenet_v3_large")]
        print(f"\n| training step, fp32 channels-last, batch 256, 28 px{', freed memory kept' if kept else ''} | "
              "oneDNN's weight gradient ms | "
              "SmallMapDepthwise ms | speed-up |\n|---|---:|---:|---:|")
        for r in st:
            print(f"| `{r['model']}` | {r['onednn_ms']:.0f} | {r['mobilenets_ms']:.0f} | ×{r['speedup']:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
