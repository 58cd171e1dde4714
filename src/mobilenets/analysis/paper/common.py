"""Helpers every paper topic shares: a cached profile, weight counts, a fixed input, the
rounding rule published figures follow, and the JSON form of a result."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from functools import lru_cache

import torch
from torch import nn

from ...models.registry import create_model
from ..profile import Profile, profile


@lru_cache(maxsize=None)
def profile_cached(name: str, resolution: int, kwargs: tuple[tuple[str, object], ...]) -> Profile:
    """The profile of a registered network, computed once: several topics and table rows
    share a network (V1 1.0-224 is in Tables 2, 6 and 7)."""
    return profile(create_model(name, **dict(kwargs)), resolution)


def conv_weights(module: nn.Module) -> int:
    """Weights of convolutions and linear layers (no bias, no BatchNorm): the papers'
    per-layer parameter formulas count exactly these."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def example_input(model: nn.Module, size: int) -> torch.Tensor:
    """A fixed random image (batch 1) with the model's input channels: a non-constant
    input, so comparing two computations of the same network means something."""
    chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    return torch.randn(1, chans, size, size, generator=torch.Generator().manual_seed(0))


def check_formula(what: str, measured: int, formula: int) -> None:
    # The measured count of a real module must equal the paper's closed form; if not, the
    # module is not the layer the formula describes.
    if measured != formula:
        raise RuntimeError(f"{what}: measured {measured:,} but the formula gives {formula:,}")


def agrees(computed: float, published: float) -> bool:
    """Published figures are rounded or truncated to the digits they print.

    The digits are read from the float, so "4.0" counts as "4" (a looser test only where
    the tenths are zero).
    """
    d = 0 if float(published).is_integer() else len(repr(float(published)).split(".")[1])
    scale = 10 ** d
    return math.isclose(published, round(computed, d)) or \
        math.isclose(published, math.floor(computed * scale) / scale)


def to_dict(obj: object) -> object:
    """A result as JSON-ready data: dataclass fields *and* properties (the differences,
    ratios and marks the text shows), recursively."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
        for name, attr in vars(type(obj)).items():
            if isinstance(attr, property):
                out[name] = to_dict(getattr(obj, name))
        return out
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
