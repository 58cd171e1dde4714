"""Every convention that differs between MobileNet implementations, decided once.

torchvision, timm, Keras and TF-slim build "the same" MobileNets with small differences
that change parameter counts or outputs (SPEC §7). This module is the single place where
this project chooses, and the single place a reader must check:

1. **Width multiplier name** (§7.1): ``width_mult`` everywhere (Keras ``alpha``, timm
   ``channel_multiplier``/``_075`` and TF-slim ``depth_multiplier`` are mapped on import).
2. **Width convention** (§7.2, §7.3): ``"torchvision"`` (default) or ``"tf"``.

   * ``"torchvision"``: every channel count of the paper's table is scaled and rounded on
     its own, ``make_divisible(c * width_mult, 8)``; V3's expansion width is the scaled
     "exp size" column; V2's last conv is ``1280 * max(1, width_mult)``; V3's head width
     is scaled as well (torchvision ``adjust_channels(1280)``).
   * ``"tf"`` (TF-slim, Keras, timm): V3's expansion width is the *rounded input width
     times the expansion ratio* of the paper's row and V3's head width is scaled only above
     1.0; V1 channels are ``int(c * width_mult)`` without rounding (Keras ``MobileNet``).
     The V3 stem is ``make_divisible(16 * width_mult, 8)`` in TF-slim (whose checkpoint
     table we reproduce); Keras keeps 16 always and timm below 0.75: the converters pass
     ``stem_channels=16`` for their weights.
   Both give identical networks at width 1.0. Only ``"tf"`` loads TF/Keras/timm weights
   at other widths.
3. **``depth_multiplier``** (§7.4) means the V1 paper's depthwise channel multiplier only.
4. **Rounding** (§7.5): :func:`make_divisible`, the rule of TF-slim, torchvision and timm.
5. **BatchNorm** (§7.6): PyTorch's ``momentum`` is ``1 - decay`` of TF/Keras. Defaults follow
   the reference code that trained the published weights: V1/V2 ``eps=1e-5, momentum=0.1``
   (torchvision V2, timm), V3 ``eps=1e-3, momentum=0.01`` (torchvision V3, TF decay 0.99).
6. **Padding** (§7.7): ``"symmetric"`` (PyTorch, ``k // 2`` on every side, default) or
   ``"same"`` (TensorFlow 'SAME': stride-2 convolutions pad bottom/right by one more pixel
   on even inputs, exactly what Keras' ``correct_pad`` + 'valid' does). Keras' V1 pads
   ``(0, 1)`` unconditionally; on the even sizes of a 224 input that is the same thing.
7. **Classes** (§7.8): no background class; TF-slim's 1001-class checkpoints need slicing.
8. **Preprocessing** (§7.9): weights carry their normalisation; see :data:`IMAGENET_MEAN`,
   :data:`TF_MEAN` and the checkpoint metadata written by training.
9. **Heads** (§7.10): classifiers are ``nn.Linear`` after global average pooling. A 1×1
   convolution on a 1×1 map is the same maths; converters reshape timm/Keras conv heads.
10. **Activations** (§7.11): ``nn.Hardsigmoid`` = ReLU6(x+3)/6 and ``nn.Hardswish`` =
    x·ReLU6(x+3)/6, PyTorch's built-ins (they export natively to ONNX). V1 uses ReLU6, as
    TF-slim, Keras and timm do (the paper writes ReLU; we follow the code that trained the
    published weights).
11. **MAdds** (§7.12): multiply-adds of convolutions and linear layers, as the papers count;
    FLOPs = 2 × MAdds. :mod:`mobilenets.analysis.profile` reports MAdds.
"""

from __future__ import annotations

import numbers
from typing import Literal

from ..errors import MobilenetsError, did_you_mean

WidthConvention = Literal["torchvision", "tf"]
Padding = Literal["symmetric", "same"]

WIDTH_CONVENTIONS: tuple[str, ...] = ("torchvision", "tf")
PADDINGS: tuple[str, ...] = ("symmetric", "same")

#: ImageNet statistics used by torchvision and timm weights (RGB, inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: TF/Keras weights expect inputs scaled to [-1, 1]: (x - 0.5) / 0.5 on [0, 1] inputs.
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)

#: Default BatchNorm settings per version (PyTorch momentum = 1 - TF decay).
BN_DEFAULTS: dict[str, tuple[float, float]] = {
    "v1": (1e-5, 0.1),
    "v2": (1e-5, 0.1),
    "v3": (1e-3, 0.01),
}


#: The widest network the constructors build: 16× the papers' channels is already far
#: past any published MobileNet (1.4×); beyond, a typo (``--width-mult 1e6``) would try to
#: allocate terabytes.
MAX_WIDTH_MULT = 16.0


def check_width_mult(width_mult: float) -> None:
    """One clear error for a width multiplier that is not a number in (0, 16]."""
    if isinstance(width_mult, bool) or not (isinstance(width_mult, numbers.Real)
                                            and 0 < width_mult <= MAX_WIDTH_MULT):
        raise MobilenetsError(f"width_mult must be in (0, {MAX_WIDTH_MULT:g}], got {width_mult}")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never more than 10% below ``v``.

    This is the rule of TF-slim's ``_make_divisible`` that torchvision, timm and Keras copy;
    every width-multiplied channel count in those libraries goes through it.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise :class:`MobilenetsError`."""
    if value not in choices:
        raise MobilenetsError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                              f"got {value!r}{did_you_mean(str(value), choices)}")
    return value
