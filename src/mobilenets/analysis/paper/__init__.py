"""The papers' tables and analyses, recomputed from the project's real networks (issue 6).

Each topic is a plain function in a module of its own that builds the networks (or single
layers) the papers describe, measures them with :func:`mobilenets.analysis.profile.profile`
(PyTorch's ``FlopCounterMode``) or with forward hooks, and returns dataclasses that hold the
computed figures beside the published ones (SPEC §1-§3, §8). Nothing is typed in from the
papers except the published values they are compared with, and those live in one data
module, :mod:`.published`; so a disagreement is a finding, not a typo: known conflicts
between sources carry a note, and a disagreement without one is marked "✗".

Topics: :func:`tables`, :func:`cost`, :func:`memory`, :func:`manifold`,
:func:`activations`, :func:`last_stage` and :func:`ablation` (which trains). Plotting
imports matplotlib lazily, so importing this package costs nothing and never touches a
display.

Each topic's function has its module's name: after this file runs, ``paper.tables`` is the
function (``mobilenets.analysis.paper.tables`` the module stays in ``sys.modules``), so
``from mobilenets.analysis import paper; paper.tables()`` works as it did when this was
one file.
"""

from __future__ import annotations

from .common import agrees, to_dict
from .published import (PUBLISHED, TABLE_SOURCES, V1_TABLE_2, V1_TABLE_2_NOTES, V1_TABLE_3,
                        V2_TABLE_3, Published)
from .split import SplitInvertedResidual, split_memory_bound, split_network
from .cost import BlockComparison, CostResult, LayerCost, block_comparison, cost, layer_cost
from .tables import (LayerCostRow, ShareRow, TableRow, TablesResult, table_row, tables,
                     v1_table_2, v1_table_3)
from .memory import (LargestTensor, MemoryResult, PeakRow, ResolutionRow, largest_tensors, memory,
                     op_memory, split_bound)
from .manifold import (MANIFOLD_DIMS, ManifoldResult, ManifoldRow, linear_fit_error, manifold,
                       plot_manifold, relu_roundtrip, spiral)
from .activations import ActivationsResult, MaxDiff, activation_curves, activations, plot_activations
from .last_stage import LastStageResult, last_stage, original_last_stage_large
from .ablation import AblationRow, ablation

TOPICS: tuple[str, ...] = ("tables", "cost", "memory", "manifold", "activations",
                           "last-stage", "ablation")
#: What ``mobilenets paper`` runs without a topic: everything except training.
DEFAULT_TOPICS: tuple[str, ...] = TOPICS[:-1]

__all__ = [
    "TOPICS", "DEFAULT_TOPICS", "to_dict", "agrees",
    "PUBLISHED", "TABLE_SOURCES", "V1_TABLE_2", "V1_TABLE_2_NOTES", "V1_TABLE_3", "V2_TABLE_3",
    "Published",
    "tables", "table_row", "v1_table_2", "v1_table_3", "TablesResult", "TableRow", "ShareRow",
    "LayerCostRow",
    "cost", "layer_cost", "block_comparison", "CostResult", "LayerCost", "BlockComparison",
    "memory", "largest_tensors", "op_memory", "split_bound", "split_memory_bound",
    "split_network", "SplitInvertedResidual", "MemoryResult", "PeakRow", "ResolutionRow",
    "LargestTensor",
    "manifold", "plot_manifold", "spiral", "relu_roundtrip", "linear_fit_error", "MANIFOLD_DIMS",
    "ManifoldResult", "ManifoldRow",
    "activations", "activation_curves", "plot_activations", "ActivationsResult", "MaxDiff",
    "last_stage", "original_last_stage_large", "LastStageResult",
    "ablation", "AblationRow",
]
