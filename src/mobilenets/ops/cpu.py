"""The CPU speed-ups: :func:`optimize` for a built model, and what this CPU can do, asked in
one place (the fast paths of training and int8 export depend on it).

* :func:`optimize` swaps the CPU versions of a model's layers in (:mod:`mobilenets.ops.layers`),
  as ``torch.ao.quantization.prepare_qat`` swaps in fake-quantized ones;
* bf16 autocast pays only with native bf16 matrix instructions (AVX-512-BF16 or AMX):
  :func:`bf16_supported`;
* int8 weights use 7 bits on x86 CPUs without VNNI: :func:`reduce_range_default`;
* the CPU trainer keeps freed memory instead of faulting it in at every step (glibc):
  :func:`keep_freed_memory`.

Instruction sets come from Linux's ``/proc/cpuinfo`` where it exists (so that tests can
fake a CPU by replacing :func:`flags`), otherwise from torch's own probes.
"""

from __future__ import annotations

import functools
import platform

import torch
from torch import nn

from ..models.layers import ConvNormAct, SqueezeExcite
from ..ops.depthwise import register_small_map_wgrad
from ..ops.layers import (ChannelsLastAvgPool, ChannelsLastSqueezeExcite, CpuDepthwiseConvNormAct,
                          OutOfPlaceReLU6)

#: The instruction sets benchmark results record: those that decide bf16 and int8 speed.
RECORDED_ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpuinfo(field: str) -> str | None:
    """The first CPU's ``field`` in Linux's ``/proc/cpuinfo`` (``None`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def flags() -> frozenset[str]:
    """The instruction-set flags Linux lists in ``/proc/cpuinfo`` (empty elsewhere)."""
    return frozenset((cpuinfo("flags") or "").split())


def recorded_isa() -> list[str]:
    """This CPU's instruction sets among :data:`RECORDED_ISA`, for benchmark JSON."""
    return sorted(flags() & set(RECORDED_ISA))


def bf16_supported() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX-512-BF16 or AMX).

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also accepts plain
    AVX-512 CPUs, where bf16 is emulated and slower than fp32, so the instruction sets
    are asked for by name.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def reduce_range_default() -> bool:
    """Whether int8 weights should use 7 bits on this machine: True on x86 CPUs without VNNI.

    There onnxruntime's uint8 × int8 kernels multiply with ``VPMADDUBSW``, which adds pairs
    of products in saturating int16: with 8-bit weights two products can exceed 32767 and
    the sum is clipped (onnxruntime's quantization guide recommends ``reduce_range`` on
    such CPUs). With weights in [−64, 64] a pair stays below 2·255·64 = 32640. VNNI
    (AVX-512 or AVX) accumulates in int32, and ARM has no such instruction, so both keep
    the full range. The decision is the exporting machine's: export where the model runs,
    or say ``reduce_range`` explicitly.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    cpu_flags = flags()
    if cpu_flags:
        return not cpu_flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
    return not torch.cpu._is_vnni_supported()


#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_freed_memory_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the
    kernel; returns whether it applied (glibc only: not macOS, Windows or musl).

    By default glibc serves large blocks (all above 32 MiB) with fresh ``mmap``\\ s and
    unmaps them when freed, so every training step faults its activations' pages in again
    and the kernel zeroes them: 30,000 (V3-Small) to 116,000 (V2) page faults per step at
    batch 256 and 28 px on an AVX2 machine, 0.1-0.6 s of kernel time per step, and
    element-wise ops on 34 MB tensors 4-6× slower than on reused memory. With ``mmap`` and
    heap trimming off, one step's memory serves the next: no faults, steps 1.05-1.40×
    faster over two runs. The cost: the process keeps its peak memory until it exits (7-12 %
    higher peak RSS measured). Inference faults just as much: eager V2 and V3-Large at batch
    32 and 224 px ran 2.95× and 1.90× faster with it, and ``mobilenets eval`` of the demo
    checkpoint 1.74× (5.8 million against 0.15 million page faults). PyTorch's own CPU
    launcher (``torch.backends.xeon.run_cpu``) gets the same effect by preloading jemalloc or
    tcmalloc configured never to return memory. Figures: ``benchmarks/malloc.py``,
    ``inference.py`` and ``eval_malloc.py``.
    """
    global _freed_memory_kept
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False
    _freed_memory_kept = _freed_memory_kept or kept
    return kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has applied in this process (it cannot be undone),
    so that a benchmark can record which allocator behaviour it measured."""
    return _freed_memory_kept


def optimize(model: nn.Module, *, small_map_wgrad: bool = True) -> nn.Module:
    """``model`` with the CPU versions of its layers swapped in, in place; returns it.

    The result computes the same outputs and gradients (the tests hold it to the plain
    model's), keeps its parameters, buffers and state-dict keys, and stays scriptable.
    What changes is how the CPU computes them (each measured in the class's docstring):

    * ``nn.ReLU6`` works out of place under autograd (:class:`~mobilenets.ops.layers.OutOfPlaceReLU6`);
    * global average pooling, of the head and of squeeze-excite, hands back gradients in
      the input's memory format (:func:`~mobilenets.ops.layers.global_avg_pool`);
    * depthwise convolutions run in fp32 under CPU autocast and, with ``small_map_wgrad``,
      take :class:`~mobilenets.ops.depthwise.SmallMapDepthwise`'s weight gradient for
      kernels wider than the map (:class:`~mobilenets.ops.layers.CpuDepthwiseConvNormAct`).

    Calling it again changes nothing but ``small_map_wgrad``. Apply it before
    ``torch.compile``: it registers the weight gradient's custom operator.
    """
    if small_map_wgrad:
        register_small_map_wgrad()
    for module in model.modules():
        if type(module) is ConvNormAct and module.depthwise:
            module.__class__ = CpuDepthwiseConvNormAct
        if isinstance(module, CpuDepthwiseConvNormAct):
            module.small_map_wgrad = small_map_wgrad
        elif type(module) is SqueezeExcite:
            module.__class__ = ChannelsLastSqueezeExcite
        elif type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1)):
            module.__class__ = ChannelsLastAvgPool
        elif type(module) is nn.ReLU6:
            module.__class__ = OutOfPlaceReLU6
    return model
