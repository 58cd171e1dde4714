"""The papers' tables and analyses, recomputed from the project's real networks (issue 6).

Each topic is a plain function that builds the networks (or single layers) the papers
describe, measures them with :func:`mobilenets.analysis.profile.profile` (PyTorch's
``FlopCounterMode``) or with forward hooks, and returns dataclasses that hold the computed
figures beside the published ones (SPEC §1-§3, §8). Nothing is typed in from the papers
except the published values they are compared with, so a disagreement is a finding, not a
typo: known conflicts between sources carry a note, and a disagreement without one is
marked "✗".

Topics: :func:`tables`, :func:`cost`, :func:`memory`, :func:`manifold`,
:func:`activations`, :func:`last_stage` and :func:`ablation` (which trains). The plotting
functions import matplotlib lazily and draw on an Agg canvas, so importing this module
costs nothing and never touches a display.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.base import MobileNet
from ..models.blocks import DepthwiseSeparable, InvertedResidual
from ..errors import MobilenetsError
from ..models.layers import Conv2dSame, ConvNormAct, SqueezeExcite
from ..analysis.profile import Profile, profile
from ..models.registry import create_model

TOPICS: tuple[str, ...] = ("tables", "cost", "memory", "manifold", "activations",
                           "last-stage", "ablation")
#: What ``mobilenets paper`` runs without a topic: everything except training.
DEFAULT_TOPICS: tuple[str, ...] = TOPICS[:-1]


@lru_cache(maxsize=None)
def _profile_cached(name: str, resolution: int, kwargs: tuple[tuple[str, object], ...]) -> Profile:
    # Several topics and table rows share a network (V1 1.0-224 is in Tables 2, 6 and 7).
    return profile(create_model(name, **dict(kwargs)), resolution)


def _conv_weights(module: nn.Module) -> int:
    """Weights of convolutions and linear layers (no bias, no BatchNorm): the papers'
    per-layer parameter formulas count exactly these."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _example_input(model: nn.Module, size: int) -> torch.Tensor:
    """A fixed random image (batch 1) with the model's input channels: a non-constant
    input, so comparing two computations of the same network means something."""
    chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    return torch.randn(1, chans, size, size, generator=torch.Generator().manual_seed(0))


def _check(what: str, measured: int, formula: int) -> None:
    # The measured count of a real module must equal the paper's closed form; if not, the
    # module is not the layer the formula describes.
    if measured != formula:
        raise RuntimeError(f"{what}: measured {measured:,} but the formula gives {formula:,}")


def _agrees(computed: float, published: float) -> bool:
    """Published figures are rounded or truncated to the digits they print.

    The digits are read from the float, so "4.0" counts as "4" (a looser test only where
    the tenths are zero).
    """
    d = 0 if float(published).is_integer() else len(repr(float(published)).split(".")[1])
    scale = 10 ** d
    return math.isclose(published, round(computed, d)) or \
        math.isclose(published, math.floor(computed * scale) / scale)


# --------------------------------------------------------------------------------------
# tables: V1 Tables 2, 3, 6, 7; TF-slim V2; V3 Table 9; TF-slim V3
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    """One published row: the network it names and the MAdds/params it prints (millions).

    ``params_without_bn``: the source counts convolution and classifier weights only (no
    BatchNorm γ/β). ``note`` records a known conflict between sources (README "The model
    zoo"); a disagreement with a note is marked "⚠", without one "✗".
    """

    source: str
    label: str
    model: str
    resolution: int
    madds_m: float
    params_m: float
    width_mult: float = 1.0
    width_convention: str = "torchvision"
    params_without_bn: bool = False
    note: str = ""


_OLD_SMALL = ("TF-slim keeps the older V3-Small generation (66 M / 2.9 M in the PDF version "
              "of the paper); arXiv v5 and every implementation have 56.51 M / 2.54 M")
_SLIM_V2_PARAMS = ("TF-slim's Params column counts no BatchNorm γ/β: conv + classifier "
                   "weights agree at every width; with BN the count is ~1% higher")
_T9_ONE_OFF = "Table 9 prints 1 M above both rounding and truncation of our count"
_T9_PARAMS = ("Table 9's params differ from the TF-slim 'tf' build whose MAdds it matches; "
              "not explained by any convention we know")


def _v2_slim(width: float, res: int, madds: int, params: float) -> Published:
    return Published("TF-slim V2", f"mobilenet_v2_{width}_{res}", "mobilenet_v2", res, madds,
                     params, width, params_without_bn=True, note=_SLIM_V2_PARAMS)


def _v3_t9(size: str, width: float, res: int, madds: int, params: float, note: str = "") -> Published:
    return Published("V3 Table 9 (v5)", f"{size} {res}/{width}", f"mobilenet_v3_{size}", res,
                     madds, params, width, "tf", note=note)


