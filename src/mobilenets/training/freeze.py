"""Which parameters train: ``--freeze backbone|stages:N|none``, ``--linear-probe``, the
fine-tuning recipe's head-only phase, and the per-stage parameter groups of layer-wise
learning-rate decay (``--layer-decay``).

A model's *stages* are its resolution levels (``feature_info``: the stem and blocks up to
the first tap are stage 1, and so on); the *head* is everything after ``features`` (V3's
``head.fc`` and the classifier), which a frozen backbone leaves to train."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import MobilenetsError

FREEZE_CHOICES = "backbone, stages:N or none"


def stage_of_feature(model: nn.Module) -> list[int]:
    """For each module of ``model.features``, its stage (0-based)."""
    ends = [f.index for f in model.feature_info]
    stages, stage = [], 0
    for i in range(len(model.features)):
        stages.append(stage)
        if stage < len(ends) - 1 and i == ends[stage]:
            stage += 1
    return stages


def parameter_depths(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """``(name, parameter, depth)`` in model order: the stage for ``features``, and one past
    the last stage for the head (``head``, ``classifier``)."""
    stage = stage_of_feature(model)
    top = len(model.feature_info)
    out = []
    for name, p in model.named_parameters():
        parts = name.split(".")
        out.append((name, p, stage[int(parts[1])] if parts[0] == "features" else top))
    return out


def frozen_stages(spec: str, model: nn.Module) -> int:
    """How many stages ``spec`` freezes (``backbone``: all of ``features``)."""
    count = len(model.feature_info)
    if spec == "none":
        return 0
    if spec == "backbone":
        return count
    if spec.startswith("stages:") and spec[7:].isdigit():
        n = int(spec[7:])
        if n > count:
            raise MobilenetsError(f"--freeze {spec}: {getattr(model, 'model_name', 'the model')} has "
                                  f"{count} stages here; give stages:0 to stages:{count}")
        return n
    raise MobilenetsError(f"--freeze must be {FREEZE_CHOICES}, got {spec!r}")


def check_freeze_spec(spec: str) -> bool:
    """Whether ``spec`` has the form :func:`frozen_stages` understands (checked before any model)."""
    return spec in ("none", "backbone") or (spec.startswith("stages:") and spec[7:].isdigit())


def set_trainable(model: nn.Module, stages: int, backbone_too: bool = False) -> int:
    """Freeze the first ``stages`` stages (and, with ``backbone_too``, V3's ``head.fc`` as
    well: a linear probe trains the classifier alone); unfreeze the rest. Returns the number
    of frozen parameter tensors."""
    frozen = 0
    for name, p, depth in parameter_depths(model):
        freeze = depth < stages or (backbone_too and not name.startswith("classifier."))
        p.requires_grad_(not freeze)
        frozen += freeze
    return frozen


def apply_freeze(model: nn.Module, cfg: Any) -> str | None:
    """Freeze what ``cfg`` (a resolved :class:`.TrainConfig`) keeps frozen all run; the log
    line saying so, or None when everything trains."""
    if not set_trainable(model, frozen_stages(cfg.freeze, model), backbone_too=cfg.linear_probe):
        return None
    what = "all but the classifier" if cfg.linear_probe else cfg.freeze
    params = list(model.parameters())
    return (f"frozen: {what} ({sum(not p.requires_grad for p in params)} of {len(params)} parameter "
            "tensors; their BatchNorm layers stay in eval mode)")


def set_phase(model: nn.Module, cfg: Any, epoch: int) -> bool:
    """Make the parameters of ``epoch``'s phase trainable: the head alone for the first
    ``cfg.head_epochs``, then all but those ``--freeze`` keeps frozen. True on the first
    epoch of the whole-network phase."""
    if not cfg.head_epochs:
        return False
    head_only = epoch < cfg.head_epochs
    stages = len(model.feature_info) if head_only else frozen_stages(cfg.freeze, model)
    set_trainable(model, stages, backbone_too=cfg.linear_probe)
    return epoch == cfg.head_epochs


def check_phases_fit(cfg: Any, world_size: int) -> None:
    """A head-only phase changes which parameters train mid-run, which DistributedDataParallel
    (its gradient buckets fixed when it wraps the model) does not allow."""
    if cfg.head_epochs and world_size > 1:
        raise MobilenetsError("the head-only phase (--head-epochs, the finetune recipe's) does not run under "
                              "DistributedDataParallel; give --head-epochs 0 or train on one process")


def frozen_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers whose affine parameters do not train: their running statistics
    stay those of the weights they were trained with."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.weight is not None and not m.weight.requires_grad]


def keep_frozen_bn_in_eval(model: nn.Module) -> None:
    """After ``model.train()``: frozen BatchNorm layers normalize with their running
    statistics and leave them unchanged, as the frozen layers before them expect."""
    for m in frozen_batchnorms(model):
        m.eval()


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 include_frozen: bool = False) -> list[dict[str, Any]]:
    """Weight decay on convolution and linear weights only, not on BN parameters or biases;
    with ``layer_decay``, one pair of groups per depth whose ``lr_scale`` is
    ``layer_decay ** (head depth - depth)`` (the head 1, the stem smallest). Frozen
    parameters are left out unless ``include_frozen`` (a phase will unfreeze them); the
    head's are then in groups of their own, since a fused optimizer steps a group whose
    parameters start at different steps wrongly (it takes the first step group-wide)."""
    top = len(model.feature_info)
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for _, p, depth in parameter_depths(model):
        if p.requires_grad or include_frozen:
            if layer_decay is None:
                depth = top if depth == top or not include_frozen else 0
            groups.setdefault((depth, p.ndim > 1), []).append(p)
    out = []
    for depth in range(top, -1, -1):
        for decays in (True, False):
            params = groups.get((depth, decays))
            if params:
                scale = layer_decay ** (top - depth) if layer_decay is not None else 1.0
                out.append({"params": params, "weight_decay": weight_decay if decays else 0.0,
                            "lr_scale": scale})
    return out
