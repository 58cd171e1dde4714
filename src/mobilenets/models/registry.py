"""Model names → builders, and ``create_model``: the one way to get a network by name."""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from ..models.base import FeatureMaps, MobileNet
from ..models.conventions import MAX_WIDTH_MULT, check_choice
from ..errors import MobilenetsError, did_you_mean
from ..models.layers import ACTIVATIONS
from ..models.mobilenet_v1 import MobileNetV1
from ..models.mobilenet_v2 import MobileNetV2
from ..models.mobilenet_v3 import LARGE, LARGE_HEAD, SMALL, SMALL_HEAD, MobileNetV3, minimalistic

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


#: Ranges of the numeric options, ``(low, high, low_open, high_open)``: what a network can be
#: built from, and, far beyond any real network, tight enough that a corrupt checkpoint
#: cannot make us allocate terabytes before its tensor shapes are compared.
OPTION_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "num_classes": (0, 1_000_000, False, False), "in_chans": (1, 4096, False, False),
    "width_mult": (0.0, MAX_WIDTH_MULT, True, False), "depth_multiplier": (1, 64, False, False),
    "stem_channels": (1, 16384, False, False), "output_stride": (1, 32, False, False), "dropout": (0.0, 1.0, False, True),
    "bn_eps": (0.0, 1.0, True, False), "bn_momentum": (0.0, 1.0, False, False)}


#: Integer options whose default, ``None``, means "the architecture's own".
_OPTIONAL_INTS = ("stem_channels", "output_stride")


def check_options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` checked against ``name``'s options (known names, the types of their
    defaults, :data:`OPTION_RANGES`, activation names), as plain Python values (a numpy
    float becomes a float), so that what builds also saves and loads."""
    options = model_options(name)
    plain: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in options:
            raise MobilenetsError(f"{name} has no option {key!r}{did_you_mean(key, options)}; "
                                  f"options: {', '.join(options)}")
        default = options[key].default
        integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok, kind = isinstance(value, (bool, np.bool_)), "true or false"
            value = bool(value) if ok else value
        elif isinstance(default, int) or key in _OPTIONAL_INTS:
            ok, kind = integral or (key in _OPTIONAL_INTS and value is None), "an integer"
            value = int(value) if integral else value
        elif isinstance(default, float):
            ok, kind = real, "a number"
            # float() of an integer beyond 1e308 overflows: such an integer stays one, and the
            # range check below rejects it
            value = float(value) if real and not (integral and abs(value) > 1e300) else value
        else:  # strings, and project_act's None
            ok, kind = isinstance(value, str) or (default is None and value is None), "a string"
            if ok and key == "project_act" and value is not None:
                check_choice(key, value, tuple(ACTIVATIONS))
        if not ok:
            raise MobilenetsError(f"{key} must be {kind}, got {value!r}")
        if key in OPTION_RANGES and value is not None:
            lo, hi, lo_open, hi_open = OPTION_RANGES[key]
            inside = (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
            if not inside:  # NaN fails both comparisons
                lo_s, hi_s = (f"{v:g}" if isinstance(v, float) else str(v) for v in (lo, hi))
                raise MobilenetsError(f"{key} must be in {'(' if lo_open else '['}{lo_s}, {hi_s}"
                                      f"{')' if hi_open else ']'}, got {value}")
        plain[key] = value
    return plain


def create_model(name: str, *, features_only: bool = False,
                 pretrained: bool | str | os.PathLike = False, **kwargs) -> nn.Module:
    """Build a registered MobileNet, optionally with published or given weights.

    ``kwargs`` are the constructor options (``num_classes``, ``in_chans``, ``width_mult``,
    ``dropout``, ``bn_eps``, ``bn_momentum``, ``padding``, ``width_convention``,
    ``small_input``; V1 also ``depth_multiplier``). ``features_only=True`` returns a module
    whose ``forward`` gives the stride 2/4/8/16/32 feature maps (see ``feature_info``).
    An unknown name or option raises :class:`MobilenetsError` naming the closest valid one.
    ``pretrained``: a weights tag (``mobilenets weights`` lists them), ``True`` (the default
    weights for this model and width), a weights file or an http(s) URL; see docs/weights.md.
    """
    kwargs = check_options(name, kwargs)
    if pretrained is not False and pretrained is not None:
        from ..io.weights import pretrained_model  # lazy: io builds its models through this module

        model = pretrained_model(name, pretrained, kwargs)
        return FeatureMaps(model) if features_only else model
    model = _REGISTRY[name](**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return FeatureMaps(model) if features_only else model
