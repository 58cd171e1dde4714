"""Training and evaluation: the engine behind ``mobilenets train`` and ``mobilenets eval``.

One run lives in one directory (``--out``):

* ``config.json``: the resolved configuration (recipe defaults + what was given);
* ``metrics.jsonl`` and ``metrics.csv``: one line per epoch; ``curves.png``: loss/accuracy;
* ``last.safetensors``: model weights + everything needed to resume exactly (optimizer,
  scheduler, EMA, epoch and step) under ``train/...`` keys, written atomically after every
  epoch and on Ctrl-C/SIGTERM; ``best.safetensors``: the best weights by validation
  accuracy (EMA weights when they are better). Both load with
  :func:`mobilenets.io.checkpoint.load_model`.

Exact resume: the data order of an epoch, every augmentation and every dropout mask are
drawn from generators seeded by ``(seed, epoch, step)``, so a resumed run replays the
uninterrupted one step for step.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..data.augment import channel_stats, normalize, random_crop_flip, random_erasing
from ..io.checkpoint import (atomic_write_bytes, check_model_kwargs, load_state, model_meta, model_weights,
                         read_checkpoint, state_to_bytes)
from ..models.conventions import IMAGENET_MEAN, IMAGENET_STD
from ..ops.cpu import bf16_supported, keep_freed_memory
from ..data.datasets import (DEFAULT_VAL_FRACTION, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, TensorImages,
                   holdout_split, load_dataset, splits_from_train)
from ..data.datasets import mix_seed as _seed
from ..errors import MobilenetsError, did_you_mean
from ..training.qat import calibrate, load_range_state, prepare_qat, range_state
from ..models.registry import create_model, model_options

# --------------------------------------------------------------------------- recipes

#: The papers' recipes (SPEC §2.1, §3.1, §3.8) and a tuned one for small images. A recipe
#: fills every setting the user did not give. Learning rates are for the stated batch size
#: and scale linearly with it (Goyal et al. 2017), as for all recipes here.
RECIPES: dict[str, dict[str, Any]] = {
    # Fashion-MNIST/CIFAR-sized images on a CPU: SGD+Nesterov, cosine, short warm-up,
    # label smoothing, pad-crop + flip + random erasing. BatchNorm momentum 0.1 (PyTorch's
    # default) instead of V3's 0.01: a run of a few hundred steps per epoch needs running
    # statistics that keep up, or early validation collapses to one class.
    "small-images": dict(optimizer="sgd", lr=0.2, batch_size=256, schedule="cosine", warmup=1.0,
                         weight_decay=5e-5, label_smoothing=0.1, ema=None, epochs=10,
                         crop_padding=2, flip=True, erasing=0.25, bn_momentum=0.1),
    # MobileNetV2 §6.1: RMSProp decay 0.9 / momentum 0.9, lr 0.045 decayed 0.98 per epoch,
    # weight decay 4e-5, batch 96.
    "v2-paper": dict(optimizer="rmsprop", lr=0.045, batch_size=96, schedule="step",
                     step_epochs=1.0, gamma=0.98, warmup=0.0, weight_decay=4e-5,
                     label_smoothing=0.0, ema=None, epochs=300),
    # MobileNetV3 §6.1 / TF-slim: RMSProp momentum 0.9, lr 0.1 at batch 4096 (scaled to
    # the batch), decay 0.99 every 3 epochs, 5 warm-up epochs, wd 1e-5, label smoothing
    # 0.1, EMA 0.9999, dropout 0.2.
    "v3-paper": dict(optimizer="rmsprop", lr=0.1 * 192 / 4096, batch_size=192, schedule="step",
                     step_epochs=3.0, gamma=0.99, warmup=5.0, weight_decay=1e-5,
                     label_smoothing=0.1, ema=0.9999, epochs=600),
}


#: Quantization-aware fine-tuning starts from a trained model: a short schedule at a small
#: fraction of the recipe's peak learning rate, no warm-up (the weights are already good),
#: no EMA. Values the user gives still win.
QAT_LR_FRACTION = 0.02


def qat_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    return {"epochs": 1, "lr": recipe["lr"] * QAT_LR_FRACTION, "warmup": 0.0, "ema": None}


#: Images whose float activations set the int8 ranges before QAT starts (the same number
#: ``mobilenets export --int8`` calibrates on by default).
QAT_CALIBRATION_IMAGES = 256


@dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` means "take it from the recipe"."""

    model: str | None = None  # None: mobilenet_v3_small, or the ``init`` checkpoint's model
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "fashion-mnist"
    out: str = "runs/train"
    recipe: str = "small-images"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None  # sgd | rmsprop | adamw
    momentum: float = 0.9
    schedule: str | None = None  # cosine | step
    step_epochs: float | None = None
    gamma: float | None = None
    warmup: float | None = None  # epochs of linear warm-up
    weight_decay: float | None = None
    label_smoothing: float | None = None
    ema: float | None = None  # EMA decay, e.g. 0.999; 0 disables
    crop_padding: int | None = None
    flip: bool | None = None
    erasing: float | None = None
    no_aug_epochs: int = 0  # the last N epochs: no crop or erasing, images as evaluation sees them
    image_size: int | None = None
    val_fraction: float | None = None  # hold out this much of train for validation
    workers: int = 2
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (CUDA)
    device: str = "auto"  # auto | cpu | cuda
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimizer step
    sync_bn: bool = False  # SyncBatchNorm across processes (distributed runs)
    strict: bool = False  # image folders: unreadable files are an error instead of skipped
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward/backward (Inductor)
    reuse_memory: bool = True  # CPU: glibc malloc keeps freed memory (see cpu.keep_freed_memory)
    resume: bool = False
    max_steps: int | None = None  # stop each epoch after this many steps (smoke tests)
    stop_after_epoch: int | None = None  # stop resumably after this epoch (job time limits)
    init: str | None = None  # start from this checkpoint's weights; its model and options win
    qat: bool = False  # quantization-aware fine-tuning of ``init`` (see mobilenets.training.qat)
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise

    def resolved(self) -> "TrainConfig":
        if self.recipe not in RECIPES:
            raise MobilenetsError(f"unknown recipe {self.recipe!r}{did_you_mean(self.recipe, RECIPES)}; "
                                  f"recipes: {', '.join(RECIPES)}")
        base = dict(step_epochs=1.0, gamma=0.97, crop_padding=0, flip=True, erasing=0.0)
        base.update(RECIPES[self.recipe])
        if self.qat:
            base.update(qat_defaults(base))
        bn_momentum = base.pop("bn_momentum", None)  # a model option, given way to the user's
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["model"] = values["model"] or "mobilenet_v3_small"
        if bn_momentum is not None:
            values["model_kwargs"] = {"bn_momentum": bn_momentum, **values["model_kwargs"]}
        for k, v in base.items():
            if values.get(k) is None:
                values[k] = v
        if values["ema"] == 0:  # given as 0: off, even where the recipe averages
            values["ema"] = None
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.optimizer in ("sgd", "rmsprop", "adamw"), f"optimizer must be sgd, rmsprop or adamw, got {self.optimizer!r}"),
            (self.schedule in ("cosine", "step"), f"schedule must be cosine or step, got {self.schedule!r}"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.accum_steps >= 1, f"accumulation steps must be >= 1, got {self.accum_steps}"),
            (self.epochs is not None and self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size is not None and self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr is not None and self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (0 <= (self.label_smoothing or 0) < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.ema is None or 0 <= self.ema < 1, f"EMA decay must be in [0, 1), got {self.ema}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.image_size is None or MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE,
             f"image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] px, got {self.image_size}"),
            (self.val_fraction is None or 0 < self.val_fraction < 1,
             f"validation fraction must be in (0, 1), got {self.val_fraction} (leave --val-fraction "
             "out to validate on the dataset's own split)"),
            (0 <= self.seed < 2 ** 63, f"seed must be in [0, 2**63), got {self.seed}"),
            (self.max_steps is None or self.max_steps >= 1, f"max steps must be >= 1, got {self.max_steps}"),
            (self.stop_after_epoch is None or self.stop_after_epoch >= 1,
             f"stop after epoch must be >= 1, got {self.stop_after_epoch}"),
            ((self.warmup or 0) >= 0, f"warm-up must be >= 0 epochs, got {self.warmup}"),
            (not self.qat or bool(self.init), "--qat fine-tunes a trained float model: give its "
                                              "checkpoint with --init CHECKPOINT"),
            (not (self.qat and self.ema), "--qat does not combine with --ema (the averaged copy "
                                          "would not see the int8 rounding); leave --ema off"),
            ((self.weight_decay or 0) >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (0 <= (self.erasing or 0) <= 1, f"random-erasing probability must be in [0, 1], got {self.erasing}"),
            (0 <= self.no_aug_epochs <= (self.epochs or 0),
             f"no-augmentation epochs must be in [0, epochs = {self.epochs}], got {self.no_aug_epochs}"),
        ]
        for name in ("lr", "weight_decay", "warmup", "label_smoothing", "ema", "erasing", "val_fraction",
                     "momentum", "gamma", "step_epochs"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise MobilenetsError(f"{name.replace('_', ' ')} must be a finite number, got {value}")
        for ok, message in checks:
            if not ok:
                raise MobilenetsError(message)


#: Model options that may differ from an ``--init`` checkpoint's: they change training, not
#: the weights' shapes or meaning.
INIT_FREE_OPTIONS = frozenset({"dropout"})


def preflight(config: TrainConfig) -> None:
    """The checks that need no data loaded, run before torchrun starts the workers, so that
    a mistake in the options is reported once instead of once per process."""
    from ..data.datasets import resolve_data_dir

    if config.resume:
        Trainer._read_saved_config_in(Path(config.out))
        return
    if config.init:
        config = Trainer._from_init(config, read_checkpoint(config.init)[1])
    model_options(config.resolved().model)  # an unknown model name is an error here
    resolve_data_dir(config.data)
    if config.compile:
        check_compiler()


def check_compiler() -> None:
    """``--compile`` needs a system compiler: Inductor builds C++ kernels on the CPU (and
    Triton its launchers on GPUs). Without one, torch fails at the first step with a long
    traceback; say so up front, on every device, as the torchrun launcher's preflight does."""
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        raise MobilenetsError("--compile needs a C++ compiler (torch.compile builds C++ kernels "
                              "on the CPU): install g++ or leave --compile off")


@dataclass
class TrainResult:
    run_dir: Path
    final_acc: float  # validation top-1 of the last epoch (EMA weights if enabled and better)
    best_acc: float
    epochs_done: int
    history: list[dict[str, Any]]
    seconds: float
    precision: str = "fp32"  # what ran: fp32, bf16 or fp16


class TrainingInterrupted(MobilenetsError):
    """Ctrl-C or SIGTERM: a resumable checkpoint was saved."""


# --------------------------------------------------------------------------- helpers

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
    kept in fp32, see ``ConvNormAct``) measured ×1.1 (V3-Small) to ×1.7 (V2) faster than
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


#: ``auto`` precision on a CPU with native bf16 times this many training steps in each
#: precision (after one warm-up step each, alternating) before it picks one.
PRECISION_TRIAL_STEPS = 3
#: bf16 must make the step at least this much faster to be chosen: fp32 does not round.
BF16_MIN_SPEEDUP = 1.05


def time_precisions(model: nn.Module, batch_shape: tuple[int, ...], num_classes: int,
                    channels_last: bool, steps: int = PRECISION_TRIAL_STEPS) -> dict[str, float]:
    """Median seconds of one training step's forward, loss and backward in fp32 and under
    bf16 autocast, on a copy of ``model`` and a random batch of ``batch_shape``.

    Native bf16 does not make every network faster: V3's depthwise convolutions stay in fp32
    (``ConvNormAct``) and each bf16 pointwise layer adds casts, so whether the rest gains
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on convolution and linear weights only, not on BN parameters or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD/AdamW use PyTorch's fused kernels (one pass over all parameters, CPU and CUDA);
    RMSProp, which has none, the multi-tensor ``foreach`` path."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=True)
    if cfg.optimizer == "rmsprop":
        # TF's RMSProp adds epsilon inside the square root; PyTorch outside. eps = sqrt(1e-3)
        # is the usual translation of TF-slim's epsilon.
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, momentum=cfg.momentum,
                                   eps=0.0316, foreach=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at global ``step`` (linear warm-up, then the schedule)."""
    epoch = step / steps_per_epoch
    warm = cfg.warmup or 0.0
    if warm > 0 and epoch < warm:  # capped: a fractional warm-up must not overshoot the peak
        return min(1.0, (step + 1) / (warm * steps_per_epoch))
    if cfg.schedule == "cosine":
        total = cfg.epochs - warm
        progress = min(1.0, (epoch - warm) / total) if total > 0 else 1.0
        return 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.gamma ** math.floor((epoch - warm) / cfg.step_epochs)


def _epochs_done(meta: dict[str, Any]) -> int:
    """The epochs a checkpoint's metadata says were trained (0 when it does not say: the
    resume itself then reports what is missing)."""
    state = meta.get("train_state")
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return epoch if isinstance(epoch, int) else 0


def _ema_avg_fn(decay: float):
    """EMA update with timm-style warm-up: early steps average faster, (1+n)/(10+n)."""
    def fn(ema_params, params, num_averaged):
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:  # AveragedModel calls this once per dtype group
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1 - d)
        for e, p in zip(ema_params, params):
            if not e.is_floating_point():  # BN's num_batches_tracked
                e.copy_(p)
    return fn


