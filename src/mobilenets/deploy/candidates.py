"""The configurations ``mobilenets pick`` chooses from: every MobileNet with a published
ImageNet top-1.

Two sources, neither copied here: the weights registry
(:data:`mobilenets.io.weights_table.WEIGHTS`, one row per downloadable checkpoint, with the
converter's exact model options and its evaluation crop) and the papers' width × resolution
tables (:data:`mobilenets.analysis.paper.published.PUBLISHED`: V1 Tables 6-7, the TF-slim V2
sweep, V3 Table 9 and the TF-slim V3 rows, minimalistic included). The registry holds the
checkpoints a user can download today; the tables add the resolutions and widths that only
the papers report (V2 at 96-192 px, V3 at 96-256 px).

Latency does not depend on the weights, so candidates that build the same network at the
same resolution (the five V3-Large 1.0 checkpoints at 224 px, say) are timed once:
:meth:`Candidate.timing_key` leaves out the options that change numbers but not the graph
(BatchNorm's eps and momentum fold away; dropout is off at inference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: ``create_model`` options that change the weights' values but not the inference graph.
LATENCY_FREE_OPTIONS: tuple[str, ...] = ("bn_eps", "bn_momentum", "dropout")
#: Option values every model builds by default; a candidate that spells them out (the
#: registry's converter options do) times the same network as one that leaves them out.
_DEFAULTS: dict[str, Any] = {"num_classes": 1000, "in_chans": 3, "width_mult": 1.0,
                             "padding": "symmetric", "width_convention": "torchvision"}
#: Families ``--quick`` keeps (the minimalistic variants are skipped there).
QUICK_MODELS: tuple[str, ...] = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
                                 "mobilenet_v3_small")


@dataclass
class Candidate:
    """One configuration: ``create_model(model, **kwargs)`` fed ``resolution`` px images,
    whose ImageNet top-1 (%) ``source`` publishes (a registry tag or a paper table row)."""

    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    resolution: int = 224
    top1: float = 0.0
    source: str = ""

    @property
    def width_mult(self) -> float:
        return float(self.kwargs.get("width_mult", 1.0))

    def label(self) -> str:
        """``mobilenet_v3_large 1.0 @224``: how tables and messages name the candidate."""
        return f"{self.model} {self.width_mult} @{self.resolution}"

    def timing_key(self) -> tuple[Any, ...]:
        """Equal for candidates whose latency is the same measurement (module docstring)."""
        options = {k: v for k, v in self.kwargs.items()
                   if k not in LATENCY_FREE_OPTIONS and _DEFAULTS.get(k, object()) != v}
        return self.model, self.resolution, tuple(sorted(options.items()))

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label(), "model": self.model, "kwargs": dict(self.kwargs),
                "resolution": self.resolution, "top1": self.top1, "source": self.source}


def registry_candidates() -> list[Candidate]:
    """One candidate per published checkpoint with a top-1, at its evaluation crop."""
    from ..io.weights import entry_options, list_weights

    return [Candidate(w.model, entry_options(w), w.preprocessing.crop, float(w.top1), w.tag)
            for w in list_weights() if w.top1 is not None]


def paper_candidates() -> list[Candidate]:
    """One candidate per paper table row that prints a top-1."""
    from ..analysis.paper.published import PUBLISHED

    return [Candidate(p.model, p.model_kwargs(), p.resolution, float(p.top1),
                      f"{p.source}: {p.label}") for p in PUBLISHED if p.top1 is not None]


def published_candidates() -> list[Candidate]:
    """Every candidate: the registry's checkpoints, then the papers' table rows."""
    return registry_candidates() + paper_candidates()


def quick_candidates(candidates: Sequence[Candidate]) -> tuple[list[Candidate], str]:
    """The subset ``--quick`` times, and a sentence saying what it skipped.

    Exporting a network to ONNX takes 3-8 s on 2 shared cores, which bounds a one-minute
    run to about eight networks: per family of :data:`QUICK_MODELS`, the smallest width and
    1.0, each at the one resolution with the highest published top-1 (twelve networks, with
    the largest widths, took 99 s on the loaded 2-core machine).
    """
    best: dict[tuple[str, float], Candidate] = {}
    for c in candidates:
        key = (c.model, c.width_mult)
        if c.model in QUICK_MODELS and (key not in best or c.top1 > best[key].top1):
            best[key] = c
    kept = []
    for model in QUICK_MODELS:
        widths = sorted(w for m, w in best if m == model)
        for w in dict.fromkeys(x for x in (widths[:1] + [1.0]) if x in widths):
            kept.append(best[(model, w)])
    skipped = len(candidates) - len(kept)
    return kept, (f"--quick timed {len(kept)} of {len(candidates)} candidates: per family the "
                  "smallest width and 1.0, each at its best-published resolution; skipped "
                  f"{skipped} (other widths and resolutions, minimalistic variants) "
                  "and timed each for less time: run without --quick for all")
