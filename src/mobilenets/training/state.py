"""The resumable training state inside ``last.safetensors``: tensors under ``train/...``
keys (optimizer buffers, int8 ranges, the EMA copy) beside the model's weights, and the
rest (counters, history, the optimizer's scalars) in the metadata's ``train_state``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..errors import MobilenetsError
from .qat import range_state


def pack_state(model: nn.Module, optimizer: torch.optim.Optimizer, ema: AveragedModel | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors to save (model weights first) and the optimizer's JSON part
    (``param_groups`` and its non-tensor state, such as Adam's step counts)."""
    tensors = dict(model.state_dict())
    opt = optimizer.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "scalars": {}}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"train/opt/{pid}/{k}"] = v
            else:
                opt_meta["scalars"][f"{pid}/{k}"] = v
    for k, v in range_state(model).items():
        tensors[f"train/qat/{k}"] = v
    if ema is not None:
        for k, v in ema.module.state_dict().items():
            tensors[f"train/ema/{k}"] = v
        tensors["train/ema_n_averaged"] = ema.n_averaged
    return tensors, opt_meta


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      opt_meta: dict[str, Any]) -> None:
    """Load what :func:`pack_state` saved of ``optimizer``."""
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("train/opt/"):
            pid, name = k[len("train/opt/"):].split("/", 1)
            opt_state.setdefault(int(pid), {})[name] = v
    for k, v in opt_meta["scalars"].items():
        pid, name = k.split("/", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": opt_meta["param_groups"]})
    # The buffers come back contiguous; fused kernels step buffer and parameter element by
    # element in memory order, so each buffer must share its (channels_last) parameter's
    # layout, or a 3×3 stem on RGB input is updated with its neighbours' momentum.
    for group in optimizer.param_groups:
        for p in group["params"]:
            buffers = optimizer.state.get(p, {})
            for name, v in buffers.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    buffers[name] = torch.empty_like(p).copy_(v)


def saved_ranges(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The QAT model's int8 ranges as :func:`mobilenets.training.qat.load_range_state` takes them."""
    return {k[len("train/qat/"):]: v for k, v in tensors.items() if k.startswith("train/qat/")}


def restore_ema(ema: AveragedModel, tensors: dict[str, torch.Tensor]) -> None:
    ema.module.load_state_dict({k[len("train/ema/"):]: v for k, v in tensors.items()
                                if k.startswith("train/ema/")})
    ema.n_averaged.copy_(tensors["train/ema_n_averaged"])


def saved_normalization(meta: dict[str, Any], preprocessing: dict[str, Any]) -> dict[str, Any]:
    """``preprocessing`` with the mean and std a checkpoint's metadata records, if it does."""
    pre = meta.get("preprocessing")
    if isinstance(pre, dict) and "mean" in pre and "std" in pre:
        return {**preprocessing, "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]]}
    return preprocessing


def epochs_done(meta: dict[str, Any]) -> int:
    """The epochs a checkpoint's metadata says were trained (0 when it does not say: the
    resume itself then reports what is missing)."""
    state = meta.get("train_state")
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return epoch if isinstance(epoch, int) else 0


@contextlib.contextmanager
def corrupt_state_is_an_error(source: str) -> Iterator[None]:
    """A training state that does not fit the model and optimizer (damaged, or from another
    configuration) becomes one clear error instead of a traceback from deep in torch."""
    try:
        yield
    except MobilenetsError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        raise MobilenetsError(f"{source}: the training state is corrupt or from another configuration "
                              f"({type(e).__name__}: {e}); start a new run without --resume") from e
