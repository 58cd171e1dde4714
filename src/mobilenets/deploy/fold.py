"""The inference graph: BatchNorm folded into the convolution before it, dropout removed,
and the bfloat16 copy for CPUs with native bf16 instructions.

Both steps are exact in eval mode and leave exported graphs with only the operations a
runtime must execute.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..models.layers import ConvNormAct


def fold_conv_bn_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``bn(conv(x)) == conv'(x)``.

    ``w' = w·γ/√(σ²+ε)`` per output channel, ``b' = β + (b − μ)·γ/√(σ²+ε)``, computed by
    ``torch.nn.utils.fusion.fuse_conv_bn_weights`` on float64 copies and cast back once,
    so folding adds no rounding beyond that cast (the library computes in the dtype it is
    given; ``fuse_conv_bn_eval`` would also deep-copy the conv, which the caller already did).
    """
    dtype = conv.weight.dtype
    weight, bias = fuse_conv_bn_weights(
        conv.weight.double(), None if conv.bias is None else conv.bias.double(),
        bn.running_mean.double(), bn.running_var.double(), bn.eps,
        None if bn.weight is None else bn.weight.double(),
        None if bn.bias is None else bn.bias.double())
    conv.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose ``ConvNormAct`` layers have no BatchNorm.

    Every BN of a MobileNet directly follows a convolution inside a ``ConvNormAct``, so
    folding it there covers the whole network; the ``bn`` child becomes ``nn.Identity``.
    """
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            fold_conv_bn_(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """A copy with BatchNorm folded, dropout removed and gradients off (eval mode).

    Dropout is the identity in eval mode; removing it keeps it out of exported graphs.
    """
    model = fold_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, nn.Identity())
    model.requires_grad_(False)
    return model


class Bf16Inference(nn.Module):
    """An inference-ready model whose weights and activations are bfloat16, called with
    and returning float32 tensors like the model it came from (see :func:`bf16_inference`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.model(x.to(torch.bfloat16))
        if isinstance(out, torch.Tensor):
            return out.float()
        return [t.float() for t in out]  # a features_only model's maps


def bf16_inference(model: nn.Module) -> Bf16Inference:
    """A copy of ``model`` for bf16 inference on CPUs with native bf16 instructions:
    BatchNorm folded (:func:`prepare_for_inference`), channels-last, every weight and
    activation in bfloat16, float32 in and out.

    Why: on AVX-512-BF16/AMX CPUs oneDNN's bf16 convolutions halve the bytes that
    MobileNets' memory-bound layers move; under ``torch.compile`` this is the fastest
    PyTorch path measured here (README: Latency). bf16 keeps 8 bits of mantissa, so logits
    move by about 1 % of their range: ``mobilenets eval --precision bf16`` measures what
    that does to accuracy (uncompiled; Inductor's fused kernels keep some intermediates
    in fp32, which moves logits by less than the bf16 rounding itself). Folding happens
    in float32, before the cast, so the folded weights are rounded once.
    """
    ready = prepare_for_inference(model).to(memory_format=torch.channels_last)
    return Bf16Inference(ready.to(torch.bfloat16)).eval()

