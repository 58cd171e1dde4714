"""Topic ``activations``: ReLU6, and how far V3's piecewise-linear hard sigmoid and hard
swish are from sigmoid and swish (V3 §5.2), evaluated with the modules the networks use.
matplotlib is imported only to draw the figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import MobilenetsError


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
