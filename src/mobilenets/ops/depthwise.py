"""A depthwise convolution whose weight gradient is one batched matmul, for kernels wider
than the map.

oneDNN computes the weight gradient of such layers (V3's 5×5 layers on the 4×4 maps of the
small-input stem) slowly: ×5.9-7.2 slower on an AVX2 CPU, ×1.4 on an AVX-512 Intel Xeon
(``benchmarks/cpu_kernels.py --parts small-map``). :func:`depthwise_conv2d` routes those
layers through :class:`SmallMapDepthwise` and leaves every other one to oneDNN.

The weight gradient is a ``torch.library`` custom operator, so that ``torch.compile`` calls
it as one opaque kernel; it is registered on first use (:func:`register_small_map_wgrad`),
not at import, so importing this module leaves torch's operator registry as it was.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import Conv2dSame

#: The custom operator's qualified name (``torch.ops.mobilenets.small_map_depthwise_wgrad``).
WGRAD_OP = "mobilenets::small_map_depthwise_wgrad"


def uses_small_map_wgrad(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :func:`depthwise_conv2d` takes :class:`SmallMapDepthwise`'s weight gradient:
    in training, for a bias-free undilated depthwise ``conv`` whose kernel is wider than
    ``x``'s map (where every output pixel meets every input pixel)."""
    return (torch.is_grad_enabled() and conv.weight.requires_grad and conv.bias is None
            and conv.dilation == (1, 1) and max(x.shape[-2:]) < max(conv.kernel_size))


def depthwise_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a depthwise ``conv``, with :class:`SmallMapDepthwise`'s weight
    gradient where :func:`uses_small_map_wgrad` says so."""
    if not uses_small_map_wgrad(conv, x):
        return conv(x)
    if isinstance(conv, Conv2dSame):
        return SmallMapDepthwise.apply(conv.pad(x), conv.weight, conv.stride, (0, 0))
    return SmallMapDepthwise.apply(x, conv.weight, conv.stride, conv.padding)


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
            if not torch.compiler.is_compiling():  # compiling: optimize() registered it
                register_small_map_wgrad()
            grad_w = torch.ops.mobilenets.small_map_depthwise_wgrad(
                grad, x, weight.shape[-2], weight.shape[-1], list(ctx.stride),
                list(ctx.padding)).to(weight.dtype)
        return grad_x, grad_w, None, None


@functools.cache
def register_small_map_wgrad() -> None:
    """Register :func:`small_map_depthwise_wgrad` as the custom operator :data:`WGRAD_OP`
    (once per process)."""
    op = torch.library.custom_op(WGRAD_OP, mutates_args=())(small_map_depthwise_wgrad)
    op.register_fake(_small_map_depthwise_wgrad_shape)


def small_map_depthwise_wgrad(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int,
                              stride: list[int], padding: list[int]) -> torch.Tensor:
    """:class:`SmallMapDepthwise`'s weight gradient, ``(C, 1, kh, kw)`` in ``x``'s dtype."""
    n, c, h, w = x.shape
    ho, wo = grad.shape[-2:]
    # (N, C, H, W) in any memory format → (C, N, H·W): one 2-D transpose of NHWC.
    xs = x.permute(0, 2, 3, 1).reshape(n * h * w, c).t().contiguous().view(c, n, h * w)
    gs = grad.permute(0, 2, 3, 1).reshape(n * ho * wo, c).t().contiguous().view(c, n, ho * wo)
    products = torch.bmm(gs.transpose(1, 2), xs).view(c, ho * wo * h * w)
    taps = _tap_selection(ho, wo, h, w, kh, kw, *stride, *padding)
    return (products @ taps.to(products.dtype)).view(c, 1, kh, kw)


def _small_map_depthwise_wgrad_shape(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int,
                                     stride: list[int], padding: list[int]) -> torch.Tensor:
    """The operator's output, shape and dtype only, for tracing (``register_fake``)."""
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
