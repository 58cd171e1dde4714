"""MobileNetV1: Howard et al. 2017, "MobileNets" (arXiv:1704.04861).

A 3×3 convolution followed by 13 depthwise-separable blocks (Table 1), average pooling and
one fully connected layer: 28 layers counting depthwise and pointwise separately.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from ..errors import MobilenetsError

from ..models.blocks import DepthwiseSeparable
from ..models.conventions import (BN_DEFAULTS, PADDINGS, WIDTH_CONVENTIONS, Padding, WidthConvention,
                          check_choice, check_width_mult, make_divisible)
from ..models.base import MobileNet, downsampling
from ..models.layers import ConvNormAct


class DW(NamedTuple):
    """One "Conv dw / s" + "Conv / s1 (1×1)" pair of V1 Table 1."""

    c: int  # filters of the 1×1 pointwise conv
    s: int  # stride of the 3×3 depthwise conv


# MobileNetV1 body, Table 1 of arXiv:1704.04861. Stem: Conv / s2, 3×3×3×32.
STEM_CHANNELS, STEM_STRIDE = 32, 2
#        c     s
TABLE_1 = (
    DW(64, 1),
    DW(128, 2),
    DW(128, 1),
    DW(256, 2),
    DW(256, 1),
    DW(512, 2),
    DW(512, 1),  # 5× (rows 1 of 5)
    DW(512, 1),
    DW(512, 1),
    DW(512, 1),
    DW(512, 1),  # 5× (row 5 of 5)
    DW(1024, 2),
    DW(1024, 1),  # printed "s2" in the paper, a typo (SPEC §1.2): slim and Keras use s1
)


class MobileNetV1(MobileNet):
    """MobileNetV1 with width multiplier α (``width_mult``) and depth multiplier.

    The resolution multiplier ρ is the input size: every layer is fully convolutional
    until global pooling, so a 160 px input is the paper's ρ = 160/224.

    Args:
        num_classes: classifier outputs; 0 removes the classifier (returns pooled features).
        in_chans: input channels (1 for grayscale).
        width_mult: α, scales every layer's channels (SPEC §1.1 eq. 6).
        depth_multiplier: depthwise channel multiplier (V1 paper / Keras sense, SPEC §7.4).
        dropout: dropout before the classifier (Keras' default 1e-3).
        bn_eps, bn_momentum: BatchNorm settings (PyTorch momentum = 1 - TF decay).
        padding: "symmetric" (PyTorch) or "same" (TF/Keras weights), see conventions.
        width_convention: "torchvision" rounds channels with make_divisible(c·α, 8);
            "tf" truncates int(c·α) as Keras and TF-slim do.
        small_input: for 28-64 px images: stem stride 1 and the first stride-2 block at
            stride 1, so the network downsamples 8× instead of 32×.
        output_stride: total downsampling (a power of 2); the last stride-2 blocks go to
            stride 1 until it is reached (``base.downsampling``). ``None``: 32, or 8 with
            ``small_input``.
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 depth_multiplier: int = 1, dropout: float = 1e-3,
                 bn_eps: float = BN_DEFAULTS["v1"][0], bn_momentum: float = BN_DEFAULTS["v1"][1],
                 padding: Padding = "symmetric", width_convention: WidthConvention = "torchvision",
                 small_input: bool = False, output_stride: int | None = None,
                 table: tuple[DW, ...] = TABLE_1) -> None:
        check_choice("padding", padding, PADDINGS)
        check_choice("width_convention", width_convention, WIDTH_CONVENTIONS)
        check_width_mult(width_mult)
        if depth_multiplier < 1 or int(depth_multiplier) != depth_multiplier:
            raise MobilenetsError(f"depth_multiplier must be a positive integer, got {depth_multiplier}")

        def width(c: int) -> int:
            if width_convention == "tf":
                return max(int(c * width_mult), 1)
            return make_divisible(c * width_mult, 8)

        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)
        stem_stride, *strides = downsampling([STEM_STRIDE, *(row.s for row in table)],
                                             small_input=small_input, output_stride=output_stride)
        channels = width(STEM_CHANNELS)
        layers: list[nn.Module] = [ConvNormAct(in_chans, channels, 3, stem_stride, act="RE6", **norm)]
        for row, stride in zip(table, strides):
            out = width(row.c)
            layers.append(DepthwiseSeparable(channels, out, stride,
                                             depth_multiplier=int(depth_multiplier), **norm))
            channels = out
        super().__init__(layers, num_classes=num_classes, dropout=dropout)
