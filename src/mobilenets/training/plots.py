"""The run's learning curves as a PNG (``curves.png``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation (PNG).

    Drawn on a :class:`matplotlib.figure.Figure`, which renders with the Agg canvas of its
    own and so needs neither pyplot nor a global backend: importing or calling this leaves
    matplotlib's backend as the user set it (issue 27). matplotlib is imported here, not at
    module level, so training modules import without it."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    if any("ema_val_acc" in h for h in history):
        ax2.plot(epochs, [h.get("ema_val_acc") for h in history], "o-", label="validation (EMA)")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("top-1 accuracy"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)
