"""The confusion matrix that ``eval`` and ``demo`` show: as aligned text and as a PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..io.checkpoint import atomic_write_bytes

#: Above this many classes, `eval` leaves the confusion matrix out of its text output.
MAX_TEXT_CONFUSION = 20
#: Above this many classes, the plot's cells carry no counts (they would not be legible).
MAX_CELL_LABELS = 20


def format_confusion(confusion: list[list[int]], classes: list[str]) -> str:
    """Rows are true classes, columns predicted ones (numbered, with a legend below)."""
    k = len(classes)
    cell = max(5, max(len(str(v)) for row in confusion for v in row) + 1)
    label = max(len(c) for c in classes)
    head = " " * (label + 1) + "".join(f"{i:>{cell}d}" for i in range(k))
    rows = [f"{c:>{label}s} " + "".join(f"{v:>{cell}d}" for v in row) for c, row in zip(classes, confusion)]
    legend = "columns: " + ", ".join(f"{i}={c}" for i, c in enumerate(classes))
    return "\n".join([head, *rows, legend])


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """Row-normalised heat map, written atomically to ``path``.

    A :class:`matplotlib.figure.Figure` renders without pyplot, so matplotlib's backend is
    left as the caller set it; matplotlib is imported here, only when a plot is made.
    """
    from matplotlib.figure import Figure

    m = np.asarray(confusion, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = min(max(4.0, 0.5 * len(classes) + 2), 40.0)  # 1000 classes must not make a 6 GB image
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if len(classes) <= MAX_CELL_LABELS:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())
    return path
