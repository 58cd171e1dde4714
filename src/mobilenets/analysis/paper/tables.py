"""Topic ``tables``: every published params/MAdds row beside the count of the network it
names, and V1 Tables 2 and 3 measured on real layers (SPEC §1.3-§1.7, §2.7, §3.7-§3.8)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from ...errors import MobilenetsError
from ...models.layers import ConvNormAct
from ...models.registry import create_model
from .common import agrees, check_formula, conv_weights, profile_cached
from .cost import layer_cost
from .published import PUBLISHED, TABLE_SOURCES, V1_TABLE_2, V1_TABLE_2_NOTES, V1_TABLE_3, Published


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
    kwargs = pub.model_kwargs()
    prof = profile_cached(pub.model, pub.resolution, tuple(sorted(kwargs.items())))
    params = prof.params
    if pub.params_without_bn:
        params = sum(p.numel() for m in create_model(pub.model, **kwargs).modules()
                     if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    return TableRow(pub.source, pub.label, pub.model, pub.width_mult, pub.resolution,
                    pub.width_convention, prof.madds, params, pub.madds_m, pub.params_m,
                    agrees(prof.madds / 1e6, pub.madds_m), agrees(params / 1e6, pub.params_m),
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
    prof = profile_cached("mobilenet_v1", resolution, ())
    madds: dict[str, int] = dict.fromkeys(V1_TABLE_2, 0)
    params: dict[str, int] = dict.fromkeys(V1_TABLE_2, 0)
    for row in prof.layers:
        module = model.get_submodule(row.name)
        if not isinstance(module, (ConvNormAct, nn.Conv2d, nn.Linear)):
            continue
        kind = _layer_type(module)
        madds[kind] += row.madds
        params[kind] += conv_weights(module)
    total_madds, total_params = sum(madds.values()), sum(params.values())
    check_formula("V1 Table 2 MAdds", total_madds, prof.madds)
    rows = []
    for kind, (pub_m, pub_p) in V1_TABLE_2.items():
        rows.append(ShareRow(kind, madds[kind], params[kind], 100 * madds[kind] / total_madds,
                             100 * params[kind] / total_params, pub_m, pub_p,
                             V1_TABLE_2_NOTES.get(kind, "")))
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
        return agrees(self.madds / 1e6, self.published_madds_m) and \
            agrees(self.params / 1e6, self.published_params_m)


def v1_table_3() -> list[LayerCostRow]:
    """The four rows of V1 Table 3 (:data:`~.published.V1_TABLE_3`), each measured on real
    layers (SPEC §1.4)."""
    rows = []
    for label, m, df, sep, pub in V1_TABLE_3:
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