PUBLISHED: tuple[Published, ...] = (
    # V1 Table 6 (width multiplier) and Table 7 (resolution), SPEC §1.6-1.7.
    Published("V1 Table 6", "1.0 MobileNet-224", "mobilenet_v1", 224, 569, 4.2),
    Published("V1 Table 6", "0.75 MobileNet-224", "mobilenet_v1", 224, 325, 2.6, 0.75),
    Published("V1 Table 6", "0.5 MobileNet-224", "mobilenet_v1", 224, 149, 1.3, 0.5),
    Published("V1 Table 6", "0.25 MobileNet-224", "mobilenet_v1", 224, 41, 0.5, 0.25),
    Published("V1 Table 7", "1.0 MobileNet-224", "mobilenet_v1", 224, 569, 4.2),
    Published("V1 Table 7", "1.0 MobileNet-192", "mobilenet_v1", 192, 418, 4.2),
    Published("V1 Table 7", "1.0 MobileNet-160", "mobilenet_v1", 160, 290, 4.2,
              note="290.68 M: the paper truncates to 290, TF-slim rounds to 291"),
    Published("V1 Table 7", "1.0 MobileNet-128", "mobilenet_v1", 128, 186, 4.2),
    # TF-slim MobileNetV2 checkpoints, SPEC §2.7 (the table truncates MAdds).
    _v2_slim(1.4, 224, 582, 6.06), _v2_slim(1.3, 224, 509, 5.34),
    _v2_slim(1.0, 224, 300, 3.47), _v2_slim(1.0, 192, 221, 3.47), _v2_slim(1.0, 160, 154, 3.47),
    _v2_slim(1.0, 128, 99, 3.47), _v2_slim(1.0, 96, 56, 3.47),
    _v2_slim(0.75, 224, 209, 2.61), _v2_slim(0.75, 192, 153, 2.61),
    _v2_slim(0.75, 160, 107, 2.61), _v2_slim(0.75, 128, 69, 2.61), _v2_slim(0.75, 96, 39, 2.61),
    _v2_slim(0.5, 224, 97, 1.95), _v2_slim(0.5, 192, 71, 1.95), _v2_slim(0.5, 160, 50, 1.95),
    _v2_slim(0.5, 128, 32, 1.95), _v2_slim(0.5, 96, 18, 1.95),
    _v2_slim(0.35, 224, 59, 1.66), _v2_slim(0.35, 192, 43, 1.66),
    _v2_slim(0.35, 160, 30, 1.66), _v2_slim(0.35, 128, 20, 1.66), _v2_slim(0.35, 96, 11, 1.66),
    # V3 Table 9 (arXiv v5), SPEC §3.7: width rows follow TF-slim's "tf" convention.
    _v3_t9("large", 1.25, 224, 356, 7.5, _T9_PARAMS),
    _v3_t9("large", 1.0, 224, 217, 5.4, "Table 3 of the same paper prints 219 M"),
    _v3_t9("large", 0.75, 224, 155, 4.0), _v3_t9("large", 0.5, 224, 69, 2.6),
    _v3_t9("large", 0.35, 224, 40, 2.2, f"{_T9_ONE_OFF}; {_T9_PARAMS}"),
    _v3_t9("large", 1.0, 256, 282, 5.4), _v3_t9("large", 1.0, 192, 160, 5.4),
    _v3_t9("large", 1.0, 160, 112, 5.4), _v3_t9("large", 1.0, 128, 73, 5.4),
    _v3_t9("large", 1.0, 96, 43, 5.4),
    _v3_t9("small", 1.25, 224, 91, 3.6), _v3_t9("small", 1.0, 224, 57, 2.5),
    _v3_t9("small", 0.75, 224, 44, 2.0, _T9_ONE_OFF), _v3_t9("small", 0.5, 224, 21, 1.6),
    _v3_t9("small", 0.35, 224, 12, 1.4, "1.3498 M rounds to 1.3; Table 9 prints 1.4"),
    _v3_t9("small", 1.0, 256, 74, 2.5, _T9_ONE_OFF), _v3_t9("small", 1.0, 160, 30, 2.5),
    _v3_t9("small", 1.0, 128, 20, 2.5), _v3_t9("small", 1.0, 96, 12, 2.5),
    # TF-slim V3 checkpoints (float rows; the 8-bit rows repeat them), SPEC §3.8.
    Published("TF-slim V3", "Large dm=1", "mobilenet_v3_large", 224, 217, 5.4, 1.0, "tf"),
    Published("TF-slim V3", "Large dm=0.75", "mobilenet_v3_large", 224, 155, 4.0, 0.75, "tf"),
    Published("TF-slim V3", "Small dm=1", "mobilenet_v3_small", 224, 66, 2.9, 1.0, "tf",
              note=_OLD_SMALL),
    Published("TF-slim V3", "Small dm=0.75", "mobilenet_v3_small", 224, 44, 2.4, 0.75, "tf",
              note=f"{_OLD_SMALL}; 0.75: 43.40 M / 2.04 M"),
    Published("TF-slim V3", "Large minimalistic", "mobilenet_v3_large_minimal", 224, 209, 3.9,
              1.0, "tf"),
    Published("TF-slim V3", "Small minimalistic", "mobilenet_v3_small_minimal", 224, 65, 2.0,
              1.0, "tf", note="65 M comes from the same older V3-Small generation as its 66 M"),
)
TABLE_SOURCES: tuple[str, ...] = tuple(dict.fromkeys(p.source for p in PUBLISHED))