# --------------------------------------------------------------------------- evaluation

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
def evaluate(model: nn.Module, dataset, preprocessing: dict[str, Any], batch_size: int = 512,
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
    model.eval()
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    classes = list(dataset.classes)
    k = len(classes)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    top5 = torch.zeros((), dtype=torch.int64)
    n = len(dataset)
    idx = torch.arange(rank, n, world_size)
    for images, labels in _iterate(dataset, idx, batch_size, workers):
        x = normalize(images, preprocessing["mean"], preprocessing["std"]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = model(x)
            if tta:
                logits = (logits + model(x.flip(-1))) / 2
        logits = logits.float().cpu()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        pred = logits.argmax(1)
        confusion += torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
        topk = logits.topk(min(5, k), dim=1).indices
        top5 += (topk == labels[:, None]).any(1).sum()
    if world_size > 1:
        sums = torch.cat([confusion.view(-1).double(), loss_sum.view(1), top5.view(1).double()]).to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
        confusion = sums[:k * k].round().long().view(k, k)
        loss_sum, top5 = sums[k * k], sums[k * k + 1].round().long()
    total = int(confusion.sum())
    if total == 0:
        raise MobilenetsError("the evaluation set is empty")
    counts = confusion.sum(1)
    per_class = [float(c) / int(n) if n else None  # a class absent from the data has no accuracy
                 for c, n in zip(confusion.diag().tolist(), counts.tolist())]
    return EvalResult(loss=float(loss_sum) / total, top1=float(confusion.diag().sum()) / total,
                      top5=float(top5) / total, per_class=per_class, confusion=confusion.tolist(),
                      classes=classes, count=total)


def _iterate(dataset, idx: torch.Tensor, batch_size: int, workers: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of ``dataset[idx]``."""
    return _iterate_lists(dataset, [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)], workers)


def _ignore_stop_signals(worker_id: int) -> None:
    """In DataLoader workers: Ctrl-C (sent to the whole process group) or a group-wide
    SIGTERM must not kill them mid-batch; the main process stops on a step boundary and
    then shuts them down itself (and they exit by themselves if it dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _iterate_lists(dataset, batches: list[torch.Tensor], workers: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One batch per index tensor: direct tensor indexing for in-memory data, a DataLoader
    with ``workers`` processes decoding ahead otherwise."""
    if isinstance(dataset, TensorImages):
        for idx in batches:
            yield dataset.batch(idx)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                        worker_init_fn=_ignore_stop_signals if workers else None)
    try:
        for images, labels in loader:
            yield images, torch.as_tensor(labels, dtype=torch.int64)
    except MobilenetsError as e:
        # A worker's error arrives as "Caught MobilenetsError in DataLoader worker ...
        # Original Traceback ...": keep the worker's own one-line message for the CLI.
        text = str(e)
        if text.startswith("Caught ") and "MobilenetsError: " in text:
            # torch's re-raise leaves a reference cycle from its frames to the loader; dropping
            # the traceback frees the loader now, so its workers stop at once instead of at a
            # later garbage collection (which waits 5 s for them).
            e.__traceback__ = None
            raise MobilenetsError(text.rsplit("MobilenetsError: ", 1)[1].strip()) from None
        raise


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Trains one model on one dataset, writing the run directory described above."""

    def __init__(self, config: TrainConfig, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.run_dir = Path(config.out)
        if config.resume:
            saved, saved_world = self._read_saved_config()
            # The saved run defines everything; only the epoch budget (and, given again, the
            # steps per epoch) may change, and stop_after_epoch/progress/workers/compile/
            # reuse_memory describe this invocation.
            overrides = {k: getattr(config, k) for k in ("stop_after_epoch", "progress", "workers", "compile",
                                                       "reuse_memory")}
            for k in ("epochs", "max_steps"):
                if getattr(config, k) is not None:
                    overrides[k] = getattr(config, k)
            # At another world size, keep the number of micro-batches per step (processes ×
            # accumulation) so every step sees the same micro-batches as before.
            shards = saved_world * saved.accum_steps
            if world_size != saved_world and shards % world_size == 0:
                overrides["accum_steps"] = shards // world_size
            # The saved configuration is resolved (the recipe filled in), so a value given
            # now counts as different only where it is not the default and not the saved one.
            defaults = asdict(TrainConfig())
            given = asdict(config)
            given["model_kwargs"] = {**saved.model_kwargs, **config.model_kwargs}
            if given["ema"] == 0:  # "off", as the saved None says
                given["ema"] = None
            ignored = [f"{k}={v!r} (the run has {getattr(saved, k)!r})" for k, v in given.items()
                       if k not in overrides and k not in ("out", "resume")
                       and v != defaults[k] and v != getattr(saved, k)]
            if ignored and self.is_main:
                warnings.warn("--resume continues the saved run as it was configured; ignored: "
                              + ", ".join(ignored), stacklevel=2)
            config = replace(saved, resume=True, **overrides)
        init = None
        if config.init and not config.resume:
            from ..deploy.export import EXTENSIONS

            if Path(config.init).suffix in EXTENSIONS.values():
                raise MobilenetsError(f"{config.init} is an exported model; --init takes the .safetensors "
                                      "checkpoint it was exported from")
            init = read_checkpoint(config.init)
            config = self._from_init(config, init[1])
        self.cfg = config.resolved()
        cfg = self.cfg
        self.device = resolve_device(cfg.device, rank)
        if cfg.reuse_memory and self.device.type == "cpu":
            keep_freed_memory()
        # QAT rounds to the int8 grid in fp32; bf16 activations would blur that grid.
        self.precision = resolve_precision("fp32" if cfg.qat and cfg.precision == "auto" else cfg.precision,
                                           self.device)

        folder_kwargs: dict[str, Any] = {"seed": cfg.seed, "strict": cfg.strict}  # only image folders use these
        # Images are converted to the channels of the model being continued (an RGB
        # checkpoint fine-tunes on a grayscale folder, as `eval` would score it).
        last = read_checkpoint(self.run_dir / "last.safetensors") if cfg.resume else None
        continued = init if init is not None else (last if cfg.init else None)
        pinned = (continued[1] if continued else {}).get("preprocessing")
        if isinstance(pinned, dict) and isinstance(pinned.get("channels"), int):
            folder_kwargs["channels"] = pinned["channels"]
        # A folder without train/ and val/ is split by the loader, per class, with --val-fraction.
        vf = cfg.val_fraction if cfg.val_fraction is not None else DEFAULT_VAL_FRACTION
        self.holdout = ({"seed": cfg.seed, "val_fraction": vf}
                        if splits_from_train(cfg.data) else None)
        if self.holdout:
            folder_kwargs.update(self.holdout)
        self.train_set = load_dataset(cfg.data, "train", image_size=cfg.image_size, **folder_kwargs)
        if cfg.val_fraction is not None and not self.holdout:
            self.train_set, self.val_set = holdout_split(self.train_set, cfg.val_fraction, cfg.seed)
            self.holdout = {"seed": cfg.seed, "val_fraction": cfg.val_fraction}
        else:
            self.val_set = load_dataset(cfg.data, "val", image_size=self.train_set.image_size,
                                        **{**folder_kwargs, "channels": self.train_set.channels})
        if init is not None and isinstance(init[1].get("holdout"), dict) and init[1]["holdout"] != self.holdout \
                and self.is_main:
            held = init[1]["holdout"]
            warnings.warn(f"{cfg.init} held out {held['val_fraction']:g} of the training data (seed "
                          f"{held['seed']}) for validation, and this run splits differently, so it may "
                          f"train on those images; --val-fraction {held['val_fraction']:g} --seed "
                          f"{held['seed']} keeps the split", stacklevel=2)
        if list(self.val_set.classes) != list(self.train_set.classes):
            raise MobilenetsError(f"{cfg.data}: validation classes differ from training classes")
        self.classes = list(self.train_set.classes)
        self.channels = self.train_set.channels
        self.image_size = self.train_set.image_size
        self.small = isinstance(self.train_set, TensorImages) and self.train_set.kind == "small"
        self.preprocessing = self._preprocessing()
        if init is not None:
            self._check_init(init[1])

        kwargs = dict(cfg.model_kwargs)
        kwargs.setdefault("num_classes", len(self.classes))
        kwargs.setdefault("in_chans", self.channels)
        if "small_input" in model_options(cfg.model) and not cfg.init:  # --init: the checkpoint's stem
            kwargs.setdefault("small_input", self.image_size <= 64)
        if kwargs["num_classes"] != len(self.classes) or kwargs["in_chans"] != self.channels:
            raise MobilenetsError(f"the data has {len(self.classes)} classes and {self.channels} "
                                  f"channels; the model options say {kwargs['num_classes']} and "
                                  f"{kwargs['in_chans']}")
        self.model_kwargs = kwargs
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, **kwargs)
        if init is not None and not cfg.resume:
            load_state(self.model, model_weights(init[0]), source=cfg.init)
        if cfg.sync_bn:
            if world_size == 1:
                raise MobilenetsError("--sync-bn only applies to distributed runs (--nproc-per-node > 1)")
            if self.device.type != "cuda":
                raise MobilenetsError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs "
                                      "only); on CPUs leave it off")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model.model_name, self.model.model_kwargs = cfg.model, dict(kwargs)
        if cfg.qat:
            prepare_qat(self.model)
        self.model = self.model.to(self.device)
        if cfg.qat and not cfg.resume:
            self._calibrate()
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        #: Seconds per step of each precision when ``auto`` timed them (:func:`time_precisions`).
        self.precision_trial: dict[str, float] | None = None
        if self.device.type == "cpu" and cfg.precision == "auto" and self.precision == "bf16" \
                and not (last is not None and _epochs_done(last[1]) >= cfg.epochs):
            self._choose_cpu_precision()
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # fp16 needs loss scaling against underflow; bf16 and fp32 do not (scaler disabled).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ddp_model: nn.Module = self.model
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # The training step's forward (and so its backward) compiled once for the fixed batch
        # shape; evaluation runs the eager model, which shares the parameters.
        self.train_forward: nn.Module = self.ddp_model
        if cfg.compile:
            check_compiler()
            self.train_forward = torch.compile(self.ddp_model, dynamic=False)
        self.optimizer = make_optimizer(cfg, self.model)
        self.ema = (AveragedModel(self.model, multi_avg_fn=_ema_avg_fn(cfg.ema), use_buffers=True)
                    if cfg.ema else None)
        shards = world_size * cfg.accum_steps
        if cfg.batch_size % shards:
            raise MobilenetsError(f"batch size {cfg.batch_size} must divide evenly into {world_size} "
                                  f"process(es) × {cfg.accum_steps} accumulation step(s)")
        if len(self.train_set) < cfg.batch_size:
            raise MobilenetsError(f"the training set has {len(self.train_set)} images, fewer than one "
                                  f"batch of {cfg.batch_size}; lower --batch-size")
        self.global_batch = cfg.batch_size
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        if cfg.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps)
        self.epoch, self.step_in_epoch = 0, 0
        # Sums of the epoch so far (global over ranks) when stopped mid-epoch, so that the
        # resumed epoch reports the same train loss/accuracy as an uninterrupted one.
        self._partial: dict[str, float] | None = None
        self._interrupted = lambda: False  # set by fit() while its signal handlers are in place
        self.history: list[dict[str, Any]] = []
        self.best_acc = -1.0
        if cfg.resume:
            self._load_state(*last)

    # ---- setup helpers
    def _choose_cpu_precision(self) -> None:
        """``auto`` on a CPU with native bf16: the faster of fp32 and bf16 for this model at
        this micro-batch and input size, every process taking the first one's choice."""
        micro = max(1, self.cfg.batch_size // (self.world_size * self.cfg.accum_steps))
        shape = (micro, self.channels, self.image_size, self.image_size)
        self._log(f"precision auto: timing {PRECISION_TRIAL_STEPS} training steps in fp32 and in bf16 "
                  "(--precision fp32|bf16 skips this)")
        times = time_precisions(self.model, shape, len(self.classes), self.cfg.channels_last)
        choice = [faster_precision(times)]
        if self.world_size > 1:
            dist.broadcast_object_list(choice, src=0)
        self.precision, self.precision_trial = choice[0], times

    @staticmethod
    def _from_init(config: TrainConfig, meta: dict[str, Any]) -> TrainConfig:
        """The configuration with the model and options of the ``init`` checkpoint."""
        name, kwargs = meta.get("model"), meta.get("model_kwargs", {})
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise MobilenetsError(f"{config.init}: the metadata names no model to start from")
        check_model_kwargs(name, kwargs, config.init)
        if config.model is not None and config.model != name:
            raise MobilenetsError(f"model {config.model} was asked for but {config.init} holds {name}; "
                                  "leave the model out with --init")
        options = model_options(name)
        clashes = [f"{k}={v!r} (it has {kwargs.get(k, options[k].default)!r})"
                   for k, v in config.model_kwargs.items()
                   if k in options and k not in INIT_FREE_OPTIONS and v != kwargs.get(k, options[k].default)]
        if clashes:
            raise MobilenetsError(f"--init takes the model and its options from {config.init}, and these "
                                  f"differ from it: {', '.join(clashes)}; leave them out")
        # The checkpoint's input size unless another is asked for: its weights (and a QAT
        # model's int8 ranges) were made at that size.
        pre = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
        size = config.image_size if config.image_size is not None else pre.get("input_size")
        return replace(config, model=name, model_kwargs={**config.model_kwargs, **kwargs}, image_size=size)

    def _check_init(self, meta: dict[str, Any]) -> None:
        """The ``init`` checkpoint must fit the data; its normalization is kept (its weights
        were trained on inputs normalized that way)."""
        classes = meta.get("classes")
        if classes is not None and list(classes) != self.classes:
            shown = lambda c: ", ".join(map(str, c[:5])) + (" …" if len(c) > 5 else "")  # noqa: E731
            raise MobilenetsError(f"{self.cfg.init} was trained on classes [{shown(list(classes))}] but "
                                  f"{self.cfg.data} has [{shown(self.classes)}]")
        pre = meta.get("preprocessing")
        if isinstance(pre, dict) and "mean" in pre and "std" in pre:
            if len(pre["mean"]) != self.channels:
                raise MobilenetsError(f"{self.cfg.init} expects {len(pre['mean'])}-channel images; "
                                      f"{self.cfg.data} has {self.channels}")
            self.preprocessing = {**self.preprocessing, "mean": list(pre["mean"]), "std": list(pre["std"])}

    def _calibrate(self) -> None:
        """Start QAT from the post-training int8 model: activation ranges from the float
        network on the first images of a seeded permutation (the same on every rank)."""
        g = torch.Generator().manual_seed(_seed(self.cfg.seed, 0x0CA1))
        idx = torch.randperm(len(self.train_set), generator=g)[:QAT_CALIBRATION_IMAGES]
        batches = (normalize(images, self.preprocessing["mean"], self.preprocessing["std"]).to(self.device)
                   for images, _ in _iterate(self.train_set, idx, 64, self.cfg.workers))
        seen = calibrate(self.model, batches)
        self._log(f"quantization-aware training: int8 ranges calibrated on {seen} training images")

    def _preprocessing(self) -> dict[str, Any]:
        if isinstance(self.train_set, TensorImages):
            mean, std = channel_stats(self.train_set.images)
        elif self.channels == 3:
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        else:
            mean, std = [0.5] * self.channels, [0.5] * self.channels
        return {"input_size": self.image_size, "channels": self.channels, "mean": mean, "std": std,
                "resize": "shorter side to input_size, centre crop"}

    def _read_saved_config(self) -> tuple[TrainConfig, int]:
        return self._read_saved_config_in(self.run_dir)

    @staticmethod
    def _read_saved_config_in(run_dir: Path) -> tuple[TrainConfig, int]:
        path = run_dir / "config.json"
        if not (run_dir / "last.safetensors").is_file() or not path.is_file():
            raise MobilenetsError(f"nothing to resume in {run_dir}: no last.safetensors/config.json "
                                  "(start without --resume)")
        try:
            saved = json.loads(path.read_text())
            known = {f.name for f in fields(TrainConfig)}
            return (TrainConfig(**{k: v for k, v in saved.items() if k in known}),
                    int(saved.get("world_size", 1)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise MobilenetsError(f"{path} is corrupt: {e}") from e

    # ---- checkpoints
    def _meta(self, **extra: Any) -> dict[str, Any]:
        meta = model_meta(self.model, classes=self.classes, preprocessing=self.preprocessing,
                          epoch=self.epoch, recipe=self.cfg.recipe)
        meta["model_kwargs"] = dict(self.model_kwargs)
        if self.holdout:  # so that `eval` scores the same held-out images
            meta["holdout"] = dict(self.holdout)
        if self.cfg.qat:
            meta["qat"] = {"init": self.cfg.init, "simulates": "onnxruntime int8 (mobilenets.training.qat)"}
        meta.update(extra)
        return meta

    def _state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = dict(self.model.state_dict())
        opt = self.optimizer.state_dict()
        opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "scalars": {}}
        for pid, st in opt["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"train/opt/{pid}/{k}"] = v
                else:
                    opt_meta["scalars"][f"{pid}/{k}"] = v
        for k, v in range_state(self.model).items():
            tensors[f"train/qat/{k}"] = v
        if self.ema is not None:
            for k, v in self.ema.module.state_dict().items():
                tensors[f"train/ema/{k}"] = v
            tensors["train/ema_n_averaged"] = self.ema.n_averaged
        state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "best_acc": self.best_acc,
                 "history": self.history, "optimizer": opt_meta,
                 "epoch_partial": self._partial if self.step_in_epoch else None}
        return tensors, state

    def save_last(self) -> Path:
        tensors, state = self._state_tensors()
        path = self.run_dir / "last.safetensors"
        atomic_write_bytes(path, state_to_bytes(tensors, self._meta(train_state=state)))
        return path

    def _save_best(self, model: nn.Module, acc: float, ema: bool) -> None:
        # Called while validating epoch self.epoch + 1, before the counter moves on.
        meta = self._meta(val_acc=acc, ema=ema, epoch=self.epoch + 1)
        atomic_write_bytes(self.run_dir / "best.safetensors", state_to_bytes(model.state_dict(), meta))

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from ``last.safetensors`` (its tensors and metadata, read once in ``__init__``)."""
        state = meta.get("train_state")
        if not isinstance(state, dict):
            raise MobilenetsError(f"{self.run_dir / 'last.safetensors'} has no training state to resume")
        load_state(self.model, model_weights(tensors),
                   source=str(self.run_dir / "last.safetensors"))
        try:
            opt_meta = state["optimizer"]
            opt_state: dict[int, dict[str, Any]] = {}
            for k, v in tensors.items():
                if k.startswith("train/opt/"):
                    pid, name = k[len("train/opt/"):].split("/", 1)
                    opt_state.setdefault(int(pid), {})[name] = v
            for k, v in opt_meta["scalars"].items():
                pid, name = k.split("/", 1)
                opt_state.setdefault(int(pid), {})[name] = v
            self.optimizer.load_state_dict({"state": opt_state, "param_groups": opt_meta["param_groups"]})
            # The buffers come back contiguous; fused kernels step buffer and parameter element by
            # element in memory order, so each buffer must share its (channels_last) parameter's
            # layout, or a 3×3 stem on RGB input is updated with its neighbours' momentum.
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    buffers = self.optimizer.state.get(p, {})
                    for name, v in buffers.items():
                        if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                            buffers[name] = torch.empty_like(p).copy_(v)
            if self.cfg.qat:
                load_range_state(self.model, {k[len("train/qat/"):]: v for k, v in tensors.items()
                                              if k.startswith("train/qat/")}, source=str(self.run_dir / "last.safetensors"))
            if self.ema is not None:
                ema_sd = {k[len("train/ema/"):]: v for k, v in tensors.items() if k.startswith("train/ema/")}
                self.ema.module.load_state_dict(ema_sd)
                self.ema.n_averaged.copy_(tensors["train/ema_n_averaged"])
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            # The run's normalization, not one recomputed from the data: an --init run keeps
            # its starting checkpoint's, which the data's statistics need not equal.
            pre = meta.get("preprocessing")
            if isinstance(pre, dict) and "mean" in pre and "std" in pre:
                self.preprocessing = {**self.preprocessing, "mean": [float(v) for v in pre["mean"]],
                                      "std": [float(v) for v in pre["std"]]}
            self.best_acc = float(state["best_acc"])
            self.history = list(state["history"])
            partial = state.get("epoch_partial")
            self._partial = {k: float(partial[k]) for k in ("loss_sum", "correct", "seen", "seconds")} \
                if partial else None
        except MobilenetsError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
            raise MobilenetsError(f"{self.run_dir / 'last.safetensors'}: the training state is corrupt or "
                                  f"from another configuration ({type(e).__name__}: {e}); start a new "
                                  "run without --resume") from e

    # ---- the loop
    def _augment(self, images: torch.Tensor, g: torch.Generator, augment: bool) -> torch.Tensor:
        """Flips always (when the recipe flips); pad-crop and erasing only when ``augment``."""
        cfg = self.cfg
        if self.small:
            images = random_crop_flip(images, cfg.crop_padding if augment else 0, cfg.flip, g)
        elif cfg.flip:
            mask = torch.rand(len(images), generator=g) < 0.5
            images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        x = normalize(images, self.preprocessing["mean"], self.preprocessing["std"])
        if cfg.erasing and augment:
            x = random_erasing(x, cfg.erasing, g)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _set_lr(self, global_step: int) -> float:
        lr = self.cfg.lr * lr_factor(self.cfg, global_step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _micro_batches(self, epoch: int, start: int) -> list[tuple[int, int, torch.Tensor]]:
        """``(step, shard, indices)`` for this rank, from ``start`` to the end of the epoch.

        Each global batch is cut into ``S = world_size × accum_steps`` shards, and PyTorch's
        ``DistributedSampler`` deals the epoch's shuffled indices to the ``S`` shards
        (``set_epoch`` reshuffles every epoch, seeded by ``seed``). Shard ``s`` gets
        ``perm[s::S]``, so its ``k``-th micro-batch of ``B/S`` holds ``perm[k·B + s + S·j]``
        and the ``S`` micro-batches of step ``k`` together are exactly ``perm[k·B:(k+1)·B]``.
        Rank ``r`` processes shards ``r·A … r·A + A − 1``: any world size and accumulation
        that multiply to the same ``S`` see the same micro-batches (2 processes equal 1
        process accumulating 2, tested).
        """
        from torch.utils.data.distributed import DistributedSampler

        shards, accum = self.world_size * self.cfg.accum_steps, self.cfg.accum_steps
        micro = self.cfg.batch_size // shards
        out = []
        for a in range(accum):
            shard = self.rank * accum + a
            sampler = DistributedSampler(range(len(self.train_set)), num_replicas=shards, rank=shard,
                                         shuffle=True, seed=self.cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
            own = torch.tensor(list(sampler), dtype=torch.int64)
            out += [(step, shard, own[step * micro:(step + 1) * micro])
                    for step in range(start, self.steps_per_epoch)]
        out.sort(key=lambda item: (item[0], item[1]))  # step by step, shards in order
        return out

    def train_epoch(self, epoch: int, bar) -> dict[str, float]:
        cfg = self.cfg
        self.ddp_model.train()
        # The last ``no_aug_epochs`` fine-tune on images as the test sees them (flips are kept:
        # a mirrored garment or photo is still a real one).
        augment = epoch < cfg.epochs - cfg.no_aug_epochs
        if hasattr(self.train_set, "set_epoch"):  # datasets that augment per image
            self.train_set.set_epoch(epoch, augment)
        plan = self._micro_batches(epoch, self.step_in_epoch)
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        seen, t0, lr = 0, time.perf_counter(), 0.0
        last_log = t0
        if self.step_in_epoch and self._partial and self.is_main:  # resumed mid-epoch
            loss_sum += self._partial["loss_sum"]
            correct += int(self._partial["correct"])
            seen, t0 = int(self._partial["seen"]), t0 - self._partial["seconds"]
        self._partial = None
        accum = cfg.accum_steps
        batches = _iterate_lists(self.train_set, [idx for _, _, idx in plan], cfg.workers)
        for (step, shard, _), (images, labels) in zip(plan, batches):
            a = shard - self.rank * accum
            if a == 0:
                lr = self._set_lr(epoch * self.steps_per_epoch + step)
                self.optimizer.zero_grad(set_to_none=True)
            g = torch.Generator().manual_seed(_seed(cfg.seed, epoch, step, shard))
            torch.manual_seed(_seed(cfg.seed, epoch, step, shard, 1))  # dropout masks
            x = self._augment(images, g, augment).to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            sync = self.world_size == 1 or a == accum - 1
            with (contextlib.nullcontext() if sync else self.ddp_model.no_sync()):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    logits = self.train_forward(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
                self._check_finite(loss, epoch, step)
                self.scaler.scale(loss / accum).backward()
            if a == accum - 1:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step_in_epoch = step + 1
                if bar is not None:
                    bar.update(1)
            n = len(labels)
            seen += n
            loss_sum += loss.detach().double().cpu() * n
            correct += (logits.detach().argmax(1) == labels).sum().cpu()
            if a == accum - 1 and self.is_main:
                elapsed = time.perf_counter() - t0
                img_s = seen * self.world_size / max(elapsed, 1e-9)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                    img_s=f"{img_s:.0f}", lr=f"{lr:.3g}")
                elif time.perf_counter() - last_log > 30 or step + 1 == self.steps_per_epoch:
                    # No terminal: a plain line at most every 30 s, with the same numbers.
                    last_log = time.perf_counter()
                    done = step + 1 - plan[0][0]
                    eta = (self.steps_per_epoch - step - 1) * elapsed / max(done, 1)
                    self._log(f"  epoch {epoch + 1} step {step + 1}/{self.steps_per_epoch}: loss "
                              f"{float(loss_sum) / seen:.4f} acc {int(correct) / seen:.4f} "
                              f"{img_s:.0f} img/s, epoch ETA {eta / 60:.1f} min")
            # Ctrl-C/SIGTERM: stop on a step boundary (the last step's stop is the epoch's).
            if a == accum - 1 and step + 1 < self.steps_per_epoch and self._stop_requested():
                sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64)])
                if self.world_size > 1:
                    sums = sums.to(self.device)
                    dist.all_reduce(sums)
                    sums = sums.cpu()
                self._partial = {"loss_sum": float(sums[0]), "correct": int(sums[1].round()),
                                 "seen": int(sums[2].round()), "seconds": time.perf_counter() - t0}
                raise KeyboardInterrupt
        self.step_in_epoch = 0
        elapsed = time.perf_counter() - t0
        stats = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64)])
        if self.world_size > 1:
            stats = stats.to(self.device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        return {"train_loss": float(stats[0] / stats[2].clamp_min(1)),
                "train_acc": float(stats[1] / stats[2].clamp_min(1)),
                "images_per_sec": float(stats[2]) / max(elapsed, 1e-9), "lr": lr,
                "train_seconds": elapsed}

    def _stop_requested(self) -> bool:
        """Whether Ctrl-C/SIGTERM asked to stop, agreed by all ranks (one all-reduced flag),
        so that every process stops after the same step."""
        flag = bool(self._interrupted())
        if self.world_size > 1:
            t = torch.tensor([int(flag)], device=self.device)
            dist.all_reduce(t)
            flag = bool(t.item())
        return flag

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Stop every rank together when any rank's loss is NaN/inf (no rank left waiting)."""
        bad = (~torch.isfinite(loss.detach())).to(torch.int32)
        if self.world_size > 1:
            dist.all_reduce(bad)
        if int(bad):
            self._stop_non_finite(f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1}"
                                  f"{' on some rank' if self.world_size > 1 else ''}")

    def _stop_non_finite(self, what: str) -> None:
        last = self.run_dir / "last.safetensors"
        kept = f"the last good checkpoint is {last} (epoch {self.epoch})" if last.is_file() \
            else "no checkpoint was written yet"
        raise MobilenetsError(f"{what}; training stopped and {kept}. Try a lower --lr.")

    def fit(self) -> TrainResult:
        cfg = self.cfg
        finished = cfg.resume and self.epoch >= cfg.epochs  # resumed with nothing left to train
        if self.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a parent is a file, read-only file system, ...
                raise MobilenetsError(f"cannot create the output directory {self.run_dir}: "
                                      f"{e.strerror or e}; choose another --out") from e
            _check_writable(self.run_dir)
            for stale in self.run_dir.glob(".*.tmp"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
            if not cfg.resume:  # a fresh run: new metrics; old checkpoints stay until replaced
                if (self.run_dir / "last.safetensors").is_file():
                    warnings.warn(f"{self.run_dir} holds an earlier run: this new run replaces its "
                                  "checkpoints and metrics as it goes (--resume would continue it; "
                                  "another --out keeps it)", stacklevel=2)
                for name in ("metrics.jsonl", "metrics.csv"):
                    (self.run_dir / name).unlink(missing_ok=True)
            else:  # a run killed between its metrics and its checkpoint logged an epoch twice
                self._rewrite_metrics()
            # "precision" stays as asked (auto re-decides on the machine that resumes); what ran is
            # recorded beside it. A finished run resumed trains nothing, so its record stays.
            if not finished:
                saved = {**asdict(replace(cfg, resume=False)), "world_size": self.world_size,
                         "precision_used": self.precision, "precision_trial_s": self.precision_trial,
                         "device_used": str(self.device)}
                atomic_write_bytes(self.run_dir / "config.json", json.dumps(saved, indent=2).encode())
        if finished:
            self._log(f"{self.run_dir} has already trained {self.epoch} of {cfg.epochs} epochs; nothing "
                      f"to do (--resume --epochs N, with N > {self.epoch}, trains it further)")
        show_bar = self.is_main and (cfg.progress if cfg.progress is not None else sys.stderr.isatty())
        if not finished:
            self._log(f"training {cfg.model} {self.model_kwargs} on {cfg.data}: {len(self.train_set)} train / "
                      f"{len(self.val_set)} val images, {self.channels}×{self.image_size}², "
                      f"{len(self.classes)} classes; {cfg.epochs} epochs × {self.steps_per_epoch} steps, "
                      f"batch {self.global_batch}, {cfg.optimizer} lr {cfg.lr:g}, {self.precision}"
                      + (" (auto: {:.3g} s per step in bf16, {:.3g} s in fp32)".format(
                          self.precision_trial["bf16"], self.precision_trial["fp32"])
                         if self.precision_trial else "")
                      + (f", {self.world_size} processes" if self.world_size > 1 else "")
                      + (", quantization-aware (int8 simulated)" if cfg.qat else "")
                      + (", compiled (the first step compiles for a minute or two)" if cfg.compile else "")
                      + (f" (resuming at epoch {self.epoch + 1})" if cfg.resume else ""))
        t_start = time.perf_counter()
        with _interrupt_guard() as interrupted:
            self._interrupted = interrupted
            try:
                while self.epoch < cfg.epochs:
                    epoch = self.epoch
                    bar = None
                    if show_bar:
                        from tqdm import tqdm
                        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch,
                                   desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
                    try:
                        stats = self.train_epoch(epoch, bar)
                    finally:
                        if bar is not None:
                            bar.close()
                    row = {"epoch": epoch + 1, **stats}
                    row.update(self._validate())
                    self.epoch = epoch + 1
                    row["elapsed_seconds"] = (self.history[-1]["elapsed_seconds"] if self.history else 0.0) \
                        + stats["train_seconds"] + row.pop("val_seconds")
                    self.history.append(row)
                    if self.is_main:
                        self._record(row)
                    if self.epoch < cfg.epochs and self._stop_requested():
                        raise KeyboardInterrupt
                    if cfg.stop_after_epoch is not None and self.epoch >= cfg.stop_after_epoch \
                            and self.epoch < cfg.epochs:
                        self._log(f"stopped after epoch {self.epoch} as asked; resume with --resume")
                        break
            except _Abort:
                if self.is_main:
                    last = self.run_dir / "last.safetensors"
                    kept = f"the last checkpoint {last} is kept" if last.is_file() else "nothing was saved"
                    raise TrainingInterrupted(
                        f"aborted at epoch {self.epoch + 1} without saving (second interrupt); {kept}. "
                        f"Resume with: mobilenets train --out {self.run_dir} --resume") from None
                raise
            except KeyboardInterrupt:
                if self.is_main:
                    path = self.save_last()
                    raise TrainingInterrupted(
                        f"interrupted at epoch {self.epoch + 1} step {self.step_in_epoch}; saved {path}. "
                        f"Resume with: mobilenets train --out {self.run_dir} --resume") from None
                raise
        last = self.history[-1] if self.history else {}
        final = max(last.get("val_acc", 0.0), last.get("ema_val_acc") or 0.0)
        return TrainResult(self.run_dir, final, self.best_acc, self.epoch, self.history,
                           time.perf_counter() - t_start, self.precision)

    def _validate(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        kw = dict(channels_last=self.cfg.channels_last, precision=self.precision, device=self.device,
                  workers=self.cfg.workers, rank=self.rank, world_size=self.world_size)
        res = evaluate(self.model, self.val_set, self.preprocessing, **kw)
        if not math.isfinite(res.loss):  # e.g. the last step's update overflowed the weights
            self._stop_non_finite(f"validation loss is {res.loss} after epoch {self.epoch + 1}")
        row: dict[str, Any] = {"val_loss": res.loss, "val_acc": res.top1, "val_top5": res.top5,
                               "val_count": res.count}
        best_model, best_acc, best_is_ema = self.model, res.top1, False
        if self.ema is not None:
            ema_res = evaluate(self.ema.module, self.val_set, self.preprocessing, **kw)
            row["ema_val_acc"] = ema_res.top1
            if ema_res.top1 > res.top1:
                best_model, best_acc, best_is_ema = self.ema.module, ema_res.top1, True
        row["val_seconds"] = time.perf_counter() - t0
        if self.is_main and best_acc > self.best_acc:
            self.best_acc = best_acc
            self._save_best(best_model, best_acc, best_is_ema)
        return row

    def _record(self, row: dict[str, Any]) -> None:
        self._rewrite_metrics()
        self.save_last()
        try:
            plot_curves(self.history, self.run_dir / "curves.png")
        except OSError as e:  # a plot is not worth stopping for; a full disk stops the next save
            warnings.warn(f"could not write {self.run_dir / 'curves.png'}: {e.strerror or e}", stacklevel=2)
        ema = f", EMA {row['ema_val_acc']:.4f}" if "ema_val_acc" in row else ""
        self._log(f"epoch {row['epoch']}/{self.cfg.epochs}: train loss {row['train_loss']:.4f} "
                  f"acc {row['train_acc']:.4f} | val loss {row['val_loss']:.4f} top-1 {row['val_acc']:.4f}"
                  f"{ema} | {row['images_per_sec']:.0f} img/s | {row['elapsed_seconds'] / 60:.1f} min")

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl and metrics.csv from the history, written whole and atomically: a
        full disk is a clear error, and a run killed between writing its metrics and its
        checkpoint cannot leave an epoch logged twice after --resume (history is the truth)."""
        # The checkpoint's JSON sorts keys: a resumed history gets the columns' order back here.
        rank = {k: i for i, k in enumerate(METRIC_COLUMNS)}
        rows = [dict(sorted(row.items(), key=lambda kv: rank.get(kv[0], len(rank)))) for row in self.history]
        jsonl = "".join(json.dumps(row) + "\n" for row in rows)
        atomic_write_bytes(self.run_dir / "metrics.jsonl", jsonl.encode())
        buf = io.StringIO(newline="")
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_bytes(self.run_dir / "metrics.csv", buf.getvalue().encode())

    def _log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


#: metrics.jsonl/metrics.csv columns, in this order (the order ``fit`` builds each row in).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "images_per_sec", "lr", "train_seconds",
                  "val_loss", "val_acc", "val_top5", "val_count", "ema_val_acc", "elapsed_seconds")


def _check_writable(directory: Path) -> None:
    probe = directory / ".write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise MobilenetsError(f"output directory {directory} is not writable: {e.strerror or e}") from e


class _Abort(KeyboardInterrupt):
    """A second Ctrl-C/SIGTERM: stop at once, without saving (the state may be mid-update)."""


class _interrupt_guard:
    """SIGTERM and Ctrl-C while training only set a flag; the loop stops at the next step
    boundary and saves there. Raising at an arbitrary point (the default for Ctrl-C) could
    save weights updated by step k together with a counter saying step k is still to do,
    or half-updated weights, and the resumed run would no longer be exact. A second signal
    aborts at once without saving (the last checkpoint is kept)."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self._flag = False
        self._old: dict[int, Any] = {}
        try:
            for s in self._SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not in the main thread: leave the default behaviour
            pass
        return lambda: self._flag

    def _handler(self, signum, frame):
        if self._flag:
            raise _Abort
        self._flag = True

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    if any("ema_val_acc" in h for h in history):
        ax2.plot(epochs, [h.get("ema_val_acc") for h in history], "o-", label="validation (EMA)")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("top-1 accuracy"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says and return the result (see :class:`Trainer`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group (NCCL on GPUs,
    gloo on CPUs) and trains with DistributedDataParallel; only rank 0 writes files.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Trainer(config).fit()
    rank = int(os.environ["RANK"])
    owns_group = not dist.is_initialized()
    if owns_group:
        device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return Trainer(config, rank=rank, world_size=world_size).fit()
    finally:
        if owns_group:
            dist.destroy_process_group()
