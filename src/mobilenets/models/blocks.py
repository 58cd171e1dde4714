"""The two MobileNet blocks: V1's depthwise-separable convolution and V2/V3's inverted residual."""

from __future__ import annotations

import torch
from torch import nn

from ..models.conventions import Padding
from ..models.layers import Act, ConvNormAct, SqueezeExcite


class DepthwiseSeparable(nn.Module):
    """MobileNetV1's block (V1 Figure 3): 3×3 depthwise conv, BN, ReLU6, then 1×1 conv, BN, ReLU6.

    ``depth_multiplier`` is the V1 paper's depthwise channel multiplier: the depthwise conv
    produces ``in_channels * depth_multiplier`` maps (Keras ``DepthwiseConv2D(depth_multiplier)``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *,
                 depth_multiplier: int = 1, act: Act = "RE6", bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: Padding = "symmetric") -> None:
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)
        dw_channels = in_channels * depth_multiplier
        self.dw = ConvNormAct(in_channels, dw_channels, 3, stride, groups=in_channels, act=act, **bn)
        self.pw = ConvNormAct(dw_channels, out_channels, 1, act=act, **bn)
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(x)
        x = self.pw(x)
        return x


class InvertedResidual(nn.Module):
    """The V2 bottleneck (V2 Table 1), with V3's optional squeeze-excite and per-row NL.

    expand (1×1, NL; absent when ``exp == in``) → depthwise k×k stride s (NL) → SE (V3) →
    linear 1×1 projection (no NL: the "linear bottleneck") → + input when stride 1 and
    ``in == out``. ``project_act`` exists only for the V2 linear-bottleneck ablation.
    """

    def __init__(self, in_channels: int, exp_channels: int, out_channels: int, kernel_size: int,
                 stride: int, *, se_channels: int = 0, act: Act = "RE6",
                 project_act: Act | None = None, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 padding: Padding = "symmetric") -> None:
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.expand: nn.Module = (ConvNormAct(in_channels, exp_channels, 1, act=act, **bn)
                                  if exp_channels != in_channels else nn.Identity())
        self.dw = ConvNormAct(exp_channels, exp_channels, kernel_size, stride,
                              groups=exp_channels, act=act, **bn)
        self.se: nn.Module = (SqueezeExcite(exp_channels, se_channels) if se_channels
                              else nn.Identity())
        self.project = ConvNormAct(exp_channels, out_channels, 1, act=project_act, **bn)
        self.in_channels = in_channels
        self.exp_channels = exp_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x)
        out = self.dw(out)
        out = self.se(out)
        out = self.project(out)
        if self.use_res_connect:
            out = out + x
        return out
