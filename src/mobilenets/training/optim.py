"""The optimizer, the learning-rate schedule and the weight average (EMA) of a run."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from .config import TrainConfig
from .freeze import param_groups


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD/AdamW use PyTorch's fused kernels (one pass over all parameters, CPU and CUDA);
    RMSProp, which has none, the multi-tensor ``foreach`` path."""
    # Parameters that only the head-only phase freezes are in the optimizer from the start
    # (without gradients they are not stepped), so that its state has one shape all run.
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, include_frozen=bool(cfg.head_epochs))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=True)
    if cfg.optimizer == "rmsprop":
        # TF's RMSProp adds epsilon inside the square root; PyTorch outside. eps = sqrt(1e-3)
        # is the usual translation of TF-slim's epsilon.
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, momentum=cfg.momentum,
                                   eps=0.0316, foreach=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at global ``step``: during a head-only phase
    (``head_epochs``) the constant ``head_lr / lr``; then linear warm-up and the schedule,
    over the epochs after that phase. A run whose backbone is frozen throughout
    (``--linear-probe``) trains its head at ``head_lr`` on the schedule."""
    head = cfg.head_epochs or 0
    head_scale = (cfg.head_lr or cfg.lr) / cfg.lr
    if step < head * steps_per_epoch:
        return head_scale
    scale = head_scale if cfg.freeze == "backbone" else 1.0
    return scale * _schedule(cfg, step - head * steps_per_epoch, steps_per_epoch, cfg.epochs - head)


def _schedule(cfg: TrainConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Warm-up, then cosine or step decay, over ``epochs`` epochs."""
    epoch = step / steps_per_epoch
    warm = cfg.warmup or 0.0
    if warm > 0 and epoch < warm:  # capped: a fractional warm-up must not overshoot the peak
        return min(1.0, (step + 1) / (warm * steps_per_epoch))
    if cfg.schedule == "cosine":
        total = epochs - warm
        progress = min(1.0, (epoch - warm) / total) if total > 0 else 1.0
        return 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.gamma ** math.floor((epoch - warm) / cfg.step_epochs)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                   start: int = 0) -> LambdaLR:
    """The schedule, stepped once per optimizer step, positioned at global step ``start``.

    A :class:`LambdaLR` over :func:`lr_factor` rather than ``SequentialLR(LinearLR,
    CosineAnnealingLR)`` or ``StepLR``: those update the rate multiplicatively step by step
    (so their floats drift from the closed form the runs so far were trained with), cannot
    cap a fractional warm-up, and decay at whole steps where the step schedule decays at
    fractional epochs (``--step-epochs 2.4``). The lambda reads ``cfg`` when called, so a run
    resumed with another ``--epochs`` gets its cosine of the new length.

    The scheduler's state is its step counter: a resumed run builds it at the checkpoint's
    epoch and step (``start``), which recomputes the rate there under the resumed
    configuration, exactly as an uninterrupted run had it."""
    for group in optimizer.param_groups:
        # LambdaLR's base rate (needed to start past step 0), scaled per layer (--layer-decay)
        group["initial_lr"] = cfg.lr * group.get("lr_scale", 1.0)

    def factor(step: int) -> float:
        return lr_factor(cfg, step, steps_per_epoch)

    return LambdaLR(optimizer, factor, last_epoch=start - 1)


def ema_avg_fn(decay: float) -> Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], Any], None]:
    """EMA update with timm-style warm-up: early steps average faster, (1+n)/(10+n)."""
    def fn(ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], num_averaged: Any) -> None:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:  # AveragedModel calls this once per dtype group
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1 - d)
        for e, p in zip(ema_params, params):
            if not e.is_floating_point():  # BN's num_batches_tracked
                e.copy_(p)
    return fn


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An averaged copy of ``model`` (weights and BN statistics), or None without ``decay``."""
    return AveragedModel(model, multi_avg_fn=ema_avg_fn(decay), use_buffers=True) if decay else None


def step_schedule(scheduler: LambdaLR, may_skip: bool) -> None:
    """Move the schedule on by one step. ``may_skip``: fp16's loss scaler skips the optimizer
    on a step whose gradients overflowed; the schedule moves on all the same (it counts
    steps, as the rate did before it was a scheduler), which torch would warn about."""
    if not may_skip:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`", category=UserWarning)
        scheduler.step()