@dataclass
class TableRow:
    """A published row beside the count of the network it names; ``params`` is counted
    the way the source counts (all parameters, or without BatchNorm, see
    :class:`Published`)."""

    source: str
    label: str
    model: str
    width_mult: float
    resolution: int
    width_convention: str
    madds: int
    params: int
    published_madds_m: float
    published_params_m: float
    madds_ok: bool
    params_ok: bool
    note: str

    @property
    def madds_diff_m(self) -> float:
        return self.madds / 1e6 - self.published_madds_m

    @property
    def params_diff_m(self) -> float:
        return self.params / 1e6 - self.published_params_m

    @property
    def mark(self) -> str:
        """"✓" agrees, "⚠" differs where sources are known to conflict, "✗" unexplained."""
        if self.madds_ok and self.params_ok:
            return "✓"
        return "⚠" if self.note else "✗"


def table_row(pub: Published) -> TableRow:
    """Build the network ``pub`` names and compare its profile with the printed figures."""
    kwargs: dict[str, object] = {}
    if pub.width_mult != 1.0:
        kwargs["width_mult"] = pub.width_mult
    if pub.width_convention != "torchvision":
        kwargs["width_convention"] = pub.width_convention
    prof = _profile_cached(pub.model, pub.resolution, tuple(sorted(kwargs.items())))
    params = prof.params
    if pub.params_without_bn:
        params = sum(p.numel() for m in create_model(pub.model, **kwargs).modules()
                     if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    return TableRow(pub.source, pub.label, pub.model, pub.width_mult, pub.resolution,
                    pub.width_convention, prof.madds, params, pub.madds_m, pub.params_m,
                    _agrees(prof.madds / 1e6, pub.madds_m), _agrees(params / 1e6, pub.params_m),
                    pub.note)


@dataclass
class ShareRow:
    """V1 Table 2: one layer type's share of the network's MAdds and parameters."""

    type: str
    madds: int
    params: int
    madds_pct: float
    params_pct: float
    published_madds_pct: float
    published_params_pct: float
    note: str = ""


#: V1 Table 2 as printed (SPEC §1.3).
V1_TABLE_2: dict[str, tuple[float, float]] = {
    "Conv 1×1": (94.86, 74.59), "Conv DW 3×3": (3.06, 1.06),
    "Conv 3×3": (1.19, 0.02), "Fully Connected": (0.18, 24.33),
}


def _layer_type(module: nn.Module) -> str:
    """V1 Table 2's classes: a conv is pointwise (1×1), depthwise (groups = channels) or full."""
    if isinstance(module, nn.Linear):
        return "Fully Connected"
    conv = module.conv if isinstance(module, ConvNormAct) else module
    if conv.kernel_size == (1, 1):
        return "Conv 1×1"
    if conv.groups == conv.in_channels > 1:
        return "Conv DW 3×3"
    return "Conv 3×3"


def v1_table_2(resolution: int = 224) -> list[ShareRow]:
    """Classify every conv/linear layer of the real V1 and sum its MAdds and parameters.

    Parameters are the layers' weights only (no biases, no BatchNorm): the paper's
    percentages are shares of those 4,209,088 weights (with the FC bias the FC share
    would print 24.35%, not 24.33%).
    """
    model = create_model("mobilenet_v1")
    prof = _profile_cached("mobilenet_v1", resolution, ())
    madds: dict[str, int] = dict.fromkeys(V1_TABLE_2, 0)
    params: dict[str, int] = dict.fromkeys(V1_TABLE_2, 0)
    for row in prof.layers:
        module = model.get_submodule(row.name)
        if not isinstance(module, (ConvNormAct, nn.Conv2d, nn.Linear)):
            continue
        kind = _layer_type(module)
        madds[kind] += row.madds
        params[kind] += _conv_weights(module)
    total_madds, total_params = sum(madds.values()), sum(params.values())
    _check("V1 Table 2 MAdds", total_madds, prof.madds)
    rows = []
    for kind, (pub_m, pub_p) in V1_TABLE_2.items():
        note = ("the paper prints 1.19%, digits transposed: its column then sums to 99.29%"
                if kind == "Conv 3×3" else "")
        rows.append(ShareRow(kind, madds[kind], params[kind], 100 * madds[kind] / total_madds,
                             100 * params[kind] / total_params, pub_m, pub_p, note))
    return rows


@dataclass
class LayerCostRow:
    """V1 Table 3: one 3×3 layer (M = N = 512, D_F = 14) under cumulative modifications."""

    label: str
    dk: int
    m: int
    n: int
    df: int
    separable: bool
    madds: int
    params: int
    published_madds_m: float
    published_params_m: float

    @property
    def agrees(self) -> bool:
        return _agrees(self.madds / 1e6, self.published_madds_m) and \
            _agrees(self.params / 1e6, self.published_params_m)


def v1_table_3() -> list[LayerCostRow]:
    """The four rows of V1 Table 3, each measured on real layers (SPEC §1.4).

    ρ = 0.714 is the resolution multiplier 160/224: D_F = 14 · 0.714 = 10.
    """
    rows = []
    for label, m, df, sep, pub in (("Convolution", 512, 14, False, (462, 2.36)),
                                   ("Depthwise Separable Conv", 512, 14, True, (52.3, 0.27)),
                                   ("α = 0.75", 384, 14, True, (29.6, 0.15)),
                                   ("ρ = 0.714", 384, 10, True, (15.1, 0.15))):
        c = layer_cost(3, m, m, df)
        madds, params = (c.separable_madds, c.separable_params) if sep else \
            (c.standard_madds, c.standard_params)
        rows.append(LayerCostRow(label, 3, m, m, df, sep, madds, params, *pub))
    return rows


@dataclass
class TablesResult:
    rows: list[TableRow]
    v1_table_2: list[ShareRow]
    v1_table_3: list[LayerCostRow]


def tables(sources: Iterable[str] | None = None) -> TablesResult:
    """Every published params/MAdds row (or those of ``sources``) beside our count, plus
    V1 Tables 2 and 3. The full set profiles ~55 networks (about a minute on CPU)."""
    wanted = TABLE_SOURCES if sources is None else tuple(sources)
    for s in wanted:
        if s not in TABLE_SOURCES:
            raise MobilenetsError(f"unknown table source {s!r}; known: {', '.join(TABLE_SOURCES)}")
    rows = [table_row(p) for p in PUBLISHED if p.source in wanted]
    return TablesResult(rows, v1_table_2(), v1_table_3())


# --------------------------------------------------------------------------------------
# cost: standard vs depthwise-separable convolution; V1 block vs V2 block
# --------------------------------------------------------------------------------------

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
    for name, v in (("D_K", dk), ("M", m), ("N", n), ("D_F", df)):
        if not isinstance(v, int) or v < 1:
            raise MobilenetsError(f"{name} must be a positive integer, got {v!r}")
    # On the "meta" device: shapes and counts only, so any size costs no memory.
    with torch.device("meta"), warnings.catch_warnings():
        standard = nn.Conv2d(m, n, dk, padding="same", bias=False)
        separable = nn.Sequential(OrderedDict(dw=nn.Conv2d(m, m, dk, padding="same", groups=m, bias=False),
                                              pw=nn.Conv2d(m, n, 1, bias=False)))
        # even D_K: PyTorch pads a copy, the count is unchanged
        warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
        std = profile(standard, df, in_chans=m)
        sep = {row.name: row.madds for row in profile(separable, df, in_chans=m).layers}
    cost = LayerCost(dk, m, n, df, std.madds, sep["dw"], sep["pw"], _conv_weights(standard),
                     _conv_weights(separable))
    _check("standard conv MAdds (eq. 2)", cost.standard_madds, dk * dk * m * n * df * df)
    _check("depthwise MAdds (eq. 4)", cost.depthwise_madds, dk * dk * m * df * df)
    _check("pointwise MAdds (eq. 5)", cost.pointwise_madds, m * n * df * df)
    _check("standard conv params", cost.standard_params, dk * dk * m * n)
    _check("separable params", cost.separable_params, dk * dk * m + m * n)
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
    _check("V2 block params", _conv_weights(v2), channels * c + k * k * c + c * channels)
    _check("V1 block params", _conv_weights(v1), k * k * c + c * c)
    _check("V2 block MAdds (V2 §3)", v2_madds, hw * channels * t * (channels + k * k + channels))
    _check("V1 block MAdds", v1_madds, hw * (k * k * c + c * c))
    return BlockComparison(resolution, _conv_weights(v2), _conv_weights(v1), v2_madds, v1_madds)


@dataclass
class CostResult:
    layer: LayerCost
    blocks: BlockComparison


def cost(dk: int = 3, m: int = 512, n: int = 512, df: int = 14) -> CostResult:
    """Standard vs depthwise-separable cost for one layer, and the V1 vs V2 block example."""
    return CostResult(layer_cost(dk, m, n, df), block_comparison())


# --------------------------------------------------------------------------------------
# memory: V2 Table 3 and memory-efficient inference (V2 §5.1)
# --------------------------------------------------------------------------------------

#: V2 Table 3 (arXiv v4), SPEC §2.4: size → (channels, Kb) for V1 and V2.
V2_TABLE_3: dict[int, dict[str, tuple[int, int]]] = {
    112: {"mobilenet_v1": (64, 1600), "mobilenet_v2": (16, 400)},
    56: {"mobilenet_v1": (128, 800), "mobilenet_v2": (32, 200)},
    28: {"mobilenet_v1": (256, 400), "mobilenet_v2": (64, 100)},
    14: {"mobilenet_v1": (512, 200), "mobilenet_v2": (160, 62)},
    7: {"mobilenet_v1": (1024, 199), "mobilenet_v2": (320, 32)},
    1: {"mobilenet_v1": (1024, 2), "mobilenet_v2": (1280, 2)},
}


@dataclass
class LargestTensor:
    """The widest tensor at one spatial size: ``kb`` = channels·H·W·2 bytes / 1000 (fp16)."""

    size: int
    channels: int
    kb: float
    layer: str


def largest_tensors(model: MobileNet, input_size: int = 224, *, level: str = "blocks",
                    exclude: Sequence[str] = ()) -> dict[int, LargestTensor]:
    """The largest output tensor per spatial size of one forward pass (batch 1).

    ``level="blocks"``: outputs of the stem, each block, the last conv, the pool and the
    classifier, i.e. the tensors that must exist whole between blocks (V2 Table 3's
    view: a bottleneck's expansion need not, §5.1). ``level="ops"``: every leaf module's
    output, expansions included. ``exclude``: module names left out (the V2 caption's
    "first layer" trick).
    """
    if level not in ("blocks", "ops"):
        raise MobilenetsError(f"level must be 'blocks' or 'ops', got {level!r}")
    if level == "blocks":
        targets = [(f"features.{i}", m) for i, m in enumerate(model.features)]
        targets += [("pool", model.pool), ("classifier", model.classifier)]
    else:
        targets = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    best: dict[int, LargestTensor] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            size = out.shape[-1] if out.ndim == 4 else 1
            area = out.shape[-1] * out.shape[-2] if out.ndim == 4 else 1
            if size not in best or out.shape[1] > best[size].channels:
                best[size] = LargestTensor(size, out.shape[1], out.shape[1] * area * 2 / 1000, name)
        return fn

    hooks = [m.register_forward_hook(hook(n)) for n, m in targets if n not in exclude]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_example_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return dict(sorted(best.items(), reverse=True))


@dataclass
class ResolutionRow:
    """One row of V2 Table 3: the real networks' largest tensors and the published
    ((channels, Kb)) cells.

    ``v2_bottlenecks`` leaves out V2's first conv (32 channels at 112², which the caption
    says can be computed in pieces, §5) and its last 1×1 conv (1280 channels at 7²,
    reduced by the pool right after), i.e. it looks at the bottleneck tensors only.
    ``v2_all_ops`` also sees the expansions that a block computed whole materialises.
    """

    size: int
    v1: LargestTensor
    v2: LargestTensor
    v2_bottlenecks: LargestTensor
    v2_all_ops: LargestTensor
    published_v1: tuple[int, int]
    published_v2: tuple[int, int]


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


_OPS = (ConvNormAct, SqueezeExcite, nn.AdaptiveAvgPool2d, nn.Linear, SplitInvertedResidual)


def op_memory(model: nn.Module, input_size: int = 224) -> tuple[dict[str, int], torch.Tensor]:
    """V2 §5.1 eq. 2 per operation: the size of its inputs + outputs (batch 1).

    Conv-BN-activation is one operation (BN folds into the conv at inference), each
    residual addition is one (two inputs, one output, keyed by its block's name), and a
    :class:`SplitInvertedResidual` is one of its measured ``peak_elements``. Returns
    ({operation: elements}, logits); the network's memory is the max of the values.
    """
    sizes: dict[str, int] = {}

    def hook(name: str):
        def fn(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(m, SplitInvertedResidual):
                sizes[name] = m.peak_elements
            elif isinstance(m, InvertedResidual):
                sizes[name] = 3 * out.numel()  # the residual addition: x, F(x) -> y
            else:
                sizes[name] = sum(t.numel() for t in inp) + out.numel()
        return fn

    hooks, ops = [], []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in ops):
            continue
        if isinstance(m, _OPS):
            hooks.append(m.register_forward_hook(hook(name)))
            ops.append(name)
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            hooks.append(m.register_forward_hook(hook(name)))
    model.eval()
    try:
        with torch.no_grad():
            logits = model(_example_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
    return sizes, logits


def split_bound(model: MobileNet, t: int, input_size: int = 224,
                sizes: dict[str, int] | None = None) -> tuple[int, str]:
    """The network's memory with every bottleneck split in ``min(t, channels)`` groups,
    from :func:`split_memory_bound` alone (nothing split is run): the max over the other
    operations (``sizes`` from :func:`op_memory` of the unsplit model) and the blocks'
    bounds. Returns (elements, where)."""
    if sizes is None:
        sizes, _ = op_memory(model, input_size)
    inputs: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, inp, i=i: inputs.__setitem__(i, tuple(inp[0].shape[-2:])))
        for i, m in enumerate(model.features) if isinstance(m, InvertedResidual)]
    try:
        with torch.no_grad():
            model.features(_example_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
    blocks = [f"features.{i}" for i in inputs]
    best = max(((v, k) for k, v in sizes.items()
                if not any(k == b or k.startswith(b + ".") for b in blocks)), default=(0, ""))
    for i, (h, w) in inputs.items():
        block = model.features[i]
        best = max(best, (split_memory_bound(block, min(t, block.exp_channels), h, w), f"features.{i}"))
    return best


@dataclass
class PeakRow:
    """Peak activation memory of V2 with its bottlenecks in ``t`` groups.

    ``t = 1``: unsplit, eq. 2 over the fused operations. For ``t > 1``: ``bound`` from
    :func:`split_bound`; ``measured`` from running the split network (``None`` where it
    was not run) and ``same_logits`` whether it computes the unsplit network's logits.
    ``t = 0`` stands for one channel per group (the paper's n = t).
    """

    t: int
    bound: int
    where: str
    measured: int | None
    same_logits: bool | None

    @property
    def kb16(self) -> float:
        return self.bound * 2 / 1000


@dataclass
class MemoryResult:
    resolution: int
    rows: list[ResolutionRow]
    peaks: list[PeakRow]
    profiler_peak_elements: int  # mobilenets.analysis.profile: every leaf op (BN, ReLU6 separately)
    profiler_peak_layer: str


def memory(input_size: int = 224, run: Sequence[int] = (2, 3, 4, 5, 6),
           bound_only: Sequence[int] = (0,)) -> MemoryResult:
    """V2 Table 3 from the real V1 and V2, and V2's peak memory with and without splitting.

    ``run``: group counts whose split network is built and run (and checked against the
    unsplit logits); ``bound_only``: group counts reported from the formula alone, ``0``
    meaning one channel per group (running that builds thousands of one-channel layers).
    """
    v1 = create_model("mobilenet_v1")
    v2 = create_model("mobilenet_v2")
    t1 = largest_tensors(v1, input_size)
    t2 = largest_tensors(v2, input_size)
    last = f"features.{len(v2.features) - 1}"
    t2_bottlenecks = largest_tensors(v2, input_size, exclude=("features.0", last))
    t2_ops = largest_tensors(v2, input_size, level="ops")
    rows = [ResolutionRow(s, t1[s], t2[s], t2_bottlenecks[s], t2_ops[s], pub["mobilenet_v1"],
                          pub["mobilenet_v2"])
            for s, pub in V2_TABLE_3.items() if s in t1 and s in t2]
    sizes, logits = op_memory(v2, input_size)
    where = max(sizes, key=sizes.__getitem__)
    peaks = [PeakRow(1, sizes[where], where, sizes[where], True)]
    for t in run:
        bound, where = split_bound(v2, t, input_size, sizes)
        split_sizes, split_logits = op_memory(split_network(v2, t), input_size)
        same = bool(torch.allclose(split_logits, logits, rtol=1e-4, atol=1e-5))
        peaks.append(PeakRow(t, bound, where, max(split_sizes.values()), same))
    for t in bound_only:
        bound, where = split_bound(v2, t if t > 0 else max(m.exp_channels for m in v2.features
                                                          if isinstance(m, InvertedResidual)),
                                   input_size, sizes)
        peaks.append(PeakRow(t, bound, where, None, None))
    prof = _profile_cached("mobilenet_v2", input_size, ())
    return MemoryResult(input_size, rows, peaks, prof.peak_activation_elements,
                        prof.peak_activation_layer)


# --------------------------------------------------------------------------------------
# manifold: V2 Figure 1
# --------------------------------------------------------------------------------------

MANIFOLD_DIMS: tuple[int, ...] = (2, 3, 5, 15, 30)


def spiral(n_points: int = 800, turns: float = 2.0) -> np.ndarray:
    """A 2-D spiral (``(n_points, 2)``), radius 0.1 to 1 so that no point is the origin."""
    theta = np.linspace(0.0, 2 * np.pi * turns, n_points)
    r = 0.1 + 0.9 * theta / theta[-1]
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def relu_roundtrip(x: np.ndarray, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``x`` with a random ``dim``×2 matrix T, apply ReLU, map back with pinv(T).

    Returns (reconstruction, T x) so callers can also see which units were active.
    """
    T = rng.standard_normal((dim, x.shape[1]))
    z = x @ T.T
    return np.maximum(z, 0.0) @ np.linalg.pinv(T).T, z


def linear_fit_error(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Relative error of the best affine map from ``x_hat`` back to ``x``.

    pinv(T) ReLU(T x) is, for large n, about x/2 (half the units are active): a scaled
    copy. What the figure shows is whether the *shape* survives, so the error is taken
    after the best affine correction, relative to the spread of ``x``.
    """
    a = np.c_[x_hat, np.ones(len(x_hat))]
    coef, *_ = np.linalg.lstsq(a, x, rcond=None)
    return float(np.linalg.norm(a @ coef - x) / np.linalg.norm(x - x.mean(axis=0)))


@dataclass
class ManifoldRow:
    """One embedding dimension n, averaged over ``trials`` random matrices.

    ``error``: :func:`linear_fit_error` of the pinv reconstruction. ``recoverable``: the
    share of points whose active units span the plane, so that ReLU(T x) determines x
    exactly (V2 §3.2: ReLU keeps the information where it acts as a linear map of full
    rank); ``expected_recoverable`` = 1 − (n+1)/2ⁿ, the probability that at least two of n
    random directions lie in a point's half-plane.
    """

    dim: int
    error: float
    recoverable: float
    expected_recoverable: float


@dataclass
class ManifoldResult:
    seed: int
    trials: int
    n_points: int
    rows: list[ManifoldRow]


def manifold(dims: Sequence[int] = MANIFOLD_DIMS, *, seed: int = 0, trials: int = 64,
             n_points: int = 800) -> ManifoldResult:
    """V2 Figure 1, quantified: ReLU collapses a spiral embedded in few dimensions.

    Each ``dim`` draws from its own generator seeded with (seed, dim), so a row does not
    depend on which other rows are computed.
    """
    if trials < 1 or any(d < 1 for d in dims):
        raise MobilenetsError("dims and trials must be positive")
    x = spiral(n_points)
    rows = []
    for dim in dims:
        rng = np.random.default_rng([seed, dim])
        errors, recoverable = [], []
        for _ in range(trials):
            x_hat, z = relu_roundtrip(x, dim, rng)
            errors.append(linear_fit_error(x, x_hat))
            # Any two rows of a random T are independent (probability 1): two active
            # units span the plane.
            recoverable.append(float(np.mean((z > 0).sum(axis=1) >= 2)))
        rows.append(ManifoldRow(dim, float(np.mean(errors)), float(np.mean(recoverable)),
                                1 - (dim + 1) / 2 ** dim))
    return ManifoldResult(seed, trials, n_points, rows)


def plot_manifold(result: ManifoldResult, path: str | Path) -> Path:
    """The figure: the input spiral and, per n, the first trial's pinv(T) ReLU(T x)."""
    from matplotlib.figure import Figure

    x = spiral(result.n_points)
    color = np.linspace(0, 1, len(x))
    fig = Figure(figsize=(2.0 * (len(result.rows) + 1), 2.3), layout="constrained")
    axes = fig.subplots(1, len(result.rows) + 1)
    axes[0].scatter(x[:, 0], x[:, 1], c=color, s=2, cmap="viridis")
    axes[0].set_title("Input")
    for ax, row in zip(axes[1:], result.rows):
        x_hat, _ = relu_roundtrip(x, row.dim, np.random.default_rng([result.seed, row.dim]))
        ax.scatter(x_hat[:, 0], x_hat[:, 1], c=color, s=2, cmap="viridis")
        ax.set_title(f"n = {row.dim}\nmean error {row.error:.2f}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path


# --------------------------------------------------------------------------------------
# activations: ReLU6, sigmoid vs hard sigmoid, swish vs hard swish (V3 §5.2)
# --------------------------------------------------------------------------------------

def activation_curves(lo: float = -8.0, hi: float = 8.0, points: int = 160_001) -> dict[str, np.ndarray]:
    """The curves on a uniform float64 grid, evaluated by PyTorch's own modules (the ones
    the networks use: ``nn.Hardsigmoid`` = ReLU6(x+3)/6, ``nn.Hardswish`` = x·ReLU6(x+3)/6)."""
    if not lo < hi or points < 2:
        raise MobilenetsError(f"need lo < hi and at least 2 points, got [{lo}, {hi}], {points}")
    x = torch.linspace(lo, hi, points, dtype=torch.float64)
    modules = {"relu6": nn.ReLU6(), "sigmoid": nn.Sigmoid(), "hard_sigmoid": nn.Hardsigmoid(),
               "swish": nn.SiLU(), "hard_swish": nn.Hardswish()}
    with torch.no_grad():
        curves = {name: m(x).numpy() for name, m in modules.items()}
    return {"x": x.numpy(), **curves}


@dataclass
class MaxDiff:
    """The largest |exact − hard| on the grid, and where it occurs."""

    pair: str
    max_abs_diff: float
    at: float


@dataclass
class ActivationsResult:
    lo: float
    hi: float
    points: int
    diffs: list[MaxDiff]


def activations(lo: float = -8.0, hi: float = 8.0, points: int = 160_001) -> ActivationsResult:
    """How far the piecewise-linear "hard" versions are from sigmoid and swish.

    Outside [-3, 3] both hard versions are exact limits (0, 1 or x), so a grid wider than
    that covers every difference that matters.
    """
    c = activation_curves(lo, hi, points)
    diffs = []
    for pair, exact, hard in (("sigmoid vs hard sigmoid", "sigmoid", "hard_sigmoid"),
                              ("swish vs hard swish", "swish", "hard_swish")):
        d = np.abs(c[exact] - c[hard])
        i = int(np.argmax(d))
        diffs.append(MaxDiff(pair, float(d[i]), float(c["x"][i])))
    return ActivationsResult(lo, hi, points, diffs)


def plot_activations(path: str | Path, lo: float = -6.0, hi: float = 6.0) -> Path:
    """Three panels: ReLU6; sigmoid and hard sigmoid; swish and hard swish."""
    from matplotlib.figure import Figure

    c = activation_curves(lo, hi, 1201)
    fig = Figure(figsize=(9, 2.8), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = ((("relu6", "ReLU6"),), (("sigmoid", "sigmoid"), ("hard_sigmoid", "h-sigmoid")),
              (("swish", "swish"), ("hard_swish", "h-swish")))
    for ax, curves in zip(axes, panels):
        for (key, label), style in zip(curves, ("-", "--")):
            ax.plot(c["x"], c[key], style, label=label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path


# --------------------------------------------------------------------------------------
# last-stage: V3 §5.1, efficient last stage and 16-filter stem
# --------------------------------------------------------------------------------------

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
    efficient = _profile_cached("mobilenet_v3_large", resolution, ())
    original = profile(original_last_stage_large(), resolution)
    stem32 = _profile_cached("mobilenet_v3_large", resolution, (("stem_channels", 32),))
    n_blocks = len(create_model("mobilenet_v3_large").features)

    def rows(prof: Profile, prefixes: tuple[str, ...]) -> list[tuple[str, int]]:
        return [(r.name, r.madds) for r in prof.layers if r.madds and r.name.startswith(prefixes)]

    tail_e = (f"features.{n_blocks - 1}", "head", "classifier")
    tail_o = (f"features.{n_blocks - 1}", f"features.{n_blocks}", "classifier")
    head = ("features.0", "features.1.")
    return LastStageResult(resolution, efficient.madds, original.madds, efficient.params,
                           original.params, rows(efficient, tail_e), rows(original, tail_o),
                           efficient.madds, stem32.madds, rows(efficient, head), rows(stem32, head))


# --------------------------------------------------------------------------------------
# ablation: V2 Figure 6, linear vs ReLU6 bottleneck (trains)
# --------------------------------------------------------------------------------------

@dataclass
class AblationRow:
    variant: str
    project_act: str | None
    best_acc: float
    final_acc: float


def ablation(out: str | Path, *, data: str = "fashion-mnist", epochs: int = 1, seed: int = 0,
             max_steps: int | None = None, width_mult: float = 0.35,
             batch_size: int | None = None, workers: int = 2) -> list[AblationRow]:
    """Train V2 twice with the same seed and schedule: linear projection (the paper's
    bottleneck) and ReLU6 after the projection (V2 Figure 6a).

    A short schedule on Fashion-MNIST shows the direction of the effect, not ImageNet's
    size of it; both runs see the same data order and initialisation seed. The training
    recipe is :mod:`mobilenets.training.trainer`'s default; ``batch_size``/``workers`` pass through.
    """
    from ..training.trainer import TrainConfig, train

    rows = []
    for variant, act in (("linear", None), ("relu6", "RE6")):
        kwargs: dict[str, object] = {"small_input": True, "in_chans": 1, "num_classes": 10,
                                     "width_mult": width_mult}
        if act is not None:
            kwargs["project_act"] = act
        result = train(TrainConfig(model="mobilenet_v2", model_kwargs=kwargs, data=data,
                                   epochs=epochs, out=str(Path(out) / f"ablation-{variant}"),
                                   seed=seed, max_steps=max_steps, batch_size=batch_size,
                                   workers=workers))
        rows.append(AblationRow(variant, act, float(result.best_acc), float(result.final_acc)))
    return rows


def to_dict(obj: object) -> object:
    """A result as JSON-ready data: dataclass fields *and* properties (the differences,
    ratios and marks the text shows), recursively."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
        for name, attr in vars(type(obj)).items():
            if isinstance(attr, property):
                out[name] = to_dict(getattr(obj, name))
        return out
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
