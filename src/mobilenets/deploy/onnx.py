"""ONNX export: the ``torch.export``-based exporter at opset :data:`ONNX_OPSET`, with the
artifact's metadata embedded in the file (``metadata_props["mobilenets"]``).

``nn.Hardswish``/``nn.Hardsigmoid`` become the native ``HardSwish``/``HardSigmoid`` ops.
``onnx`` (and ``onnxscript``, which the exporter needs) are the optional
``mobilenets[onnx]`` extra, imported only when a graph is exported.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from ..errors import MobilenetsError
from ..io.artifact import META_KEY, require_onnx
from .tracing import INPUT_NAME, OUTPUT_NAME, batch_dim, example_input, quiet_exporter

#: ONNX opset of exported graphs: >= 14 has native HardSwish, 18 is the exporter's default.
ONNX_OPSET = 18


def onnx_bytes(model: nn.Module, preprocessing: dict[str, Any], meta: dict[str, Any],
               opset: int = ONNX_OPSET) -> bytes:
    """The serialized ONNX graph of an inference-ready ``model`` with ``meta`` embedded."""
    onnx, _ = require_onnx()
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(model, (example_input(preprocessing),), dynamo=True,
                                        opset_version=opset, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME],
                                        dynamic_shapes=(batch_dim(),), verbose=False)
    except ImportError as e:  # the exporter needs onnxscript
        raise MobilenetsError(f"ONNX export needs {e.name}: pip install 'mobilenets[onnx]'") from e
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta, sort_keys=True)})
    return proto.SerializeToString()
