"""What changes when several processes train together (``torchrun``, DDP): the process
group, the wrapped model, synchronized BatchNorm, and sums and flags agreed by all ranks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import MobilenetsError
from .precision import resolve_device


def world() -> tuple[int, int]:
    """``(rank, world_size)`` as torchrun sets them; ``(0, 1)`` outside it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ["RANK"]) if world_size > 1 else 0), world_size


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join the process group (NCCL on GPUs, gloo on CPUs) unless the caller already has,
    and leave it afterwards."""
    owns_group = not dist.is_initialized()
    if owns_group:
        dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if owns_group:
            dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``model`` in DistributedDataParallel across processes; ``model`` itself in one."""
    if world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_batchnorm(model: nn.Module, name: str, kwargs: dict[str, Any], device: torch.device,
                   world_size: int) -> nn.Module:
    """``model`` with SyncBatchNorm layers, named ``name`` built with ``kwargs`` (what its
    checkpoints record)."""
    if world_size == 1:
        raise MobilenetsError("--sync-bn only applies to distributed runs (--nproc-per-node > 1)")
    if device.type != "cuda":
        raise MobilenetsError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs "
                              "only); on CPUs leave it off")
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    synced.model_name, synced.model_kwargs = name, dict(kwargs)
    return synced


def sum_over_ranks(sums: torch.Tensor, device: torch.device, world_size: int) -> torch.Tensor:
    """``sums`` added up over all processes (``sums`` itself in one)."""
    if world_size > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    return sums


def any_rank(flag: bool, device: torch.device, world_size: int) -> bool:
    """Whether ``flag`` is set on any process: one all-reduce, so all ranks act alike."""
    if world_size > 1:
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t)
        flag = bool(t.item())
    return flag
