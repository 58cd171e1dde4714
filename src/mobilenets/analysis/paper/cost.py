"""Topic ``cost``: a standard against a depthwise-separable convolution (V1 §3.1, eqs. 2-5)
and a V1 block against a V2 block (V2 §3), each counted on real layers and checked against
the papers' closed forms."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import MobilenetsError
from ...models.blocks import DepthwiseSeparable, InvertedResidual
from ..profile import profile
from .common import check_formula, conv_weights


#: The largest standard-convolution cost counted: far below int64's 9.2e18, in which torch
#: counts shapes and elements (``--m 1e11``-sized layers overflowed inside torch).
MAX_MADDS = 10 ** 18


@dataclass
class LayerCost:
    """A D_K×D_K convolution from M to N channels on a D_F×D_F map, standard vs separable.

    Counted on real layers by the profiler; equal by construction to V1 eqs. 2, 4, 5.
    """

    dk: int
    m: int
    n: int
    df: int
    standard_madds: int
    depthwise_madds: int
    pointwise_madds: int
    standard_params: int
    separable_params: int

    @property
    def separable_madds(self) -> int:
        return self.depthwise_madds + self.pointwise_madds

    @property
    def ratio(self) -> float:
        """Separable / standard cost, measured."""
        return self.separable_madds / self.standard_madds

    @property
    def formula_ratio(self) -> float:
        """V1 §3.1: 1/N + 1/D_K²."""
        return 1 / self.n + 1 / self.dk ** 2


def layer_cost(dk: int, m: int, n: int, df: int) -> LayerCost:
    """Measure one standard and one depthwise-separable layer (stride 1, 'same' padding)."""
    for name, v, hi in (("D_K", dk, 1024), ("M", m, 10 ** 6), ("N", n, 10 ** 6), ("D_F", df, 10 ** 5)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            raise MobilenetsError(f"{name} must be an integer in 1..{hi}, got {v!r}")
    if dk * dk * m * n * df * df > MAX_MADDS:  # torch counts in int64: it would overflow
        raise MobilenetsError(f"a {dk}x{dk} convolution from {m} to {n} channels on {df}x{df} is over "
                              f"{MAX_MADDS:.0e} MAdds: choose smaller dimensions")
    # On the "meta" device: shapes and counts only, so any size costs no memory.
    with torch.device("meta"), warnings.catch_warnings():
        standard = nn.Conv2d(m, n, dk, padding="same", bias=False)
        separable = nn.Sequential(OrderedDict(dw=nn.Conv2d(m, m, dk, padding="same", groups=m, bias=False),
                                              pw=nn.Conv2d(m, n, 1, bias=False)))
        # even D_K: PyTorch pads a copy, the count is unchanged
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
        std = profile(standard, df, in_chans=m)
        sep = {row.name: row.madds for row in profile(separable, df, in_chans=m).layers}
    cost = LayerCost(dk, m, n, df, std.madds, sep["dw"], sep["pw"], conv_weights(standard),
                     conv_weights(separable))
    check_formula("standard conv MAdds (eq. 2)", cost.standard_madds, dk * dk * m * n * df * df)
    check_formula("depthwise MAdds (eq. 4)", cost.depthwise_madds, dk * dk * m * df * df)
    check_formula("pointwise MAdds (eq. 5)", cost.pointwise_madds, m * n * df * df)
    check_formula("standard conv params", cost.standard_params, dk * dk * m * n)
    check_formula("separable params", cost.separable_params, dk * dk * m + m * n)
    return cost


@dataclass
class BlockComparison:
    """SPEC §8: a V2 inverted residual 24→144→24 against a V1 block on the 144 channels
    the V2 block works in internally; parameters are conv weights (no BN), MAdds at
    ``resolution``."""

    resolution: int
    v2_params: int
    v1_params: int
    v2_madds: int
    v1_madds: int

    @property
    def params_ratio(self) -> float:
        return self.v1_params / self.v2_params

    @property
    def madds_ratio(self) -> float:
        return self.v1_madds / self.v2_madds


def block_comparison(resolution: int = 56, channels: int = 24, t: int = 6, k: int = 3) -> BlockComparison:
    """Build both blocks from :mod:`mobilenets.models.blocks` and count them.

    The V2 block's MAdds equal V2 §3's h·w·d′·t(d′ + k² + d″); the V1 block's equal
    h·w·(k²·c + c²) with c = t·d′.
    """
    c = channels * t
    v2 = InvertedResidual(channels, c, channels, k, 1)
    v1 = DepthwiseSeparable(c, c, 1)
    v2_madds = profile(v2, resolution, in_chans=channels).madds
    v1_madds = profile(v1, resolution, in_chans=c).madds
    hw = resolution * resolution
    check_formula("V2 block params", conv_weights(v2), channels * c + k * k * c + c * channels)
    check_formula("V1 block params", conv_weights(v1), k * k * c + c * c)
    check_formula("V2 block MAdds (V2 §3)", v2_madds, hw * channels * t * (channels + k * k + channels))
    check_formula("V1 block MAdds", v1_madds, hw * (k * k * c + c * c))
    return BlockComparison(resolution, conv_weights(v2), conv_weights(v1), v2_madds, v1_madds)


@dataclass
class CostResult:
    layer: LayerCost
    blocks: BlockComparison


def cost(dk: int = 3, m: int = 512, n: int = 512, df: int = 14) -> CostResult:
    """Standard vs depthwise-separable cost for one layer, and the V1 vs V2 block example."""
    return CostResult(layer_cost(dk, m, n, df), block_comparison())

