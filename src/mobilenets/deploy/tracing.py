"""What the three exporters share: the example input they trace with, the dynamic batch
dimension, the graph's input and output names, and silence about the exporters' internals."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Batch size of the example input used to trace; parity runs other sizes (1 and 3) so a
#: batch dimension that was baked in as a constant fails the check.
TRACE_BATCH = 2


def example_input(preprocessing: dict[str, Any]) -> torch.Tensor:
    """A fixed standard-normal batch of :data:`TRACE_BATCH` inputs, shaped as ``preprocessing`` says."""
    c, s = preprocessing["channels"], preprocessing["input_size"]
    return torch.randn(TRACE_BATCH, c, s, s, generator=torch.Generator().manual_seed(0))


def batch_dim() -> dict[int, Any]:
    """``dynamic_shapes`` entry of the input: any batch size of at least 1."""
    return {0: torch.export.Dim("batch", min=1)}


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence what ``torch.export`` and the ONNX exporter say about their own internals
    (optional torchvision operators, a deprecated pytree call): nothing a user can act on."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                    category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
