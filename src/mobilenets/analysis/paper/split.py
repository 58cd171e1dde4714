"""Memory-efficient inference (V2 §5.1): an inverted residual computed in ``t`` channel
groups, its memory bound, and a network whose bottlenecks all run that way."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...errors import MobilenetsError
from ...models.base import MobileNet
from ...models.blocks import InvertedResidual
from ...models.layers import Conv2dSame, ConvNormAct


def _slice_conv_norm_act(cna: ConvNormAct, out_idx: torch.Tensor,
                         in_idx: torch.Tensor | None) -> ConvNormAct:
    """A ConvNormAct computing only channels ``out_idx`` of ``cna`` (same weights).

    ``in_idx`` selects the input channels a full conv reads; ``None`` marks a depthwise
    conv, whose slice reads the same channels it writes.
    """
    conv, bn = cna.conv, cna.bn
    depthwise = in_idx is None
    n_in = len(out_idx) if depthwise else len(in_idx)
    padding = "same" if isinstance(conv, Conv2dSame) else "symmetric"
    part = ConvNormAct(n_in, len(out_idx), conv.kernel_size[0], conv.stride[0],
                       groups=len(out_idx) if depthwise else 1, act=None, bn_eps=bn.eps,
                       bn_momentum=bn.momentum, padding=padding)
    if hasattr(cna, "act"):
        part.add_module("act", copy.deepcopy(cna.act))
    with torch.no_grad():
        w = conv.weight[out_idx]
        part.conv.weight.copy_(w if depthwise else w[:, in_idx])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(part.bn, name).copy_(getattr(bn, name)[out_idx])
    return part.eval()


def split_memory_bound(block: InvertedResidual, t: int, height: int, width: int) -> int:
    """V2 §5.1's bound for ``block`` computed in ``t`` groups on a ``height``×``width`` input:
    |s²k| (input, kept for every group) + |s′²k′| (the accumulated output) + one group's
    expansion (none when the block has no expansion layer) and depthwise output."""
    h2, w2 = -(-height // block.stride), -(-width // block.stride)
    group = -(-block.exp_channels // t)  # the largest of t near-equal groups
    has_expand = isinstance(block.expand, ConvNormAct)
    inner = group * h2 * w2 + (group * height * width if has_expand else 0)
    return height * width * block.in_channels + h2 * w2 * block.out_channels + inner


class SplitInvertedResidual(nn.Module):
    """An inverted residual computed in ``t`` channel groups: F(x) = Σ_i (A_i ∘ N ∘ B_i)(x).

    V2 §5.1: the expansion B, the per-channel N (ReLU6 ∘ depthwise ∘ ReLU6) and the
    projection A split along the expanded channels, so only one group's intermediate
    tensors exist at a time and the memory needed drops to :func:`split_memory_bound`.
    The projection's BatchNorm is affine per output channel, so it applies once to the
    sum. Inference only (BatchNorm uses running statistics); squeeze-excite needs every
    channel at once and cannot be split this way.

    After each forward, ``peak_elements`` holds the largest number of values alive at
    once, read from the tensors themselves: the input, the accumulated output, and one
    group's expansion and depthwise output (the expansion is a view of the input when the
    block has none).
    """

    def __init__(self, block: InvertedResidual, t: int) -> None:
        super().__init__()
        if not isinstance(block.se, nn.Identity):
            raise MobilenetsError("a block with squeeze-excite cannot be split: its gate "
                                  "needs every expanded channel")
        n = block.exp_channels
        if not 1 <= t <= n:
            raise MobilenetsError(f"t must be in 1..{n} (the expanded channels), got {t}")
        self.t = t
        self.has_expand = isinstance(block.expand, ConvNormAct)
        self.groups = list(torch.arange(n).tensor_split(t))
        all_in = torch.arange(block.in_channels)
        self.expand = nn.ModuleList(_slice_conv_norm_act(block.expand, idx, all_in)
                                    for idx in self.groups) if self.has_expand else None
        self.dw = nn.ModuleList(_slice_conv_norm_act(block.dw, idx, None) for idx in self.groups)
        self.project = nn.ModuleList()
        for idx in self.groups:
            a = nn.Conv2d(len(idx), block.out_channels, 1, bias=False)
            with torch.no_grad():
                a.weight.copy_(block.project.conv.weight[:, idx])
            self.project.append(a)
        self.project_bn = copy.deepcopy(block.project.bn)
        self.project_act = copy.deepcopy(block.project.act) if hasattr(block.project, "act") \
            else nn.Identity()
        self.use_res_connect = block.use_res_connect
        self.out_channels, self.stride = block.out_channels, block.stride
        self.peak_elements = 0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc: torch.Tensor | None = None
        peak = 0
        for i, idx in enumerate(self.groups):
            e = self.expand[i](x) if self.has_expand else x[:, idx]
            d = self.dw[i](e)
            out_elements = d.shape[0] * self.out_channels * d.shape[2] * d.shape[3]
            alive = x.numel() + out_elements + d.numel() + (e.numel() if self.has_expand else 0)
            peak = max(peak, alive)
            part = self.project[i](d)
            acc = part if acc is None else acc + part
        self.peak_elements = peak
        out = self.project_act(self.project_bn(acc))
        return out + x if self.use_res_connect else out


def split_network(model: MobileNet, t: int) -> MobileNet:
    """A copy of ``model`` whose inverted residuals run in ``min(t, channels)`` groups."""
    split = copy.deepcopy(model).eval()
    for i, m in enumerate(split.features):
        if isinstance(m, InvertedResidual):
            split.features[i] = SplitInvertedResidual(m, min(t, m.exp_channels))
    return split
