"""The running sums of a training epoch: loss, correct predictions, images and time."""

from __future__ import annotations

import time
from typing import Any

import torch


class EpochMeter:
    """Sums over the micro-batches this process trained in the epoch so far.

    ``partial`` carries on the sums (over all processes) of an epoch stopped part-way, so
    that the resumed epoch reports what an uninterrupted one would; the time it had taken
    moves ``t0`` back."""

    def __init__(self, partial: dict[str, float] | None = None) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.correct = torch.zeros((), dtype=torch.int64)
        self.seen, self.t0, self.lr = 0, time.perf_counter(), 0.0
        self.last_log = self.t0
        if partial:
            self.loss_sum += partial["loss_sum"]
            self.correct += int(partial["correct"])
            self.seen, self.t0 = int(partial["seen"]), self.t0 - partial["seconds"]

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = len(labels)
        self.seen += n
        self.loss_sum += loss.detach().double().cpu() * n
        self.correct += (logits.detach().argmax(1) == labels).sum().cpu()

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / self.seen

    @property
    def acc(self) -> float:
        return int(self.correct) / self.seen

    def sums(self) -> torch.Tensor:
        """Loss sum, correct and seen as one float64 tensor, for one all-reduce."""
        return torch.stack([self.loss_sum, self.correct.double(), torch.tensor(float(self.seen), dtype=torch.float64)])

    def partial(self, sums: torch.Tensor) -> dict[str, float]:
        """What a checkpoint saved mid-epoch keeps of the (all-reduced) ``sums``."""
        return {"loss_sum": float(sums[0]), "correct": int(sums[1].round()),
                "seen": int(sums[2].round()), "seconds": time.perf_counter() - self.t0}

    def stats(self, sums: torch.Tensor) -> dict[str, Any]:
        """The epoch's row of metrics from the (all-reduced) ``sums``."""
        elapsed = time.perf_counter() - self.t0
        return {"train_loss": float(sums[0] / sums[2].clamp_min(1)),
                "train_acc": float(sums[1] / sums[2].clamp_min(1)),
                "images_per_sec": float(sums[2]) / max(elapsed, 1e-9), "lr": self.lr,
                "train_seconds": elapsed}

    def report(self, bar: Any, epoch: int, step: int, steps: int, first_step: int, world_size: int
               ) -> str | None:
        """The running loss, accuracy and speed after ``step``: shown on the progress ``bar``,
        or, without one, returned as a log line at most every 30 s (and at the epoch's end)."""
        elapsed = time.perf_counter() - self.t0
        img_s = self.seen * world_size / max(elapsed, 1e-9)
        if bar is not None:
            bar.set_postfix(loss=f"{self.loss:.3f}", acc=f"{self.acc:.3f}", img_s=f"{img_s:.0f}",
                            lr=f"{self.lr:.3g}")
            return None
        if time.perf_counter() - self.last_log <= 30 and step + 1 != steps:
            return None
        self.last_log = time.perf_counter()
        eta = (steps - step - 1) * elapsed / max(step + 1 - first_step, 1)
        return (f"  epoch {epoch + 1} step {step + 1}/{steps}: loss {self.loss:.4f} acc {self.acc:.4f} "
                f"{img_s:.0f} img/s, epoch ETA {eta / 60:.1f} min")
