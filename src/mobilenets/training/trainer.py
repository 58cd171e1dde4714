"""The trainer behind ``mobilenets train``: one model on one dataset, one run directory
(see :mod:`mobilenets.training.rundir`), resumable exactly, on one process or many (DDP)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import normalize
from ..data.datasets import TensorImages
from ..data.datasets import mix_seed as _seed
from ..errors import MobilenetsError
from ..io.checkpoint import (atomic_write_bytes, load_state, model_meta, model_weights, read_checkpoint,
                             state_to_bytes)
from ..models.registry import create_model
from ..ops.cpu import keep_freed_memory, optimize
from .batches import iterate, iterate_lists, micro_batches
from .config import TrainConfig, check_compiler, config_from_init, read_init, resumed_config
from .distributed import any_rank, process_group, sum_over_ranks, sync_batchnorm, world, wrap_ddp
from .evaluate import evaluate
from .meter import EpochMeter
from .optim import make_ema, make_optimizer, make_scheduler, step_schedule
from .plots import plot_curves
from .runlock import run_lock
from .precision import PRECISION_TRIAL_STEPS, autocast_dtype, choose_cpu_precision, resolve_device, resolve_precision
from .freeze import apply_freeze, check_phases_fit, keep_frozen_bn_in_eval, set_phase
from .precise_bn import precise_bn_for_run
from .qat import calibrate, load_range_state, prepare_qat
from .recipes import QAT_CALIBRATION_IMAGES
from .run_data import (augment_batch, data_model_kwargs, default_preprocessing, init_preprocessing,
                       load_run_data, pinned_channels)
from .rundir import describe_run, prepare_run_dir, write_config, write_metrics
from .transfer import load_transfer
from .signals import Abort, TrainingInterrupted, interrupt_guard, stopped
from .state import (corrupt_state_is_an_error, epochs_done, pack_state, restore_ema, restore_optimizer,
                    saved_normalization, saved_ranges)

Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class TrainResult:
    run_dir: Path
    final_acc: float  # validation top-1 of the last epoch (EMA weights if enabled and better)
    best_acc: float
    epochs_done: int
    history: list[dict[str, Any]]
    seconds: float
    precision: str = "fp32"  # what ran: fp32, bf16 or fp16


class Trainer:
    """Trains one model on one dataset, writing the run directory (:mod:`.rundir`)."""

    def __init__(self, config: TrainConfig, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.run_dir = Path(config.out)
        init = self._resolve_config(config)
        self._resolve_device_and_precision()
        last = read_checkpoint(self.run_dir / "last.safetensors") if self.cfg.resume else None
        self._load_data(init, last)
        self._build_model(init)
        self._choose_precision(last)
        self._wrap_model()
        self._make_optimizer()
        self._plan_steps()
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self._reset_progress()
        if self.cfg.resume:
            self._load_state(*last)

    # ---- setup, in the order __init__ runs it
    def _resolve_config(self, config: TrainConfig) -> Checkpoint | None:
        """``self.cfg``: the saved run's configuration on resume, the ``--init`` checkpoint's
        model otherwise, with the recipe filled in. Returns the ``--init`` checkpoint, read once."""
        init = None
        if config.resume:
            config = resumed_config(config, self.world_size, warn=self.is_main)
        elif config.init:
            init = read_init(config.init)
            config = config_from_init(config, init[1])
        self.cfg = config.resolved()
        return init

    def _resolve_device_and_precision(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.device, self.rank)
        if cfg.reuse_memory and self.device.type == "cpu":
            keep_freed_memory()
        # QAT rounds to the int8 grid in fp32; bf16 activations would blur that grid.
        self.precision = resolve_precision("fp32" if cfg.qat and cfg.precision == "auto" else cfg.precision,
                                           self.device)

    def _load_data(self, init: Checkpoint | None, last: Checkpoint | None) -> None:
        # A resumed --init run keeps the channels it was adapted to; a new one takes the data's.
        continued = last if self.cfg.init and last is not None else None
        data = load_run_data(self.cfg, pinned_channels(continued[1] if continued else None),
                             init[1] if init is not None else None, warn=self.is_main)
        self.train_set, self.val_set, self.holdout = data.train_set, data.val_set, data.holdout
        self.classes = list(self.train_set.classes)
        self.channels = self.train_set.channels
        self.image_size = self.train_set.image_size
        self.small = isinstance(self.train_set, TensorImages) and self.train_set.kind == "small"
        self.preprocessing = default_preprocessing(self.train_set)
        if init is not None:
            self.preprocessing = init_preprocessing(init[1], self.channels, self.preprocessing)

    def _create_model(self, init: Checkpoint | None) -> nn.Module:
        """The network as ``create_model`` builds it, with the ``--init`` weights (the
        classifier and stem adapted to the data, see :mod:`.transfer`), frozen as asked."""
        torch.manual_seed(self.cfg.seed)
        model = create_model(self.cfg.model, **self.model_kwargs)
        if init is not None:
            for line in load_transfer(model, *init, self.classes, source=self.cfg.init,
                                      same_classes=self.cfg.qat):
                self._log(line)
        self._log(apply_freeze(model, self.cfg))
        return model

    def _build_model(self, init: Checkpoint | None) -> None:
        """``self.model``: created, made synchronous or quantization-aware as asked, and
        placed on the device in the memory layout it trains in."""
        cfg = self.cfg
        self.model_kwargs = data_model_kwargs(cfg, self.classes, self.channels, self.image_size)
        model = self._create_model(init)
        if cfg.sync_bn:
            model = sync_batchnorm(model, cfg.model, self.model_kwargs, self.device, self.world_size)
        if cfg.qat:
            prepare_qat(model)
        if self.device.type == "cpu":  # the CPU kernels' gaps (benchmarks/train_throughput.py)
            optimize(model)
        self.model = model.to(self.device)
        if cfg.qat and not cfg.resume:
            self._calibrate()
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _calibrate(self) -> None:
        """Start QAT from the post-training int8 model: activation ranges from the float
        network on the first images of a seeded permutation (the same on every rank)."""
        g = torch.Generator().manual_seed(_seed(self.cfg.seed, 0x0CA1))
        idx = torch.randperm(len(self.train_set), generator=g)[:QAT_CALIBRATION_IMAGES]
        batches = (normalize(images, self.preprocessing["mean"], self.preprocessing["std"]).to(self.device)
                   for images, _ in iterate(self.train_set, idx, 64, self.cfg.workers))
        seen = calibrate(self.model, batches)
        self._log(f"quantization-aware training: int8 ranges calibrated on {seen} training images")

    def _choose_precision(self, last: Checkpoint | None) -> None:
        """``auto`` on a CPU with native bf16 times both precisions (not for a finished run
        resumed, which trains nothing); then the autocast type and fp16's loss scaler."""
        cfg = self.cfg
        #: Seconds per step of each precision when ``auto`` timed them (:func:`time_precisions`).
        self.precision_trial: dict[str, float] | None = None
        finished = last is not None and epochs_done(last[1]) >= cfg.epochs
        if self.device.type == "cpu" and cfg.precision == "auto" and self.precision == "bf16" and not finished:
            micro = max(1, cfg.batch_size // (self.world_size * cfg.accum_steps))
            self._log(f"precision auto: timing {PRECISION_TRIAL_STEPS} training steps in fp32 and in bf16 "
                      "(--precision fp32|bf16 skips this)")
            self.precision, self.precision_trial = choose_cpu_precision(
                self.model, (micro, self.channels, self.image_size, self.image_size), len(self.classes),
                cfg.channels_last, self.world_size)
        self.amp_dtype = autocast_dtype(self.precision)
        # fp16 needs loss scaling against underflow; bf16 and fp32 do not (scaler disabled).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _wrap_model(self) -> None:
        """DistributedDataParallel across processes; ``torch.compile`` for the training step's
        forward (and so its backward), compiled once for the fixed batch shape. Evaluation
        runs the eager model, which shares the parameters."""
        self.ddp_model = wrap_ddp(self.model, self.device, self.world_size)
        self.train_forward: nn.Module = self.ddp_model
        if self.cfg.compile:
            check_compiler()
            self.train_forward = torch.compile(self.ddp_model, dynamic=False)

    def _make_optimizer(self) -> None:
        check_phases_fit(self.cfg, self.world_size)
        self.optimizer = make_optimizer(self.cfg, self.model)
        self.ema = make_ema(self.model, self.cfg.ema)

    def _set_phase(self, epoch: int) -> None:
        """Train mode, with the parameters of ``epoch``'s phase trainable: the head alone for
        the first ``head_epochs``, then all but those ``--freeze`` keeps frozen. Frozen
        BatchNorm layers stay in eval mode."""
        if set_phase(self.model, self.cfg, epoch) and self.step_in_epoch == 0:
            self._log(f"epoch {epoch + 1}: the head-only phase is over; the whole network trains "
                      f"from here (lr {self.cfg.lr:g})")
        self.ddp_model.train()
        keep_frozen_bn_in_eval(self.model)

    def _plan_steps(self) -> None:
        cfg = self.cfg
        shards = self.world_size * cfg.accum_steps
        if cfg.batch_size % shards:
            raise MobilenetsError(f"batch size {cfg.batch_size} must divide evenly into {self.world_size} "
                                  f"process(es) × {cfg.accum_steps} accumulation step(s)")
        if len(self.train_set) < cfg.batch_size:
            raise MobilenetsError(f"the training set has {len(self.train_set)} images, fewer than one "
                                  f"batch of {cfg.batch_size}; lower --batch-size")
        self.global_batch = cfg.batch_size
        self.steps_per_epoch = len(self.train_set) // cfg.batch_size
        if cfg.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps)

    def _reset_progress(self) -> None:
        self.epoch, self.step_in_epoch = 0, 0
        # Sums of the epoch so far (global over ranks) when stopped mid-epoch, so that the
        # resumed epoch reports the same train loss/accuracy as an uninterrupted one.
        self._partial: dict[str, float] | None = None
        self._interrupted = lambda: False  # set by fit() while its signal handlers are in place
        self.history: list[dict[str, Any]] = []
        self.best_acc = -1.0

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

    def save_last(self) -> Path:
        tensors, opt_meta = pack_state(self.model, self.optimizer, self.ema)
        state = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "best_acc": self.best_acc,
                 "history": self.history, "optimizer": opt_meta, "scheduler": self.scheduler.state_dict(),
                 "epoch_partial": self._partial if self.step_in_epoch else None}
        path = self.run_dir / "last.safetensors"
        atomic_write_bytes(path, state_to_bytes(tensors, self._meta(train_state=state)))
        return path

    def _save_best(self, model: nn.Module, acc: float, ema: bool) -> None:
        # Called while validating epoch self.epoch + 1, before the counter moves on.
        meta = self._meta(val_acc=acc, ema=ema, epoch=self.epoch + 1)
        atomic_write_bytes(self.run_dir / "best.safetensors", state_to_bytes(model.state_dict(), meta))

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from ``last.safetensors`` (its tensors and metadata, read once in ``__init__``)."""
        source = str(self.run_dir / "last.safetensors")
        state = meta.get("train_state")
        if not isinstance(state, dict):
            raise MobilenetsError(f"{source} has no training state to resume")
        load_state(self.model, model_weights(tensors), source=source)
        with corrupt_state_is_an_error(source):
            restore_optimizer(self.optimizer, tensors, state["optimizer"])
            if self.cfg.qat:
                load_range_state(self.model, saved_ranges(tensors), source=source)
            if self.ema is not None:
                restore_ema(self.ema, tensors)
            self._restore_progress(state, meta)

    def _restore_progress(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        # The schedule goes on from the checkpoint's global step (the saved scheduler state's
        # last_epoch, or the step these steps per epoch give where --max-steps changed them),
        # its rate recomputed under this run's --epochs (see make_scheduler).
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.steps_per_epoch,
                                        start=self.epoch * self.steps_per_epoch + self.step_in_epoch)
        # The run's normalization, not one recomputed from the data: an --init run keeps
        # its starting checkpoint's, which the data's statistics need not equal.
        self.preprocessing = saved_normalization(meta, self.preprocessing)
        self.best_acc = float(state["best_acc"])
        self.history = list(state["history"])
        partial = state.get("epoch_partial")
        self._partial = {k: float(partial[k]) for k in ("loss_sum", "correct", "seen", "seconds")} \
            if partial else None

    # ---- one epoch
    def _augment(self, images: torch.Tensor, g: torch.Generator, augment: bool) -> torch.Tensor:
        """The training batch the network sees (see :func:`run_data.augment_batch`)."""
        return augment_batch(images, g, augment, self.small, self.cfg, self.preprocessing)

    def _micro_batches(self, epoch: int, start: int) -> list[tuple[int, int, torch.Tensor]]:
        """This rank's ``(step, shard, indices)`` from ``start`` to the end of the epoch
        (see :func:`mobilenets.training.batches.micro_batches`)."""
        return micro_batches(len(self.train_set), self.cfg.batch_size, self.rank, self.world_size,
                             self.cfg.accum_steps, self.cfg.seed, epoch, start, self.steps_per_epoch)

    def train_epoch(self, epoch: int, bar: Any) -> dict[str, float]:
        """One epoch from ``self.step_in_epoch`` on; the train loss, accuracy and speed."""
        cfg, accum = self.cfg, self.cfg.accum_steps
        self._set_phase(epoch)
        # The last ``no_aug_epochs`` fine-tune on images as the test sees them (flips are kept:
        # a mirrored garment or photo is still a real one).
        augment = epoch < cfg.epochs - cfg.no_aug_epochs
        if hasattr(self.train_set, "set_epoch"):  # datasets that augment per image
            self.train_set.set_epoch(epoch, augment)
        plan = self._micro_batches(epoch, self.step_in_epoch)
        meter = EpochMeter(self._partial if self.step_in_epoch and self.is_main else None)
        self._partial = None
        batches = iterate_lists(self.train_set, [idx for _, _, idx in plan], cfg.workers)
        for (step, shard, _), (images, labels) in zip(plan, batches):
            a = shard - self.rank * accum
            if a == 0:
                meter.lr = self.scheduler.get_last_lr()[0]
                self.optimizer.zero_grad(set_to_none=True)
            loss, logits, labels = self._forward_backward(images, labels, epoch, step, shard, augment)
            if a == accum - 1:
                self._optimizer_step(step, bar)
            meter.add(loss, logits, labels)
            if a == accum - 1 and self.is_main:
                line = meter.report(bar, epoch, step, self.steps_per_epoch, plan[0][0], self.world_size)
                if line:
                    self._log(line)
            # Ctrl-C/SIGTERM: stop on a step boundary (the last step's stop is the epoch's).
            if a == accum - 1 and step + 1 < self.steps_per_epoch and self._stop_requested():
                self._partial = meter.partial(self._all_reduce(meter.sums()))
                raise KeyboardInterrupt
        self.step_in_epoch = 0
        return meter.stats(self._all_reduce(meter.sums()))

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int,
                          shard: int, augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One micro-batch's loss and gradients (gradients all-reduced on the step's last one)."""
        cfg, accum = self.cfg, self.cfg.accum_steps
        g = torch.Generator().manual_seed(_seed(cfg.seed, epoch, step, shard))
        torch.manual_seed(_seed(cfg.seed, epoch, step, shard, 1))  # dropout masks
        x = self._augment(images, g, augment).to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        sync = self.world_size == 1 or shard - self.rank * accum == accum - 1
        with (contextlib.nullcontext() if sync else self.ddp_model.no_sync()):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.train_forward(x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            self._check_finite(loss, epoch, step)
            self.scaler.scale(loss / accum).backward()
        return loss, logits, labels

    def _optimizer_step(self, step: int, bar: Any) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        step_schedule(self.scheduler, may_skip=self.scaler.is_enabled())
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step_in_epoch = step + 1
        if bar is not None:
            bar.update(1)

    def _all_reduce(self, sums: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(sums, self.device, self.world_size)

    def _stop_requested(self) -> bool:
        """Whether Ctrl-C/SIGTERM asked to stop on any rank, so that all stop after the same step."""
        return any_rank(bool(self._interrupted()), self.device, self.world_size)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Stop every rank together when any rank's loss is NaN/inf (no rank left waiting)."""
        if any_rank(not bool(torch.isfinite(loss.detach())), self.device, self.world_size):
            self._stop_non_finite(f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1}"
                                  f"{' on some rank' if self.world_size > 1 else ''}")

    def _stop_non_finite(self, what: str) -> None:
        last = self.run_dir / "last.safetensors"
        kept = f"the last good checkpoint is {last} (epoch {self.epoch})" if last.is_file() \
            else "no checkpoint was written yet"
        raise MobilenetsError(f"{what}; training stopped and {kept}. Try a lower --lr.")

    # ---- the run
    def fit(self) -> TrainResult:
        """Train the remaining epochs, validating and checkpointing after each; Ctrl-C or
        SIGTERM saves a resumable checkpoint on a step boundary (:class:`TrainingInterrupted`)."""
        cfg = self.cfg
        finished = cfg.resume and self.epoch >= cfg.epochs  # resumed with nothing left to train
        if self.is_main:
            self._prepare_run_dir(record_config=not finished)
        if finished:
            self._log(f"{self.run_dir} has already trained {self.epoch} of {cfg.epochs} epochs; nothing "
                      f"to do (--resume --epochs N, with N > {self.epoch}, trains it further)")
        else:
            self._log(describe_run(self))
        t_start = time.perf_counter()
        with interrupt_guard() as interrupted:
            self._interrupted = interrupted
            try:
                self._train_epochs()
            except Abort:
                if self.is_main:
                    raise stopped(self.run_dir, self.epoch, self.step_in_epoch, saved=None) from None
                raise
            except KeyboardInterrupt:
                if self.is_main:
                    raise stopped(self.run_dir, self.epoch, self.step_in_epoch, self.save_last()) from None
                raise
        last = self.history[-1] if self.history else {}
        final = max(last.get("val_acc", 0.0), last.get("ema_val_acc") or 0.0)
        return TrainResult(self.run_dir, final, self.best_acc, self.epoch, self.history,
                           time.perf_counter() - t_start, self.precision)

    def _prepare_run_dir(self, record_config: bool) -> None:
        prepare_run_dir(self.run_dir, self.cfg.resume)
        if self.cfg.resume:  # a run killed between its metrics and its checkpoint logged an epoch twice
            write_metrics(self.run_dir, self.history)
        # "precision" stays as asked; what ran is recorded beside it, and a resumed "auto" run
        # continues in that precision (read_saved_config). A finished run resumed trains
        # nothing, so its record stays.
        if record_config:
            write_config(self.run_dir, {**asdict(replace(self.cfg, resume=False)), "world_size": self.world_size,
                                        "precision_used": self.precision,
                                        "precision_trial_s": self.precision_trial,
                                        "device_used": str(self.device)})

    def _train_epochs(self) -> None:
        cfg = self.cfg
        show_bar = self.is_main and (cfg.progress if cfg.progress is not None else sys.stderr.isatty())
        while self.epoch < cfg.epochs:
            self._run_epoch(show_bar)
            if self.epoch < cfg.epochs and self._stop_requested():
                raise KeyboardInterrupt
            if cfg.stop_after_epoch is not None and cfg.stop_after_epoch <= self.epoch < cfg.epochs:
                self._log(f"stopped after epoch {self.epoch} as asked; resume with --resume")
                break

    def _run_epoch(self, show_bar: bool) -> None:
        """Train and validate epoch ``self.epoch``, then record it and move the counter on."""
        epoch, bar = self.epoch, None
        if show_bar:
            from tqdm import tqdm
            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch,
                       desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
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

    def _validate(self) -> dict[str, Any]:
        """Validation metrics of the model (and its EMA copy); saves ``best`` when it improved."""
        t0 = time.perf_counter()
        precise_bn_for_run(self)
        precise_bn_seconds = time.perf_counter() - t0
        kw = dict(channels_last=self.cfg.channels_last, precision=self.precision, device=self.device,
                  workers=self.cfg.workers, rank=self.rank, world_size=self.world_size)
        res = evaluate(self.model, self.val_set, self.preprocessing, **kw)
        if not math.isfinite(res.loss):  # e.g. the last step's update overflowed the weights
            self._stop_non_finite(f"validation loss is {res.loss} after epoch {self.epoch + 1}")
        row: dict[str, Any] = {"val_loss": res.loss, "val_acc": res.top1, "val_top5": res.top5,
                               "val_count": res.count, "precise_bn_seconds": precise_bn_seconds}
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
        write_metrics(self.run_dir, self.history)
        self.save_last()
        try:
            plot_curves(self.history, self.run_dir / "curves.png")
        except OSError as e:  # a plot is not worth stopping for; a full disk stops the next save
            warnings.warn(f"could not write {self.run_dir / 'curves.png'}: {e.strerror or e}", stacklevel=2)
        ema = f", EMA {row['ema_val_acc']:.4f}" if "ema_val_acc" in row else ""
        self._log(f"epoch {row['epoch']}/{self.cfg.epochs}: train loss {row['train_loss']:.4f} "
                  f"acc {row['train_acc']:.4f} | val loss {row['val_loss']:.4f} top-1 {row['val_acc']:.4f}"
                  f"{ema} | {row['images_per_sec']:.0f} img/s | {row['elapsed_seconds'] / 60:.1f} min")

    def _log(self, message: str | None) -> None:
        if self.is_main and message:
            print(message, flush=True)


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says and return the result (see :class:`Trainer`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group (NCCL on GPUs,
    gloo on CPUs) and trains with DistributedDataParallel; only rank 0 writes files.
    """
    rank, world_size = world()
    with run_lock(Path(config.out), take=rank == 0):  # one run per --out at a time
        if world_size == 1:
            return Trainer(config).fit()
        with process_group(config.device):
            return Trainer(config, rank=rank, world_size=world_size).fit()
