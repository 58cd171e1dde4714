"""The CPU versions of the models' layers that :func:`mobilenets.ops.cpu.optimize` swaps in.

Each is a subclass of the plain module it replaces, with the same children, parameters and
state-dict keys, computing the same values; only how the CPU computes them differs:

* :class:`OutOfPlaceReLU6`: no input clone for autograd;
* :class:`ChannelsLastAvgPool` and :class:`ChannelsLastSqueezeExcite`: a pooling whose
  gradient keeps the input's memory format;
* :class:`CpuDepthwiseConvNormAct`: fp32 depthwise convolutions under CPU autocast, and
  :class:`~mobilenets.ops.depthwise.SmallMapDepthwise`'s weight gradient for kernels wider
  than the map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import ConvNormAct, SqueezeExcite
from ..ops.depthwise import depthwise_conv2d


class OutOfPlaceReLU6(nn.ReLU6):
    """``nn.ReLU6`` that works in place only where autograd does not record it.

    The in-place op's recorded backward reads its *input*, which the op overwrites, so
    autograd first copies every input: a full clone per layer, 4-5 % of a V2 training step
    on the CPU. Out of place the input is just kept. Without autograd (inference,
    ``no_grad``) it stays in place, saving the output's memory.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = self.inplace and not (torch.is_grad_enabled() and x.requires_grad)
        return F.hardtanh(x, 0.0, 6.0, inplace)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The mean over H and W, ``(N, C, 1, 1)``: the pooling of the head and of squeeze-excite.

    In training this is aten's adaptive average pooling, whose backward keeps the input's
    memory format. ``x.mean`` (which ``nn.AdaptiveAvgPool2d(1)`` calls) expands its gradient
    into an NCHW tensor, so with a channels_last network the BatchNorm backward and the
    gradient sums that follow mix layouts and run 3-5× slower on the CPU: 7 % of a V3-Large
    training step (``benchmarks/memory_format.py``). Without autograd, or traced for export,
    it is ``x.mean``.
    """
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
        return torch.ops.aten._adaptive_avg_pool2d(x, [1, 1])
    return x.mean((2, 3), keepdim=True)


class ChannelsLastAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` computed by :func:`global_avg_pool`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)


class ChannelsLastSqueezeExcite(SqueezeExcite):
    """:class:`~mobilenets.models.layers.SqueezeExcite` pooled by :func:`global_avg_pool`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = global_avg_pool(x)  # (N, C, 1, 1)
        s = self.act(self.fc1(s))
        s = self.gate(self.fc2(s))
        return x * s


class CpuDepthwiseConvNormAct(ConvNormAct):
    """A depthwise :class:`~mobilenets.models.layers.ConvNormAct` around two gaps in
    oneDNN's CPU kernels; on other devices, and scripted, it is the plain layer.

    Under CPU autocast the convolution runs in fp32: oneDNN's bf16 depthwise kernels
    measured up to 17× slower than its fp32 ones (forward + backward,
    ``benchmarks/cpu_kernels.py``), while the pointwise convolutions, where bf16 pays, stay
    under autocast (not for a model cast to bf16). In training, with ``small_map_wgrad``,
    kernels wider than the map take :class:`~mobilenets.ops.depthwise.SmallMapDepthwise`'s
    weight gradient (:func:`~mobilenets.ops.depthwise.depthwise_conv2d`).
    """

    #: Set per layer by :func:`mobilenets.ops.cpu.optimize`.
    small_map_wgrad = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and x.device.type == "cpu":
            return self._cpu_forward(x)
        for layer in self:
            x = layer(x)
        return x

    @torch.jit.unused
    def _cpu_forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv2d = self.conv
        if torch.is_autocast_enabled("cpu") and conv.weight.dtype == torch.float32:
            with torch.autocast("cpu", enabled=False):
                x = self._conv(conv, x.float())
        else:
            x = self._conv(conv, x)
        for layer in list(self)[1:]:
            x = layer(x)
        return x

    @torch.jit.unused
    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(conv, x) if self.small_map_wgrad else conv(x)
