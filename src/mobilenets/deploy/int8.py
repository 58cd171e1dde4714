"""Post-training static int8 quantization of an exported ONNX file with onnxruntime.

QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops, which onnxruntime
fuses into int8 kernels, and which other runtimes can read), per-channel symmetric int8
weights, per-tensor uint8 activations whose ranges are the min/max observed on real
images, so the file that is measured is the file that is served.

Two changes after onnxruntime's quantizer make the file load in OpenCV's DNN module too
(:func:`float_gemm_bias`; :func:`~.int8_rewrite.int8_friendly` gives the constants it adds
shape ``(1,)``) and the exporter's debug records are dropped
(:func:`~.onnx.strip_debug_info`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MobilenetsError
from ..io.artifact import META_KEY, require_onnx
from ..io.checkpoint import atomic_write_bytes
from .calibration import ImageCalibrationReader
from .int8_rewrite import int8_friendly
from .onnx import strip_debug_info

INT8_NOTE = ("onnxruntime static QDQ, per-channel int8 weights, uint8 activations, "
             "MinMax calibration")


def quantize_onnx(fp32: str | os.PathLike, output: str | os.PathLike,
                  images: Iterable[torch.Tensor], preprocessing: dict[str, Any],
                  batch_size: int = 8, reduce_range: bool | None = None) -> Path:
    """Post-training static int8 quantization of the ONNX file ``fp32`` into ``output``.

    Activation ranges are calibrated on ``images`` (uint8 ``(C, H, W)`` tensors, a few
    hundred are plenty). The metadata of ``fp32`` is carried over, with the int8 settings
    added. ``reduce_range`` rounds weights to [−64, 64] instead of [−127, 127], which x86
    CPUs without VNNI need to avoid int16 saturation in onnxruntime's kernels; by default
    it follows this machine (:func:`mobilenets.ops.cpu.reduce_range_default`).
    """
    from ..ops.cpu import reduce_range_default
    from ..training.qat import weight_qmax

    onnx, _ = require_onnx()
    source = onnx.load(str(fp32))
    props = {p.key: p.value for p in source.metadata_props}
    reader = ImageCalibrationReader(images, preprocessing, batch_size=batch_size)
    if reduce_range is None:
        reduce_range = reduce_range_default()
    proto = strip_debug_info(float_gemm_bias(_quantized(source, reader, reduce_range)))
    meta = json.loads(props.get(META_KEY, "{}"))
    meta["int8"] = {"method": INT8_NOTE, "calibration_images": reader.count,
                    "reduce_range": reduce_range, "weight_range": weight_qmax(reduce_range)}
    props[META_KEY] = json.dumps(meta, sort_keys=True)
    onnx.helper.set_model_props(proto, props)
    output = Path(output)
    atomic_write_bytes(output, proto.SerializeToString())
    return output


def _quantized(source: Any, reader: ImageCalibrationReader, reduce_range: bool) -> Any:
    """``source`` rewritten (:func:`int8_friendly`), pre-processed and quantized by onnxruntime,
    which works on files, hence the temporary directory."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="mobilenets-int8-") as tmp:
        rewritten, prepared, quantized = (Path(tmp) / n for n in ("a.onnx", "b.onnx", "c.onnx"))
        onnx.save(int8_friendly(source), str(rewritten))
        # Shape inference and onnxruntime's graph clean-up, as its quantization guide asks.
        quant_pre_process(str(rewritten), str(prepared))
        try:
            quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, reduce_range=reduce_range,
                            calibrate_method=CalibrationMethod.MinMax)
        except ValueError as e:
            if reader.count == 0:  # onnxruntime: "No data is collected."
                raise MobilenetsError("no calibration images: int8 needs real images to "
                                      "choose its activation ranges (--calibration-data)") from e
            raise
        return onnx.load(str(quantized))


def float_gemm_bias(proto: Any) -> Any:
    """``proto`` with each ``Gemm`` bias that is a ``DequantizeLinear`` of an int32 constant
    replaced by that constant dequantized: the same float numbers (the int32 bias is the
    float bias rounded to the scale of the product, and stays so), in a form OpenCV 5
    accepts (it fails on the dequantized int32 bias). In place, and returned."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    for gemm in (n for n in graph.node if n.op_type == "Gemm" and len(n.input) > 2):
        dq = producer.get(gemm.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input):
            continue
        q, scale, *zero = (numpy_helper.to_array(inits[i]) for i in dq.input)
        if q.dtype != np.int32:
            continue
        bias = ((q.astype(np.int64) - (zero[0] if zero else 0)) * scale.astype(np.float64)).astype(np.float32)
        name = f"{gemm.input[2]}_float"
        graph.initializer.append(numpy_helper.from_array(bias, name))
        gemm.input[2] = name
    _drop_unused(graph)
    return proto


def _drop_unused(graph: Any) -> None:
    """Remove nodes whose outputs nothing reads (the replaced bias dequantizations) and the
    initializers no node reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
