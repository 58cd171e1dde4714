"""The model contract shared by every MobileNet, so one parametrised test covers them all.

Every network is ``features`` (an ``nn.Sequential``: stem, blocks, last conv) followed by
global average pooling, an optional hidden head (V3's efficient last stage), dropout and a
linear classifier:

* ``forward_features(x)``: the final feature map, ``(N, num_features, H/32, W/32)``
  (``H/8`` with ``small_input``, ``H/output_stride`` when that is given; see :func:`downsampling`).
* ``forward_head(x, pre_logits=False)``: pooled vector → logits (or the vector the
  classifier reads, ``(N, head_hidden_size)``, when ``pre_logits``).
* ``reset_classifier(num_classes)``: a fresh classifier; ``0`` removes it.
* ``num_features``, ``head_hidden_size``, ``num_classes``.
* ``feature_info``: one entry per output stride (2, 4, 8, 16, 32 for the standard stems),
  the index in ``features`` of the last module at that stride and its channel count;
  ``forward_feature_maps(x)`` returns those maps (``create_model(..., features_only=True)``
  wraps a model so that ``forward`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import MobilenetsError


def downsampling(strides: Sequence[int], *, small_input: bool,
                 output_stride: int | None) -> list[int]:
    """The strides of the stem and of each block in order (``strides``: the paper's), adapted
    to small images.

    ``small_input`` sets the stem and the first stride-2 block to stride 1: 8× downsampling
    instead of 32×, so a 28 px image ends on a 4×4 map instead of 1×1. ``output_stride``
    then sets the total downsampling: the *last* stride-2 blocks go to stride 1 (as
    DeepLab's output stride does, here without dilation), so the early layers, whose maps
    are the largest, keep their cost. ``None`` keeps what ``small_input`` gives.
    """
    out = list(strides)
    if small_input:
        out[0] = 1
        out[out.index(2, 1)] = 1
    total = math.prod(out)
    if output_stride is None or output_stride == total:
        return out
    if output_stride < 1 or output_stride > total or output_stride & (output_stride - 1):
        raise MobilenetsError(f"output_stride must be a power of 2 no larger than {total} for this "
                              f"network{' with small_input' if small_input else ''}, got {output_stride}")
    for i in reversed(range(len(out))):
        if total == output_stride:
            break
        if out[i] == 2:
            out[i], total = 1, total // 2
    return out


@dataclass(frozen=True)
class FeatureInfo:
    """Where a multi-scale feature map comes from: ``features[index]``'s output."""

    index: int
    num_chs: int
    reduction: int


class MobileNet(nn.Module):
    """Base class: subclasses build ``features`` from their paper table and call this.

    Every module in ``features`` exposes ``out_channels`` and ``stride``; the feature-map
    taps are derived from them, so they cannot disagree with the network.
    """

    def __init__(self, features: list[nn.Module], *, num_classes: int, dropout: float,
                 head: nn.Module | None = None, head_hidden_size: int | None = None) -> None:
        super().__init__()
        if num_classes < 0:
            raise MobilenetsError(f"num_classes must be >= 0, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise MobilenetsError(f"dropout must be in [0, 1), got {dropout}")
        self.features = nn.Sequential(*features)
        self.num_features: int = features[-1].out_channels
        self.head_hidden_size: int = head_hidden_size or self.num_features
        self.pool = nn.AdaptiveAvgPool2d(1)
        # V3: Linear + h-swish after pooling (the "efficient last stage"); V1/V2: nothing.
        self.head: nn.Module = head if head is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.num_classes = num_classes
        self.classifier: nn.Module = self._make_classifier(num_classes)

        info: list[FeatureInfo] = []
        reduction = 1
        for i, m in enumerate(features):
            reduction *= m.stride
            if info and info[-1].reduction == reduction:
                info[-1] = FeatureInfo(i, m.out_channels, reduction)
            else:
                info.append(FeatureInfo(i, m.out_channels, reduction))
        self.feature_info: list[FeatureInfo] = info
        self._tap_indices: list[int] = [f.index for f in info]
        self._init_weights()

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        # torchvision's initialisation for all three versions.
        if any(p.is_meta for p in self.parameters()):
            return  # a shape-only skeleton (checkpoint checks): nothing to initialise, and
            # normal_ on the meta device would import sympy/dynamo (2 s) for nothing
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (``0``: no classifier)."""
        if num_classes < 0:
            raise MobilenetsError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        if hasattr(self, "model_kwargs"):  # what a checkpoint of this model rebuilds it from
            self.model_kwargs = {**self.model_kwargs, "num_classes": num_classes}
        self.classifier = self._make_classifier(num_classes)
        if isinstance(self.classifier, nn.Linear):
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)  # (N, num_features)
        x = self.head(x)  # (N, head_hidden_size)
        if pre_logits:
            return x
        x = self.dropout(x)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.export
    def forward_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps listed in ``feature_info`` (strides 2, 4, 8, 16, 32 by default)."""
        maps: list[torch.Tensor] = []
        for i, m in enumerate(self.features):  # TorchScript iterates a submodule, not an argument
            x = m(x)
            if i in self._tap_indices:
                maps.append(x)
        return maps


class FeatureMaps(nn.Module):
    """``create_model(name, features_only=True)``: ``forward`` returns the multi-scale maps.

    Holds only the model's ``features`` (no head), so every parameter is used.
    """

    def __init__(self, model: MobileNet) -> None:
        super().__init__()
        self.features = model.features
        self.feature_info = model.feature_info
        self._tap_indices = list(model._tap_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps: list[torch.Tensor] = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self._tap_indices:
                maps.append(x)
        return maps
