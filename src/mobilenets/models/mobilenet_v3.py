"""MobileNetV3: Howard et al. 2019, "Searching for MobileNetV3" (arXiv:1905.02244).

Inverted residuals with per-row kernel, squeeze-excite and nonlinearity found by search
(Tables 1 and 2), a 16-filter h-swish stem and the "efficient last stage": the final 1×1
expansion runs after global pooling, on a 1×1 map (§5.1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from torch import nn


from ..models.base import MobileNet, downsampling
from ..models.blocks import InvertedResidual
from ..models.conventions import (BN_DEFAULTS, PADDINGS, WIDTH_CONVENTIONS, Padding, WidthConvention,
                          check_choice, check_width_mult, make_divisible)
from ..models.layers import Act, ConvNormAct, make_act


class Bneck(NamedTuple):
    """One "bneck" row of V3 Tables 1-2 (the Input column is the previous row's #out)."""

    k: int  # depthwise kernel size
    exp: int  # "exp size": channels of the expansion layer
    out: int  # "#out"
    se: bool  # squeeze-and-excite
    nl: Act  # "RE" = ReLU, "HS" = h-swish
    s: int  # stride


STEM_CHANNELS, STEM_STRIDE = 16, 2  # conv2d 3×3, 16 filters, h-swish (§5.1 "Initial layer")
LAST_EXPANSION = 6  # the final 1×1 conv has 6 × the last bneck's #out (960, 576)

# MobileNetV3-Large, Table 1 of arXiv:1905.02244
#             k  exp  out     se     nl  s
LARGE = (
    Bneck(3,  16,  16, False, "RE", 1),
    Bneck(3,  64,  24, False, "RE", 2),
    Bneck(3,  72,  24, False, "RE", 1),
    Bneck(5,  72,  40, True,  "RE", 2),
    Bneck(5, 120,  40, True,  "RE", 1),
    Bneck(5, 120,  40, True,  "RE", 1),
    Bneck(3, 240,  80, False, "HS", 2),
    Bneck(3, 200,  80, False, "HS", 1),
    Bneck(3, 184,  80, False, "HS", 1),
    Bneck(3, 184,  80, False, "HS", 1),
    Bneck(3, 480, 112, True,  "HS", 1),
    Bneck(3, 672, 112, True,  "HS", 1),
    Bneck(5, 672, 160, True,  "HS", 2),
    Bneck(5, 960, 160, True,  "HS", 1),
    Bneck(5, 960, 160, True,  "HS", 1),
)
LARGE_HEAD = 1280  # conv2d 1×1, NBN, after the 7×7 pool

# MobileNetV3-Small, Table 2 of arXiv:1905.02244
#             k  exp  out     se     nl  s
SMALL = (
    Bneck(3,  16,  16, True,  "RE", 2),
    Bneck(3,  72,  24, False, "RE", 2),
    Bneck(3,  88,  24, False, "RE", 1),
    Bneck(5,  96,  40, True,  "HS", 2),
    Bneck(5, 240,  40, True,  "HS", 1),
    Bneck(5, 240,  40, True,  "HS", 1),
    Bneck(5, 120,  48, True,  "HS", 1),
    Bneck(5, 144,  48, True,  "HS", 1),
    Bneck(5, 288,  96, True,  "HS", 2),
    Bneck(5, 576,  96, True,  "HS", 1),
    Bneck(5, 576,  96, True,  "HS", 1),
)
SMALL_HEAD = 1024
# Table 2 marks SE on the final 1×1 conv (576); TF-slim, torchvision and Keras apply none
# there, and neither do we (SPEC §3.3).


def minimalistic(table: tuple[Bneck, ...]) -> tuple[Bneck, ...]:
    """TF-slim's "minimalistic" variant: same widths, no SE, no h-swish, no 5×5 kernels."""
    return tuple(Bneck(3, r.exp, r.out, False, "RE", r.s) for r in table)


class MobileNetV3(MobileNet):
    """MobileNetV3-Large/Small (and their minimalistic variants) from a bneck table.

    Args:
        table: rows of Table 1 (``LARGE``) or Table 2 (``SMALL``).
        head_channels: width of the 1×1 NBN conv after pooling (1280 Large, 1024 Small).
        num_classes: classifier outputs; 0 removes the classifier.
        in_chans: input channels (1 for grayscale).
        width_mult: channel multiplier, applied per ``width_convention``:
            "torchvision": exp = make_divisible(exp·w, 8), head scaled by w;
            "tf" (TF-slim/Keras/timm): exp = rounded input × (exp / input) of the row, head
            scaled only above 1.0 (SPEC §7.2-7.3).
        dropout: dropout before the classifier (0.2 in torchvision and Keras).
        bn_eps, bn_momentum: BatchNorm settings (torchvision: 1e-3, 0.01 = TF decay 0.99).
        padding: "symmetric" (PyTorch) or "same" (TF/Keras weights).
        small_input: for 28-64 px images: stem stride 1 and the first stride-2 bneck at
            stride 1 (8× downsampling instead of 32×).
        output_stride: total downsampling (a power of 2); the last stride-2 blocks go to
            stride 1 until it is reached (``base.downsampling``). ``None``: 32, or 8 with
            ``small_input``.
        stem_channels: fixed stem width instead of make_divisible(16·w, 8) (TF-slim, whose
            Table 9 this reproduces). Keras always uses 16, timm uses 16 below width 0.75;
            the converters set it for their weights.
        act: nonlinearity of the stem, last conv and head ("RE" for minimalistic).
    """

    def __init__(self, table: tuple[Bneck, ...], head_channels: int, *, num_classes: int = 1000,
                 in_chans: int = 3, width_mult: float = 1.0, dropout: float = 0.2,
                 bn_eps: float = BN_DEFAULTS["v3"][0], bn_momentum: float = BN_DEFAULTS["v3"][1],
                 padding: Padding = "symmetric", width_convention: WidthConvention = "torchvision",
                 small_input: bool = False, output_stride: int | None = None,
                 stem_channels: int | None = None,
                 act: Act = "HS") -> None:
        check_choice("padding", padding, PADDINGS)
        check_choice("width_convention", width_convention, WIDTH_CONVENTIONS)
        check_width_mult(width_mult)
        tf = width_convention == "tf"
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)

        def width(c: float) -> int:
            return make_divisible(c * width_mult, 8)

        channels = stem_channels or width(STEM_CHANNELS)
        stem_stride, *strides = downsampling([STEM_STRIDE, *(row.s for row in table)],
                                             small_input=small_input, output_stride=output_stride)
        layers: list[nn.Module] = [ConvNormAct(in_chans, channels, 3, stem_stride, act=act, **norm)]
        paper_in = STEM_CHANNELS
        for row, stride in zip(table, strides):
            exp = make_divisible(channels * row.exp / paper_in, 8) if tf else width(row.exp)
            out = width(row.out)
            se = make_divisible(exp / 4, 8) if row.se else 0
            layers.append(InvertedResidual(channels, exp, out, row.k, stride, se_channels=se,
                                           act=row.nl, **norm))
            channels, paper_in = out, row.out
        last = make_divisible(LAST_EXPANSION * channels, 8)
        layers.append(ConvNormAct(channels, last, 1, act=act, **norm))
        hidden = make_divisible(head_channels * (max(1.0, width_mult) if tf else width_mult), 8)
        head = nn.Sequential(OrderedDict(fc=nn.Linear(last, hidden), act=make_act(act)))
        super().__init__(layers, num_classes=num_classes, dropout=dropout, head=head,
                         head_hidden_size=hidden)
