"""Precise BatchNorm (as pycls and Detectron2 do it): before a model is validated or
saved, its BatchNorm running statistics are recomputed with its current weights.

A short run at a high learning rate moves the weights faster than the running averages
(momentum 0.1, or V3's 0.01) follow: in eval mode such a network normalizes with
statistics of weights it no longer has, and can score at chance while training accuracy
is high. Averaging each layer's batch statistics over a bounded number of training
batches (cumulative average: ``momentum=None``) gives the statistics of the final weights."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..data.augment import normalize
from ..data.datasets import mix_seed
from .batches import iterate

#: Training batches whose statistics are averaged (pycls uses 200 images × batch; 32 of
#: the run's batches, forward only, cost a small share of an epoch of Fashion-MNIST's
#: training time: benchmarks/precise_bn.py, docs/training.md).
PRECISE_BN_BATCHES = 32


def _trainable_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that track statistics and train (frozen ones keep theirs)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and (m.weight is None or m.weight.requires_grad)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], world_size: int = 1) -> int:
    """Replace the running statistics of ``model``'s trainable BatchNorm layers by their
    average over ``batches`` (inputs as the network sees them in evaluation) and return the
    number of batches used (0: nothing changed). Across processes the averages are averaged."""
    bns = _trainable_batchnorms(model)
    if not bns:
        return 0
    was_training = model.training
    model.eval()  # dropout off; only the layers being measured see batch statistics
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    if world_size > 1:
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world_size)
    return seen


def bn_batches(dataset: Any, preprocessing: dict[str, Any], cfg: Any, epoch: int, rank: int,
               world_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """This rank's share of the first :data:`PRECISE_BN_BATCHES` batches of a permutation
    seeded by (seed, epoch) (the same on resume), as evaluation sees them: no crop, flip or
    erasing; normalized; in the run's memory layout."""
    micro = max(1, cfg.batch_size // world_size)
    g = torch.Generator().manual_seed(mix_seed(cfg.seed, 0xB17, epoch))
    idx = torch.randperm(len(dataset), generator=g)[rank::world_size][:micro * PRECISE_BN_BATCHES]
    if hasattr(dataset, "set_epoch"):  # image folders: centre crops, not the training crops
        dataset.set_epoch(epoch, False)
    for images, _ in iterate(dataset, idx, micro, cfg.workers):
        x = normalize(images, preprocessing["mean"], preprocessing["std"])
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x.to(device)


def precise_bn_for_run(trainer: Any) -> None:
    """Before a :class:`.Trainer` validates (and so saves): recompute the BatchNorm
    statistics of its model, and of its EMA copy, unless ``--no-precise-bn``."""
    cfg = trainer.cfg
    if not cfg.precise_bn or cfg.qat:  # QAT keeps the statistics the int8 export folds in
        return
    for model in [trainer.model] + ([trainer.ema.module] if trainer.ema is not None else []):
        batches = bn_batches(trainer.train_set, trainer.preprocessing, cfg, trainer.epoch, trainer.rank,
                             trainer.world_size, trainer.device)
        recompute_bn_stats(model, batches, trainer.world_size)
