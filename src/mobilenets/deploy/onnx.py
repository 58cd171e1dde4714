"""ONNX export: the ``torch.export``-based exporter at opset :data:`ONNX_OPSET`, made fit for
the runtimes people feed ONNX to (onnxruntime, OpenVINO, OpenCV's DNN module), with the
artifact's metadata embedded in the file (``metadata_props["mobilenets"]``).

``nn.Hardswish`` becomes the native ``HardSwish`` op; squeeze-excite's ``HardSigmoid`` gate
becomes a ``Clip`` of the convolution before it, with the hard-sigmoid's 1/6 and 0.5 folded
into that convolution (:func:`~.int8_rewrite.fold_gates`: OpenCV computes the unfolded gate
wrong). The exporter's per-node debug records (stack traces with the exporting machine's
paths) are dropped. Besides mean and std, the metadata says how pixels become the model's
input (scale 1/255, channel order), which OpenCV's ``blobFromImage`` needs.
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
from .int8_rewrite import fold_gates
from .tracing import INPUT_NAME, OUTPUT_NAME, batch_dim, example_input, quiet_exporter

#: ONNX opset of exported graphs: >= 14 has native HardSwish, 18 is the exporter's default.
ONNX_OPSET = 18
#: uint8 pixels are multiplied by this before ``(x - mean) / std``.
PIXEL_SCALE = 1 / 255


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
    proto = fold_gates(program.model_proto)
    strip_debug_info(proto)
    onnx.helper.set_model_props(proto, metadata_props(meta))
    return proto.SerializeToString()


def strip_debug_info(proto: Any) -> Any:
    """``proto`` without the exporter's per-node doc strings and metadata (the PyTorch stack
    trace, module path and FX node of each op: most of a small model's file, and absolute
    paths of the machine that exported it); in place, and returned."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        _clear(graph)
        for node in graph.node:
            _clear(node)
            graphs += [a.g for a in node.attribute if a.HasField("g")]
            graphs += [g for a in node.attribute for g in a.graphs]
        for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            _clear(value)
    for function in proto.functions:
        for item in (function, *function.node):
            _clear(item)
    return proto


def _clear(message: Any) -> None:
    message.doc_string = ""
    if hasattr(message, "metadata_props"):  # onnx >= 1.16
        del message.metadata_props[:]


def pixel_format(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """How an image's uint8 pixels become the model's input, beyond mean and std: the scale
    applied first and the channel order (OpenCV reads images as BGR)."""
    channels = preprocessing["channels"]
    order = {1: "single channel", 3: "RGB"}.get(channels, f"{channels} channels, as trained")
    return {"pixel_scale": PIXEL_SCALE, "channel_order": order}


def metadata_props(meta: dict[str, Any]) -> dict[str, str]:
    """The file's ``metadata_props``: the full ``meta`` as JSON under :data:`META_KEY`, its
    preprocessing extended by :func:`pixel_format`, and the same facts as plain keys for
    readers that do not parse JSON (``input_size``, ``mean``, ``std`` comma-separated)."""
    pre = {**meta["preprocessing"], **pixel_format(meta["preprocessing"])}
    meta = {**meta, "preprocessing": pre}
    return {META_KEY: json.dumps(meta, sort_keys=True),
            "layout": "NCHW", "input_size": str(pre["input_size"]),
            "pixel_scale": repr(PIXEL_SCALE), "channel_order": pre["channel_order"],
            "mean": ",".join(repr(float(v)) for v in pre["mean"]),
            "std": ",".join(repr(float(v)) for v in pre["std"])}
