"""What an artifact's input is: a checkpoint's :class:`Preprocessing` checked against its
model, and uint8 images turned into the float32 arrays the model reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.preprocessing import Preprocessing, as_preprocessing
from ..errors import MobilenetsError


def input_channels(model: nn.Module) -> int:
    """Input channels of ``model`` (its first convolution's)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise MobilenetsError("the model has no convolution; cannot infer its input channels")
    return first.in_channels


def resolve_preprocessing(model: nn.Module, meta: dict[str, Any] | None) -> Preprocessing:
    """The checkpoint's :class:`Preprocessing` (with its classes), checked against ``model``'s
    input channels (converted checkpoints store none: the model's count is used)."""
    return Preprocessing.from_meta(meta or {}, "checkpoint", channels=input_channels(model))


def preprocess(images: torch.Tensor | np.ndarray,
               preprocessing: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` images (a tensor or a numpy array) → the float32 array the
    model reads (:meth:`Preprocessing.apply`).

    Images must already have the model's size and channels (datasets load them that way);
    resizing here would silently differ from what the model was trained on.
    """
    pre = as_preprocessing(preprocessing)
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise MobilenetsError(f"images must be uint8 pixels (0-255), got {images.dtype}")
    c, size = pre.channels, pre.input_size
    if images.dim() != 4 or tuple(images.shape[1:]) != (c, size, size):
        raise MobilenetsError(f"images are {tuple(images.shape[1:])} (C, H, W) but the model "
                              f"expects ({c}, {size}, {size})")
    return pre.apply(images).numpy()
