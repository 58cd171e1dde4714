"""Model names → builders, and ``create_model``: the one way to get a network by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from .base import FeatureMaps, MobileNet
from .errors import MobilenetsError, did_you_mean
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import LARGE, LARGE_HEAD, SMALL, SMALL_HEAD, MobileNetV3, minimalistic

_REGISTRY: dict[str, Callable[..., MobileNet]] = {}


def register(fn: Callable[..., MobileNet]) -> Callable[..., MobileNet]:
    _REGISTRY[fn.__name__] = fn
    return fn


@register
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """MobileNetV1 (Table 1 of arXiv:1704.04861)."""
    return MobileNetV1(**kwargs)


@register
def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNetV2 (Table 2 of arXiv:1801.04381)."""
    return MobileNetV2(**kwargs)


@register
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large (Table 1 of arXiv:1905.02244)."""
    return MobileNetV3(LARGE, LARGE_HEAD, **kwargs)


@register
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small (Table 2 of arXiv:1905.02244)."""
    return MobileNetV3(SMALL, SMALL_HEAD, **kwargs)


@register
def mobilenet_v3_large_minimal(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large minimalistic (TF-slim): no SE, ReLU only, 3×3 kernels."""
    return MobileNetV3(minimalistic(LARGE), LARGE_HEAD, act="RE", **kwargs)


@register
def mobilenet_v3_small_minimal(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small minimalistic (TF-slim): no SE, ReLU only, 3×3 kernels."""
    return MobileNetV3(minimalistic(SMALL), SMALL_HEAD, act="RE", **kwargs)


_CLASSES: dict[str, type[MobileNet]] = {
    "mobilenet_v1": MobileNetV1, "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_large": MobileNetV3, "mobilenet_v3_small": MobileNetV3,
    "mobilenet_v3_large_minimal": MobileNetV3, "mobilenet_v3_small_minimal": MobileNetV3,
}
# Arguments that the builders fix themselves and users may not pass.
_FIXED = {"self", "table", "head_channels", "act"}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options ``name`` accepts, with their defaults."""
    check_model_name(name)
    params = inspect.signature(_CLASSES[name].__init__).parameters
    return {k: p for k, p in params.items() if k not in _FIXED}


def check_model_name(name: str) -> str:
    if name not in _REGISTRY:
        raise MobilenetsError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; "
                              f"available: {', '.join(list_models())}")
    return name


def create_model(name: str, *, features_only: bool = False, **kwargs) -> nn.Module:
    """Build a registered MobileNet.

    ``kwargs`` are the constructor options (``num_classes``, ``in_chans``, ``width_mult``,
    ``dropout``, ``bn_eps``, ``bn_momentum``, ``padding``, ``width_convention``,
    ``small_input``; V1 also ``depth_multiplier``). ``features_only=True`` returns a module
    whose ``forward`` gives the stride 2/4/8/16/32 feature maps (see ``feature_info``).
    An unknown name or option raises :class:`MobilenetsError` naming the closest valid one.
    """
    options = model_options(name)
    for key in kwargs:
        if key not in options:
            raise MobilenetsError(f"{name} has no option {key!r}{did_you_mean(key, options)}; "
                                  f"options: {', '.join(options)}")
    in_chans = kwargs.get("in_chans", 3)
    if isinstance(in_chans, int) and in_chans < 1:
        raise MobilenetsError(f"in_chans must be >= 1, got {in_chans}")
    model = _REGISTRY[name](**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return FeatureMaps(model) if features_only else model
