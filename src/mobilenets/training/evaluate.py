"""Scoring a model on a dataset: top-1/top-5, loss, per-class accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.augment import normalize
from ..data.preprocessing import Preprocessing
from ..errors import MobilenetsError
from .batches import iterate
from .precision import autocast_dtype


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    per_class: list[float | None]
    confusion: list[list[int]]
    classes: list[str]
    count: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, preprocessing: Preprocessing | dict[str, Any], batch_size: int = 512,
             channels_last: bool = True, precision: str = "fp32", workers: int = 0,
             rank: int = 0, world_size: int = 1, device: torch.device | None = None,
             tta: bool = False) -> EvalResult:
    """Top-1/top-5 accuracy, loss, per-class accuracy and confusion matrix on ``dataset``.

    With ``world_size > 1`` each rank evaluates its shard and the sums are all-reduced, so
    every rank gets the metrics of the whole dataset. ``tta`` (test-time augmentation)
    scores each image by the mean of its logits and its horizontal mirror's: twice the
    cost, and only sound for models trained with horizontal flips (as every recipe here
    is); training itself always evaluates without it.
    """
    # Only the normalization matters here (the dataset already has the input size): a dict
    # with just ``mean`` and ``std`` is enough.
    mean, std = ((preprocessing.mean, preprocessing.std) if isinstance(preprocessing, Preprocessing)
                 else (preprocessing["mean"], preprocessing["std"]))
    model.eval()
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    amp = autocast_dtype(precision)
    classes = list(dataset.classes)
    k = len(classes)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    top5 = torch.zeros((), dtype=torch.int64)
    for images, labels in iterate(dataset, torch.arange(rank, len(dataset), world_size), batch_size, workers):
        x = normalize(images, mean, std).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = model(x)
            if tta:
                logits = (logits + model(x.flip(-1))) / 2
        logits = logits.float().cpu()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        confusion += torch.bincount(labels * k + logits.argmax(1), minlength=k * k).view(k, k)
        top5 += (logits.topk(min(5, k), dim=1).indices == labels[:, None]).any(1).sum()
    if world_size > 1:
        confusion, loss_sum, top5 = _all_reduce(confusion, loss_sum, top5, device)
    return _result(confusion, loss_sum, top5, classes)


def _all_reduce(confusion: torch.Tensor, loss_sum: torch.Tensor, top5: torch.Tensor,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sums over all ranks, in one collective."""
    k = confusion.shape[0]
    sums = torch.cat([confusion.view(-1).double(), loss_sum.view(1), top5.view(1).double()]).to(device)
    dist.all_reduce(sums)
    sums = sums.cpu()
    return sums[:k * k].round().long().view(k, k), sums[k * k], sums[k * k + 1].round().long()


def _result(confusion: torch.Tensor, loss_sum: torch.Tensor, top5: torch.Tensor,
            classes: list[str]) -> EvalResult:
    total = int(confusion.sum())
    if total == 0:
        raise MobilenetsError("the evaluation set is empty")
    counts = confusion.sum(1)
    per_class = [float(c) / int(n) if n else None  # a class absent from the data has no accuracy
                 for c, n in zip(confusion.diag().tolist(), counts.tolist())]
    return EvalResult(loss=float(loss_sum) / total, top1=float(confusion.diag().sum()) / total,
                      top5=float(top5) / total, per_class=per_class, confusion=confusion.tolist(),
                      classes=classes, count=total)
