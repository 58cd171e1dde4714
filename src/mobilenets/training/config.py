"""What defines a run: :class:`TrainConfig`, filled from a recipe and checked, and the
configurations derived from an ``--init`` checkpoint or a saved run (``--resume``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..data.datasets import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ..errors import MobilenetsError, did_you_mean
from ..io.checkpoint import check_model_kwargs, read_checkpoint
from ..models.registry import model_options
from .freeze import FREEZE_CHOICES, check_freeze_spec
from .recipes import RECIPE_BASE, RECIPES, qat_defaults


#: More epochs than any run needs: a typo (``--epochs 1000000000000``) is refused up front.
MAX_EPOCHS = 100_000


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
    freeze: str | None = None  # backbone | stages:N | none (see mobilenets.training.freeze)
    linear_probe: bool = False  # train the classifier alone (the backbone and V3's head.fc frozen)
    head_epochs: int | None = None  # first epochs train the head alone (the finetune recipe's phase)
    head_lr: float | None = None  # learning rate while the head trains alone; None: lr
    layer_decay: float | None = None  # layer-wise LR decay: stage s gets lr × F^(stages - s)
    precise_bn: bool = True  # recompute BN statistics before each validation and save
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise

    def resolved(self) -> "TrainConfig":
        """The recipe filled in where the user gave nothing, and the result checked."""
        if self.recipe not in RECIPES:
            raise MobilenetsError(f"unknown recipe {self.recipe!r}{did_you_mean(self.recipe, RECIPES)}; "
                                  f"recipes: {', '.join(RECIPES)}")
        base = {**RECIPE_BASE, **RECIPES[self.recipe]}
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
        _resolve_phases(values, head_epochs_given=self.head_epochs is not None)
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every value in range, as one clear error (the CLI prints it without a traceback)."""
        for name in ("lr", "head_lr", "layer_decay", "weight_decay", "warmup", "label_smoothing", "ema", "erasing", "val_fraction",
                     "momentum", "gamma", "step_epochs"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise MobilenetsError(f"{name.replace('_', ' ')} must be a finite number, got {value}")
        for ok, message in self._checks():
            if not ok:
                raise MobilenetsError(message)

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.optimizer in ("sgd", "rmsprop", "adamw"), f"optimizer must be sgd, rmsprop or adamw, got {self.optimizer!r}"),
            (self.schedule in ("cosine", "step"), f"schedule must be cosine or step, got {self.schedule!r}"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.accum_steps >= 1, f"accumulation steps must be >= 1, got {self.accum_steps}"),
            (self.epochs is not None and 1 <= self.epochs <= MAX_EPOCHS,
             f"epochs must be in [1, {MAX_EPOCHS}], got {self.epochs}"),
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
            (self.freeze is None or check_freeze_spec(self.freeze),
             f"--freeze must be {FREEZE_CHOICES}, got {self.freeze!r}"),
            (not (self.linear_probe and self.freeze not in (None, "backbone")),
             f"--linear-probe freezes the whole backbone; it does not combine with --freeze {self.freeze}"),
            (0 <= (self.head_epochs or 0) < (self.epochs or 0) or not self.head_epochs,
             f"head-only epochs must be in [0, epochs = {self.epochs}), got {self.head_epochs}"),
            (self.head_lr is None or self.head_lr > 0, f"head learning rate must be positive, got {self.head_lr}"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1,
             f"layer decay must be in (0, 1], got {self.layer_decay}"),
            (0 <= self.no_aug_epochs <= (self.epochs or 0),
             f"no-augmentation epochs must be in [0, epochs = {self.epochs}], got {self.no_aug_epochs}"),
        ]


def _resolve_phases(values: dict[str, Any], head_epochs_given: bool) -> None:
    """``--linear-probe`` is ``--freeze backbone`` of everything but the classifier, and a
    frozen backbone has no head-only phase; the recipe's phase is shortened to leave at
    least one whole-network epoch when ``--epochs`` is small (not a value the user gave)."""
    if values["linear_probe"]:
        values["freeze"] = values["freeze"] or "backbone"
    values["freeze"] = values["freeze"] or "none"
    if values["freeze"] == "backbone":
        values["head_epochs"] = 0
    elif not head_epochs_given and values["epochs"] is not None and values["epochs"] >= 1:
        values["head_epochs"] = min(values["head_epochs"] or 0, values["epochs"] - 1)
    values["head_epochs"] = values["head_epochs"] or 0


#: Model options that may differ from an ``--init`` checkpoint's: they change training, not
#: the weights' shapes or meaning.
INIT_FREE_OPTIONS = frozenset({"dropout"})

