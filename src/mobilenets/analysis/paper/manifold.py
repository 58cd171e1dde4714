"""Topic ``manifold``: V2 Figure 1, quantified. ReLU collapses a 2-D spiral embedded in few
dimensions and keeps it in many (V2 §3.2). The figure is drawn with matplotlib, imported
only when a figure is asked for, on an Agg canvas that never touches a display."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import MobilenetsError

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
