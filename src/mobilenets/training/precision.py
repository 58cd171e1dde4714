"""Where and in which precision a run trains: the device, and fp32, bf16 or fp16."""

from __future__ import annotations

import copy
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import MobilenetsError
from ..ops.cpu import bf16_supported

#: ``auto`` precision on a CPU with native bf16 times this many training steps in each
#: precision (after one warm-up step each, alternating) before it picks one.
PRECISION_TRIAL_STEPS = 3
#: bf16 must make the step at least this much faster to be chosen: fp32 does not round.
BF16_MIN_SPEEDUP = 1.05


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when present (one GPU per process under torchrun), else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise MobilenetsError("--device cuda but no CUDA GPU is available; use --device cpu")
        index = int(os.environ.get("LOCAL_RANK", local_rank)) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on GPUs (fp16 where bf16 is missing) and, as a candidate, on
    CPUs with native bf16 instructions (AVX-512-BF16/AMX), where the trainer then times
    both (:func:`time_precisions`); fp32 on other CPUs.

    On a Zen 4 EPYC (AVX-512-BF16) bf16 training steps (with the depthwise convolutions
    kept in fp32, see ``ops.layers.CpuDepthwiseConvNormAct``) measured ×1.1 (V3-Small) to ×1.7 (V2) faster than
    fp32 channels-last, at no accuracy cost measured on Fashion-MNIST (one 3-epoch V3-Small
    run each: 91.35 % bf16 against 91.38 % fp32).
    """
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "fp16":
        raise MobilenetsError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if precision == "bf16" and not bf16_supported():
        raise MobilenetsError("--precision bf16 needs a CPU with bf16 support; use fp32")
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def time_precisions(model: nn.Module, batch_shape: tuple[int, ...], num_classes: int,
                    channels_last: bool, steps: int = PRECISION_TRIAL_STEPS) -> dict[str, float]:
    """Median seconds of one training step's forward, loss and backward in fp32 and under
    bf16 autocast, on a copy of ``model`` and a random batch of ``batch_shape``.

    Native bf16 does not make every network faster: V3's depthwise convolutions stay in fp32
    (``ops.layers.CpuDepthwiseConvNormAct``) and each bf16 pointwise layer adds casts, so whether the rest gains
    enough depends on the CPU, the model and even the allocator. On a Zen 4 EPYC bf16
    trained all three of V2, V3-Large and V3-Small faster; on a Xeon with AVX-512-BF16 but
    no AMX it gained ×1.16 on V2 and lost 5-10 % on V3 with glibc's malloc defaults
    (``benchmarks/train_throughput.py``), and lost on all three, 7-22 % per step, with freed
    memory kept as the trainer runs (``benchmarks/malloc.py``). So ``auto`` measures, in the
    trainer's own process.
    The copy and :func:`torch.random.fork_rng` leave the model's weights, BatchNorm
    statistics and the random streams as they were."""
    trial = copy.deepcopy(model).train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_shape, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, num_classes, batch_shape[:1], generator=generator)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):
        for i in range(steps + 1):
            for precision, seconds in times.items():
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = trial(x)
                F.cross_entropy(logits.float(), y).backward()
                trial.zero_grad(set_to_none=True)
                if i:  # the first round warms up
                    seconds.append(time.perf_counter() - t)
    return {precision: statistics.median(seconds) for precision, seconds in times.items()}


def faster_precision(times: dict[str, float]) -> str:
    """bf16 if it beat fp32 by :data:`BF16_MIN_SPEEDUP` in :func:`time_precisions`, else fp32."""
    return "bf16" if times["fp32"] >= BF16_MIN_SPEEDUP * times["bf16"] else "fp32"


def choose_cpu_precision(model: nn.Module, batch_shape: tuple[int, ...], num_classes: int,
                         channels_last: bool, world_size: int) -> tuple[str, dict[str, float]]:
    """``auto`` on a CPU with native bf16: the faster of fp32 and bf16 for this model at
    this micro-batch and input size, every process taking the first one's choice (the
    processes' timings differ, and they must all train alike). Returns the choice and the
    timings behind it."""
    times = time_precisions(model, batch_shape, num_classes, channels_last)
    choice = [faster_precision(times)]
    if world_size > 1:
        dist.broadcast_object_list(choice, src=0)
    return choice[0], times


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision``; None for fp32 (autocast off)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
