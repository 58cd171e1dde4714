"""The two primitives every MobileNet is made of: conv-norm-activation and squeeze-excite.

``ConvNormAct`` is an ``nn.Sequential`` with named children ``conv``, ``bn`` and (when there
is a nonlinearity) ``act``, so that quantization and export tools can fuse it by name and
state-dict keys read ``...dw.conv.weight``, ``...dw.bn.running_var``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..models.conventions import Padding

#: The papers' nonlinearity notation (V3 Tables 1-2 "NL" column), mapped once to modules.
#: "RE6" is ReLU6, the activation of V1 and V2 (V2 §3: "We use ReLU6 as the non-linearity").
Act = Literal["RE", "RE6", "HS"]


class ReLU6(nn.ReLU6):
    """``nn.ReLU6`` that works in place only where autograd does not record it.

    The in-place op's recorded backward reads its *input*, which the op overwrites, so
    autograd first copies every input: a full clone per layer, 4-5 % of a V2 training step
    on the CPU. Out of place the input is just kept. Without autograd (inference,
    ``no_grad``) it stays in place, saving the output's memory.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = self.inplace and not (torch.is_grad_enabled() and x.requires_grad)
        return F.hardtanh(x, 0.0, 6.0, inplace)


ACTIVATIONS: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "RE6": ReLU6, "HS": nn.Hardswish}


def make_act(nl: Act | None) -> nn.Module:
    """Return a fresh activation module for the paper's NL notation (``None``: identity)."""
    if nl is None:
        return nn.Identity()
    return ACTIVATIONS[nl](inplace=True) if nl != "HS" else nn.Hardswish()


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


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` computed by :func:`global_avg_pool`."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.depthwise and x.device.type == "cpu":
                return self._cpu_depthwise(x)
        for layer in self:
            x = layer(x)
        return x

    @torch.jit.unused
    def _cpu_depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise layer on the CPU, around two gaps in oneDNN's kernels.

        Under CPU autocast the convolution runs in fp32: oneDNN's bf16 depthwise kernels
        measured up to 17× slower than its fp32 ones (forward + backward,
        ``benchmarks/cpu_kernels.py``), while the pointwise convolutions, where bf16 pays,
        stay under autocast (not for a model cast to bf16). In training, see
        :func:`depthwise_conv2d`.
        """
        if torch.is_autocast_enabled("cpu") and self.conv.weight.dtype == torch.float32:
            with torch.autocast("cpu", enabled=False):
                x = depthwise_conv2d(self.conv, x.float())
        else:
            x = depthwise_conv2d(self.conv, x)
        for layer in list(self)[1:]:
            x = layer(x)
        return x


def depthwise_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a depthwise ``conv``, with :class:`SmallMapDepthwise`'s weight gradient
    where the kernel is wider than the map (V3's 5×5 layers on the 4×4 maps of the
    small-input stem), which oneDNN computes slowly: ×5.9-7.2 slower on an AVX2 CPU, ×1.4
    on an AVX-512 Intel Xeon (``benchmarks/cpu_kernels.py --parts small-map``)."""
    if not (SMALL_MAP_WGRAD and torch.is_grad_enabled() and conv.weight.requires_grad
            and conv.bias is None and conv.dilation == (1, 1)
            and max(x.shape[-2:]) < max(conv.kernel_size)):
        return conv(x)
    if isinstance(conv, Conv2dSame):
        return SmallMapDepthwise.apply(conv.pad(x), conv.weight, conv.stride, (0, 0))
    return SmallMapDepthwise.apply(x, conv.weight, conv.stride, conv.padding)


#: Whether :func:`depthwise_conv2d` uses :class:`SmallMapDepthwise`; ``False`` keeps oneDNN's
#: kernels (the training benchmark's plain baseline).
SMALL_MAP_WGRAD: bool = True


class SmallMapDepthwise(torch.autograd.Function):
    """A depthwise convolution (no bias) whose weight gradient is one batched matmul.

    On AVX2 CPUs oneDNN's depthwise weight gradient takes 122 ms for V3-Small's 576-channel
    5×5 layer on a 256 × 4×4 batch (2 threads), where the forward takes 1.3 ms; this takes
    21 ms (``benchmarks/cpu_kernels.py --parts small-map``). On such small maps every
    output pixel meets every input pixel, so per channel ``M = Σₙ grad[n]ᵀ x[n]`` (an
    ``(HₒWₒ) × (HW)`` matrix) holds every product the gradient needs, and each tap sums a
    fixed subset of its entries (:func:`_tap_selection`). The input gradient is oneDNN's,
    which is fast.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0),
                weight.shape[0], (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = small_map_depthwise_wgrad(grad, x, weight.shape[-2], weight.shape[-1],
                                               list(ctx.stride), list(ctx.padding)).to(weight.dtype)
        return grad_x, grad_w, None, None


@torch.library.custom_op("mobilenets::small_map_depthwise_wgrad", mutates_args=())
def small_map_depthwise_wgrad(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int,
                              stride: list[int], padding: list[int]) -> torch.Tensor:
    """:class:`SmallMapDepthwise`'s weight gradient, ``(C, 1, kh, kw)`` in ``x``'s dtype.

    A custom operator, so that ``torch.compile`` calls it as one opaque kernel instead of
    tracing the Python that builds the tap selection.
    """
    n, c, h, w = x.shape
    ho, wo = grad.shape[-2:]
    # (N, C, H, W) in any memory format → (C, N, H·W): one 2-D transpose of NHWC.
    xs = x.permute(0, 2, 3, 1).reshape(n * h * w, c).t().contiguous().view(c, n, h * w)
    gs = grad.permute(0, 2, 3, 1).reshape(n * ho * wo, c).t().contiguous().view(c, n, ho * wo)
    products = torch.bmm(gs.transpose(1, 2), xs).view(c, ho * wo * h * w)
    taps = _tap_selection(ho, wo, h, w, kh, kw, *stride, *padding)
    return (products @ taps.to(products.dtype)).view(c, 1, kh, kw)


@small_map_depthwise_wgrad.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int, stride: list[int],
      padding: list[int]) -> torch.Tensor:
    return x.new_empty((x.shape[1], 1, kh, kw))


@functools.cache
def _tap_selection(ho: int, wo: int, h: int, w: int, kh: int, kw: int, sh: int, sw: int,
                   ph: int, pw: int) -> torch.Tensor:
    """The 0/1 matrix mapping (output pixel, input pixel) pairs to the kernel tap that
    joins them: tap (i, j) joins output (y, x) to input (y·sh + i − ph, x·sw + j − pw)."""
    taps = torch.zeros(ho * wo * h * w, kh * kw)
    for y in range(ho):
        for x in range(wo):
            for i in range(kh):
                for j in range(kw):
                    iy, ix = y * sh + i - ph, x * sw + j - pw
                    if 0 <= iy < h and 0 <= ix < w:
                        taps[((y * wo + x) * h + iy) * w + ix, i * kw + j] = 1
    return taps


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
        s = global_avg_pool(x)  # (N, C, 1, 1)
        s = self.act(self.fc1(s))
        s = self.gate(self.fc2(s))
        return x * s
