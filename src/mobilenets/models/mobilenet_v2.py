"""MobileNetV2: Sandler et al. 2018, "Inverted Residuals and Linear Bottlenecks" (arXiv:1801.04381).

A 32-filter 3×3 convolution, 17 inverted-residual bottlenecks (Table 2; the text's "19" is
a miscount, SPEC §2.1), a 1×1 convolution to 1280 channels, pooling and a classifier.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


from ..models.base import MobileNet, downsampling
from ..models.blocks import InvertedResidual
from ..models.conventions import (BN_DEFAULTS, PADDINGS, WIDTH_CONVENTIONS, Padding, WidthConvention,
                          check_choice, check_width_mult, make_divisible)
from ..models.layers import Act, ConvNormAct


class Bottleneck(NamedTuple):
    """One row of V2 Table 2: a sequence of n bottlenecks, the first with stride s."""

    t: int  # expansion factor
    c: int  # output channels
    n: int  # repeats
    s: int  # stride of the first block


# MobileNetV2 body, Table 2 of arXiv:1801.04381. Stem: conv2d 3×3, 32 filters, stride 2.
STEM_CHANNELS, STEM_STRIDE = 32, 2
#               t    c  n  s
TABLE_2 = (
    Bottleneck(1,  16, 1, 1),
    Bottleneck(6,  24, 2, 2),
    Bottleneck(6,  32, 3, 2),
    Bottleneck(6,  64, 4, 2),
    Bottleneck(6,  96, 3, 1),
    Bottleneck(6, 160, 3, 2),
    Bottleneck(6, 320, 1, 1),
)
LAST_CHANNELS = 1280  # conv2d 1×1; kept at 1280 below width 1.0 (V2 §6.1, torchvision, slim)


class MobileNetV2(MobileNet):
    """MobileNetV2 with width multiplier.

    Args:
        num_classes: classifier outputs; 0 removes the classifier (returns pooled features).
        in_chans: input channels (1 for grayscale).
        width_mult: scales every layer's channels with make_divisible(c·w, 8), except the
            last 1×1 conv which is ``1280 · max(1, w)`` ("we apply width multiplier to all
            layers except the very last convolutional layer").
        dropout: dropout before the classifier (torchvision's 0.2).
        bn_eps, bn_momentum: BatchNorm settings (PyTorch momentum = 1 - TF decay).
        padding: "symmetric" (PyTorch) or "same" (TF/Keras weights).
        width_convention: accepted for uniformity; V2's channel counts are the same under
            torchvision and TF/Keras rounding (SPEC §7.2).
        small_input: for 28-64 px images: stem stride 1 and the first stride-2 bottleneck
            at stride 1 (8× downsampling instead of 32×).
        output_stride: total downsampling (a power of 2); the last stride-2 blocks go to
            stride 1 until it is reached (``base.downsampling``). ``None``: 32, or 8 with
            ``small_input``.
        project_act: nonlinearity after the projection; ``None`` is the paper's linear
            bottleneck, "RE6" exists for the linear-bottleneck ablation (V2 Figure 6).
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, bn_eps: float = BN_DEFAULTS["v2"][0],
                 bn_momentum: float = BN_DEFAULTS["v2"][1], padding: Padding = "symmetric",
                 width_convention: WidthConvention = "torchvision", small_input: bool = False,
                 output_stride: int | None = None, project_act: Act | None = None,
                 table: tuple[Bottleneck, ...] = TABLE_2) -> None:
        check_choice("padding", padding, PADDINGS)
        check_choice("width_convention", width_convention, WIDTH_CONVENTIONS)
        check_width_mult(width_mult)
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)

        channels = make_divisible(STEM_CHANNELS * width_mult, 8)
        stem_stride, *strides = downsampling(
            [STEM_STRIDE, *(row.s if i == 0 else 1 for row in table for i in range(row.n))],
            small_input=small_input, output_stride=output_stride)
        layers: list[nn.Module] = [ConvNormAct(in_chans, channels, 3, stem_stride, act="RE6", **norm)]
        block_strides = iter(strides)
        for row in table:
            out = make_divisible(row.c * width_mult, 8)
            for _ in range(row.n):
                stride = next(block_strides)
                layers.append(InvertedResidual(channels, channels * row.t, out, 3, stride,
                                               act="RE6", project_act=project_act, **norm))
                channels = out
        last = make_divisible(LAST_CHANNELS * max(1.0, width_mult), 8)
        layers.append(ConvNormAct(channels, last, 1, act="RE6", **norm))
        super().__init__(layers, num_classes=num_classes, dropout=dropout)
