"""Topic ``last-stage``: the savings V3 §5.1 claims for its efficient last stage (~30 M
MAdds) and its 16-filter stem (~10 M), counted on real V3-Large variants."""

from __future__ import annotations

from dataclasses import dataclass

from ...models.base import MobileNet
from ...models.blocks import InvertedResidual
from ...models.layers import ConvNormAct
from ...models.registry import create_model
from ..profile import Profile, profile
from .common import profile_cached


def original_last_stage_large(kernel_size: int = 3) -> MobileNet:
    """MobileNetV3-Large with the last stage V3 Figure 5 calls "original".

    The 15 bnecks of Table 1, then the previous bottleneck kept whole (1×1 160→960,
    depthwise, linear 1×1 960→320) and the 1×1 conv 320→1280 at 7×7 *before* pooling,
    then the classifier: the V2/MnasNet ending. The efficient stage keeps only the
    960-channel expansion before the pool and runs the 1280 layer on the pooled vector.
    """
    model = create_model("mobilenet_v3_large")
    bn = dict(bn_eps=model.features[0].bn.eps, bn_momentum=model.features[0].bn.momentum)
    last = model.features[-1]
    features = list(model.features)[:-1] + [
        InvertedResidual(last.in_channels, last.out_channels, 320, kernel_size, 1, act="HS", **bn),
        ConvNormAct(320, 1280, 1, act="HS", **bn),
    ]
    return MobileNet(features, num_classes=1000, dropout=0.2)


@dataclass
class LastStageResult:
    """MAdds/params of V3-Large variants at ``resolution`` (1000 classes).

    ``*_tail``: the per-layer MAdds of the part that differs (layer name, MAdds).
    """

    resolution: int
    efficient_madds: int
    original_madds: int
    efficient_params: int
    original_params: int
    efficient_tail: list[tuple[str, int]]
    original_tail: list[tuple[str, int]]
    stem16_madds: int
    stem32_madds: int
    stem16_head: list[tuple[str, int]]
    stem32_head: list[tuple[str, int]]

    @property
    def last_stage_saving(self) -> int:
        return self.original_madds - self.efficient_madds

    @property
    def stem_saving(self) -> int:
        return self.stem32_madds - self.stem16_madds


def last_stage(resolution: int = 224) -> LastStageResult:
    """The savings V3 §5.1 claims (~30 M and ~10 M MAdds), counted on real networks.

    The stem comparison builds V3-Large with ``stem_channels=32`` (h-swish in both); with
    32 filters the first bneck (exp 16) also gains a 1×1 expansion 32→16, which is part of
    what the 16-filter stem saves.
    """
    efficient = profile_cached("mobilenet_v3_large", resolution, ())
    original = profile(original_last_stage_large(), resolution)
    stem32 = profile_cached("mobilenet_v3_large", resolution, (("stem_channels", 32),))
    n_blocks = len(create_model("mobilenet_v3_large").features)

    def rows(prof: Profile, prefixes: tuple[str, ...]) -> list[tuple[str, int]]:
        return [(r.name, r.madds) for r in prof.layers if r.madds and r.name.startswith(prefixes)]

    tail_e = (f"features.{n_blocks - 1}", "head", "classifier")
    tail_o = (f"features.{n_blocks - 1}", f"features.{n_blocks}", "classifier")
    head = ("features.0", "features.1.")
    return LastStageResult(resolution, efficient.madds, original.madds, efficient.params,
                           original.params, rows(efficient, tail_e), rows(original, tail_o),
                           efficient.madds, stem32.madds, rows(efficient, head), rows(stem32, head))
