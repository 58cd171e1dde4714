"""Whether an export reproduces its PyTorch model: an export that does not is an error,
not a warning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import MobilenetsError

#: Largest allowed ``max|artifact - pytorch| / max|pytorch|``. Float exports differ from
#: PyTorch only by the order of floating-point operations (~1e-6); int8 rounds every
#: activation to 256 levels, which moves logits by a few percent of their range.
FLOAT_TOLERANCE = 1e-4
INT8_TOLERANCE = 0.25


@dataclass
class Parity:
    """How closely an artifact reproduces the PyTorch model on sample inputs."""

    max_abs_diff: float
    max_abs_logit: float
    tolerance: float  # on max_abs_diff / max_abs_logit
    top1_agreement: float
    inputs: int
    batch_sizes: tuple[int, ...]

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, np.finfo(np.float32).tiny)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.relative <= self.tolerance

    def summary(self) -> str:
        return (f"max |Δ| vs PyTorch {self.max_abs_diff:.3g} = {self.relative:.3g} of the "
                f"largest logit (tolerance {self.tolerance:g}), top-1 agreement "
                f"{self.top1_agreement:.1%}, {self.inputs} inputs in batches of "
                f"{', '.join(map(str, self.batch_sizes))}")


def check_parity(artifact: Callable[[np.ndarray], np.ndarray], reference: nn.Module,
                 inputs: np.ndarray, tolerance: float) -> Parity:
    """Run ``artifact`` and the eval-mode ``reference`` on ``inputs``; measure the gap.

    The artifact sees a batch of 1 and then the rest, which checks the dynamic batch
    dimension as well (exports are traced at batch 2). The error is relative to the
    largest reference logit, the measure the converter tests use, so it means the same
    for a trained model (logits ~10) and a random one (logits ~1e-9).
    """
    if len(inputs) < 2:
        raise MobilenetsError("parity needs at least 2 sample inputs")
    reference = reference.eval()
    with torch.no_grad():
        ref = reference(torch.from_numpy(inputs)).numpy()
    got = np.concatenate([artifact(inputs[:1]), artifact(inputs[1:])])
    if got.shape != ref.shape:
        raise MobilenetsError(f"artifact output shape {got.shape} != PyTorch {ref.shape}")
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean()) if ref.ndim == 2 else 1.0
    return Parity(diff, float(np.abs(ref).max()), tolerance, agree, len(inputs),
                  (1, len(inputs) - 1))


def top1_agreement(artifact: Callable[[np.ndarray], np.ndarray], reference: nn.Module,
                   inputs: np.ndarray, batch_size: int = 64) -> float:
    """The fraction of ``inputs`` on which ``artifact`` and ``reference`` pick the same class:
    what int8 costs, on images, without labels."""
    reference = reference.eval()
    same = 0
    for i in range(0, len(inputs), batch_size):
        x = inputs[i:i + batch_size]
        with torch.no_grad():
            ref = reference(torch.from_numpy(x)).numpy()
        same += int((artifact(x).argmax(1) == ref.argmax(1)).sum())
    return same / max(len(inputs), 1)
