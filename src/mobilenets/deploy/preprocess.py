"""What an artifact's input is: a checkpoint's preprocessing checked against its model, and
uint8 images turned into the float32 arrays the model reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MobilenetsError


def input_channels(model: nn.Module) -> int:
    """Input channels of ``model`` (its first convolution's)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise MobilenetsError("the model has no convolution; cannot infer its input channels")
    return first.in_channels


def resolve_preprocessing(model: nn.Module, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's ``preprocessing`` checked against ``model``, ``channels`` filled in.

    Converted checkpoints store mean/std/input_size without ``channels``; trained ones store
    all four. Without mean/std an artifact could not be used correctly, so that is an error.
    """
    pre = dict((meta or {}).get("preprocessing") or {})
    channels = input_channels(model)
    pre.setdefault("channels", channels)
    if pre["channels"] != channels:
        raise MobilenetsError(f"preprocessing says {pre['channels']} input channels, the model "
                              f"has {channels}")
    missing = [k for k in ("input_size", "mean", "std") if k not in pre]
    if missing:
        raise MobilenetsError(f"checkpoint metadata lacks preprocessing {', '.join(missing)}; "
                              "re-save it with save_model(..., preprocessing={'input_size': ..., "
                              "'mean': [...], 'std': [...]})")
    for key in ("mean", "std"):
        if len(pre[key]) != channels:
            raise MobilenetsError(f"preprocessing {key} has {len(pre[key])} values for "
                                  f"{channels} channels")
    return pre


def preprocess(images: torch.Tensor | np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` images (a tensor or a numpy array) → the float32 array the
    model reads.

    Images must already have the model's size and channels (datasets load them that way);
    resizing here would silently differ from what the model was trained on.
    """
    from ..data.augment import normalize

    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise MobilenetsError(f"images must be uint8 pixels (0-255), got {images.dtype}")
    c, size = preprocessing["channels"], preprocessing["input_size"]
    if images.dim() != 4 or tuple(images.shape[1:]) != (c, size, size):
        raise MobilenetsError(f"images are {tuple(images.shape[1:])} (C, H, W) but the model "
                              f"expects ({c}, {size}, {size})")
    return normalize(images, preprocessing["mean"], preprocessing["std"]).numpy()
