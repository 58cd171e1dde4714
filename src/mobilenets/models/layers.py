"""The two primitives every MobileNet is made of: conv-norm-activation and squeeze-excite.

``ConvNormAct`` is an ``nn.Sequential`` with named children ``conv``, ``bn`` and (when there
is a nonlinearity) ``act``, so that quantization and export tools can fuse it by name and
state-dict keys read ``...dw.conv.weight``, ``...dw.bn.running_var``.

Everything here is plain ``torch.nn``: the CPU speed-ups that used to live in these layers
are applied to a built model by :func:`mobilenets.ops.cpu.optimize`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..models.conventions import Padding

#: The papers' nonlinearity notation (V3 Tables 1-2 "NL" column), mapped once to modules.
#: "RE6" is ReLU6, the activation of V1 and V2 (V2 §3: "We use ReLU6 as the non-linearity").
Act = Literal["RE", "RE6", "HS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "RE6": nn.ReLU6, "HS": nn.Hardswish}


def make_act(nl: Act | None) -> nn.Module:
    """Return a fresh activation module for the paper's NL notation (``None``: identity)."""
    if nl is None:
        return nn.Identity()
    return ACTIVATIONS[nl](inplace=True) if nl != "HS" else nn.Hardswish()


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow 'SAME' padding, computed from the input size.

    TF pads ``total = max((ceil(i/s) - 1)·s + k - i, 0)`` pixels, the smaller half on the
    top/left. For stride 2 on an even input this is one pixel more on the bottom/right than
    PyTorch's symmetric padding, which is why TF/Keras weights need it (SPEC §7.7).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0,
                         groups=groups, bias=bias)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded as TF 'SAME' would for this kernel and stride."""
        ih, iw = x.shape[-2], x.shape[-1]
        kh, kw = self.weight.shape[-2], self.weight.shape[-1]
        sh, sw = self.stride[0], self.stride[1]
        pad_h = max((ih + sh - 1) // sh * sh - sh + kh - ih, 0)
        pad_w = max((iw + sw - 1) // sw * sw - sw + kw - iw, 0)
        return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def make_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
              groups: int = 1, bias: bool = False, padding: Padding = "symmetric") -> nn.Conv2d:
    """A 2-D convolution with the project's padding convention applied.

    With odd kernels at stride 1, TF 'SAME' equals symmetric padding, so only strided
    convolutions need :class:`Conv2dSame`.
    """
    if padding == "same" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups, bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                     groups=groups, bias=bias)


class ConvNormAct(nn.Sequential):
    """Convolution (no bias), BatchNorm, optional activation: every layer of V1, V2 and V3
    except the squeeze-excite FCs and the classifier head."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: Act | None = "RE6", *, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: Padding = "symmetric") -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = make_conv(in_channels, out_channels, kernel_size, stride, groups,
                                   padding=padding)
        layers["bn"] = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if act is not None:
            layers["act"] = make_act(act)
        super().__init__(layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.depthwise = groups > 1 and groups == in_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite as MobileNetV3 uses it (SPEC §3.1, §7.11).

    Global average pool, 1×1 conv (with bias) down to ``squeeze_channels``, ReLU, 1×1 conv
    back, hard-sigmoid gate, channel-wise product. It sits after the depthwise conv's
    activation, as in the paper, TF-slim, torchvision, timm and Keras.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        s = self.act(self.fc1(s))
        s = self.gate(self.fc2(s))
        return x * s


#: Names this module had before the CPU speed-ups moved out of the models (issue 27).
_MOVED = {"ReLU6": "mobilenets.ops.layers.OutOfPlaceReLU6",
          "global_avg_pool": "mobilenets.ops.layers.global_avg_pool",
          "GlobalAvgPool": "mobilenets.ops.layers.ChannelsLastAvgPool",
          "SmallMapDepthwise": "mobilenets.ops.depthwise.SmallMapDepthwise",
          "depthwise_conv2d": "mobilenets.ops.depthwise.depthwise_conv2d",
          "small_map_depthwise_wgrad": "mobilenets.ops.depthwise.small_map_depthwise_wgrad",
          "SMALL_MAP_WGRAD": "mobilenets.ops.cpu.optimize(model, small_map_wgrad=...)"}


def __getattr__(name: str) -> object:
    # ImportError, not AttributeError: ``from ... import`` replaces the latter's message.
    if name in _MOVED:
        raise ImportError(f"mobilenets.models.layers.{name} moved to {_MOVED[name]}: the models "
                          "are plain torch.nn; apply the CPU speed-ups with "
                          "mobilenets.ops.cpu.optimize(model)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
