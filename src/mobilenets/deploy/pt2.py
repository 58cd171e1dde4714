"""``.pt2`` export: a ``torch.export`` program, the format PyTorch now recommends over TorchScript."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from .tracing import batch_dim, example_input, quiet_exporter


def pt2_bytes(model: nn.Module, preprocessing: dict[str, Any]) -> bytes:
    """A ``torch.export`` program with a dynamic batch dimension."""
    buf = io.BytesIO()
    with quiet_exporter(), torch.no_grad():
        program = torch.export.export(model, (example_input(preprocessing),),
                                      dynamic_shapes=(batch_dim(),))
        torch.export.save(program, buf)
    return buf.getvalue()