#: What a resumed run may change: the epoch budget and steps per epoch when given again,
#: and the settings that describe this invocation rather than the run.
RESUME_GIVEN = ("epochs", "max_steps")
RESUME_INVOCATION = ("stop_after_epoch", "progress", "workers", "compile", "reuse_memory")


def config_from_init(config: TrainConfig, meta: dict[str, Any]) -> TrainConfig:
    """The configuration with the model and options of the ``init`` checkpoint (``meta``)."""
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


def read_init(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors and metadata of the ``--init`` checkpoint (not an exported model)."""
    from ..io.artifact import require_checkpoint

    return read_checkpoint(require_checkpoint(path, "--init"))


def read_saved_config(run_dir: Path) -> tuple[TrainConfig, int]:
    """The resolved configuration and world size that ``run_dir/config.json`` recorded."""
    path = run_dir / "config.json"
    if not (run_dir / "last.safetensors").is_file() or not path.is_file():
        raise MobilenetsError(f"nothing to resume in {run_dir}: no last.safetensors/config.json "
                              "(start without --resume)")
    try:
        saved = json.loads(path.read_text())
        known = {f.name for f in fields(TrainConfig)}
        values = {k: v for k, v in saved.items() if k in known}
        world_size = saved.get("world_size", 1)
        if saved.get("precision") == "auto" and saved.get("precision_used") in ("fp32", "bf16", "fp16"):
            values["precision"] = saved["precision_used"]  # resume as it ran, not re-timed
        check_types(values)
        if not _fits(world_size, "int") or not 1 <= world_size <= 65536:
            raise MobilenetsError(f"world_size must be an integer in 1..65536, got {world_size!r}")
        config = TrainConfig(**values)
        config.validate()
        return config, world_size
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise MobilenetsError(f"{path} is corrupt: {e}") from e


def _fits(value: Any, annotation: str) -> bool:
    """``value`` is of the JSON type one part of a field annotation names (no bool for numbers)."""
    base = annotation.strip().split("[", 1)[0]
    checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
              "dict": lambda v: isinstance(v, dict), "None": lambda v: v is None}
    return base not in checks or checks[base](value)


def check_types(values: dict[str, Any]) -> None:
    """Each value of the type its :class:`TrainConfig` field declares: a hand-edited
    ``config.json`` (``"epochs": "many"``, ``2.5``, ``null``) is refused as the command line
    would refuse it, not met later as a TypeError or an ``epoch 3/2.5``."""
    for f in fields(TrainConfig):
        if f.name in values and not any(_fits(values[f.name], part) for part in str(f.type).split("|")):
            raise MobilenetsError(f"{f.name} must be {str(f.type).replace('|', 'or')}, "
                                  f"got {json.dumps(values[f.name])[:60]}")


def resumed_config(config: TrainConfig, world_size: int, warn: bool) -> TrainConfig:
    """The saved run's configuration, which defines everything on ``--resume``, with what
    this invocation may change (:data:`RESUME_GIVEN`, :data:`RESUME_INVOCATION`); other
    values given now are ignored, with a warning when ``warn``."""
    saved, saved_world = read_saved_config(Path(config.out))
    overrides = {k: getattr(config, k) for k in RESUME_INVOCATION}
    overrides.update({k: getattr(config, k) for k in RESUME_GIVEN if getattr(config, k) is not None})
    # At another world size, keep the number of micro-batches per step (processes ×
    # accumulation) so every step sees the same micro-batches as before.
    shards = saved_world * saved.accum_steps
    if world_size != saved_world and shards % world_size == 0:
        overrides["accum_steps"] = shards // world_size
    # The saved configuration is resolved (the recipe filled in), so a value given now
    # counts as different only where it is not the default and not the saved one.
    defaults = asdict(TrainConfig())
    given = asdict(config)
    given["model_kwargs"] = {**saved.model_kwargs, **config.model_kwargs}
    if given["ema"] == 0:  # "off", as the saved None says
        given["ema"] = None
    ignored = [f"{k}={v!r} (the run has {getattr(saved, k)!r})" for k, v in given.items()
               if k not in overrides and k not in ("out", "resume")
               and v != defaults[k] and v != getattr(saved, k)]
    if ignored and warn:
        warnings.warn("--resume continues the saved run as it was configured; ignored: "
                      + ", ".join(ignored), stacklevel=4)
    return replace(saved, resume=True, **overrides)


def preflight(config: TrainConfig) -> None:
    """The checks that need no data loaded, run before torchrun starts the workers, so that
    a mistake in the options is reported once instead of once per process."""
    from ..data.datasets import resolve_data_dir

    if config.resume:
        read_saved_config(Path(config.out))
        return
    if config.init:
        config = config_from_init(config, read_checkpoint(config.init)[1])
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
