"""TorchScript export: the inference-ready model traced and frozen (weights inlined)."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from ..io.artifact import torchscript_quietly
from .tracing import example_input


def torchscript_bytes(model: nn.Module, preprocessing: dict[str, Any]) -> bytes:
    """A traced, frozen TorchScript module (weights inlined as constants).

    Traced, not scripted: MobileNets have no data-dependent control flow, and tracing
    accepts every module the library builds."""
    buf = io.BytesIO()
    with torch.no_grad(), torchscript_quietly():
        # check_trace re-traces to compare graphs; the parity check after export is stricter.
        traced = torch.jit.trace(model, example_input(preprocessing), check_trace=False)
        torch.jit.save(torch.jit.freeze(traced.eval()), buf)
    return buf.getvalue()
