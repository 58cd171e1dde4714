"""LiteRT (formerly TensorFlow Lite) ``.tflite``: ``litert_torch.convert`` from the PyTorch
model, int8 through litert-torch's PT2E quantizer, run by ``ai_edge_litert``'s interpreter
(XNNPACK delegate) with ``threads`` threads.

Batch size: the graph is converted for one image and the callable runs a batch one image at
a time. litert-torch 0.10 cannot lower a dynamic batch dimension of these networks (its JAX
lowering fails on the symbolic size), and resizing the input of a graph converted for a
fixed batch fails in XNNPACK, because the flatten before the classifier keeps the batch size
of the conversion as a constant. One image per call is also how LiteRT runs on a device.

int8 (../shared/RUNTIMES.md): the ``.tflite`` keeps int8 input and output tensors; the
callable quantizes the float input with the input tensor's (scale, zero point) and
dequantizes the logits, so that it takes float32 and returns float32 like every runtime.
The XNNPACK delegate may split an int8 graph into several partitions (V3's hard-swish and
squeeze-excite); their number is logged at DEBUG level when a file is loaded.

Safety: a ``.tflite`` can name custom operations (``Flex`` ops run TensorFlow kernels, others
need a registerer from a shared library). The interpreter is built with no custom-op
registerer and no delegate library, and a file naming any custom operation is refused before
the interpreter reads it (:func:`check_operators`).

The converter imports TensorFlow-style C++ logging (absl, XNNPACK's ``INFO`` line), JAX,
torchao (which warns about its CUDA libraries), a ``rich`` progress display and Python
warnings; :func:`_quiet` keeps all of it out of the terminal (``--verbose`` shows it).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
import torch
from torch import nn

from ...errors import MobilenetsError
from ...logs import quiet_third_party

INT8_NOTE = ("litert-torch PT2E quantization: symmetric int8 activations, per-channel int8 "
             "weights, MinMax ranges from the calibration images; int8 input and output "
             "tensors, quantized and dequantized by the loader")

_LOGGERS = ("litert_torch", "torchao", "torch", "jax", "absl", "ai_edge_litert", "tensorflow")
#: Read by the C++ libraries when they first log: set only while converting or loading.
_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "LITERT_TORCH_SHOW_PROGRESS": "n"}
_CUSTOM = 32  # BuiltinOperator.CUSTOM in the .tflite schema
_log = logging.getLogger("mobilenets")


def companions(path: Path) -> list[Path]:
    """A ``.tflite`` is one file."""
    return []


@contextlib.contextmanager
def _quiet(label: str) -> Iterator[None]:
    """Third-party noise (C++ logs, Python loggers, warnings, the progress display) passed to
    the ``mobilenets`` logger (``--verbose``), with absl and TensorFlow told to log less."""
    with mock.patch.dict(os.environ, _ENVIRONMENT), quiet_third_party(_LOGGERS, label):
        yield


# ----------------------------------------------------------------------------- convert

def convert(model: nn.Module, example: torch.Tensor, output: Path,
            calibration: np.ndarray | None) -> list[Path]:
    """Write ``model`` as a ``.tflite`` for one image, int8 when ``calibration`` is given."""
    one = example[:1]
    with _quiet("while converting to LiteRT"):
        litert_torch = _converter()
        if calibration is None:
            converted = litert_torch.convert(model, (one,))
        else:
            converted = _quantized(model, one, calibration)
        converted.export(str(output))
    return [output]


def _converter() -> ModuleType:
    """litert-torch, imported only to convert (loading needs only ``ai_edge_litert``), or
    the error that names the extra, as :func:`mobilenets.deploy.runtimes.require` does."""
    try:
        importlib.import_module("torchao")
        return importlib.import_module("litert_torch")
    except ImportError as e:
        raise MobilenetsError(f"the litert runtime needs the litert extra to convert ({e.name} does "
                              f"not import: {e}): pip install 'mobilenets[litert]'") from e


def _quantized(model: nn.Module, one: torch.Tensor, calibration: np.ndarray) -> object:
    """PT2E int8 (per-channel weights), calibrated image by image, converted by litert-torch."""
    litert_torch = _converter()
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = prepare_pt2e(torch.export.export(model, (one,)).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):  # the graph was exported for one image
            graph(torch.from_numpy(np.ascontiguousarray(calibration[i:i + 1])))
    graph = convert_pt2e(graph, fold_quantize=False)
    # Exported from the eval-mode, BN-folded model: nothing in it depends on the mode, but
    # the flag stays True on the GraphModule and litert-torch would warn about it.
    graph.training = False
    return litert_torch.convert(graph, (one,), quant_config=QuantConfig(pt2e_quantizer=quantizer))


# ----------------------------------------------------------------------------- load

def check_operators(path: Path) -> None:
    """Refuse a ``.tflite`` that names a custom (or ``Flex``) operation: only LiteRT's
    builtin kernels run our files."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise MobilenetsError(f"{path} is not a loadable litert file (no TFL3 flatbuffer identifier)")
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        custom = [(c.CustomCode() or b"?").decode(errors="replace") for c in codes
                  if max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) == _CUSTOM]
    except Exception as e:  # noqa: BLE001 - flatbuffers raises many types for foreign bytes
        raise MobilenetsError(f"{path} is not a loadable litert file (damaged .tflite flatbuffer: "
                              f"{type(e).__name__}: {str(e)[:200]})") from e
    if custom:
        raise MobilenetsError(f"{path} is not a loadable litert file: it names custom operations "
                              f"({', '.join(sorted(set(custom)))}), which mobilenets never runs")


def load(path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The interpreter (XNNPACK) on ``threads`` threads (PyTorch's count when ``None``), as a
    float32-in, float32-out callable on batches of any size."""
    check_operators(path)
    with _quiet("while loading a LiteRT model"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
        interpreter.allocate_tensors()
    _log_partitions(interpreter, path)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    encode, decode = _encoder(source), _decoder(target)

    def run(x: np.ndarray) -> np.ndarray:
        if x.ndim != len(source["shape"]) or tuple(x.shape[1:]) != tuple(source["shape"][1:]):
            raise ValueError(f"expected images of shape {tuple(source['shape'][1:])}, got {tuple(x.shape[1:])}")
        out = []
        for i in range(x.shape[0]):
            interpreter.set_tensor(source["index"], encode(x[i:i + 1]))
            interpreter.invoke()
            out.append(decode(interpreter.get_tensor(target["index"])))
        return np.concatenate(out) if out else np.zeros((0, *target["shape"][1:]), np.float32)

    return run


def _quantization(details: dict) -> tuple[float, int, np.dtype] | None:
    """The (scale, zero point, type) of an int8 tensor; ``None`` for a float32 one."""
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return None
    scale, zero = details["quantization"]
    if not scale or dtype.kind not in "iu":
        raise ValueError(f"tensor {details['name']} is {dtype} without a quantization scale")
    return float(scale), int(zero), dtype


def _encoder(details: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Float32 images to the input tensor's type (int8 through its scale and zero point)."""
    params = _quantization(details)
    if params is None:
        return lambda a: np.ascontiguousarray(a, dtype=np.float32)
    scale, zero, dtype = params
    info = np.iinfo(dtype)
    return lambda a: np.clip(np.round(a / scale) + zero, info.min, info.max).astype(dtype)


def _decoder(details: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The output tensor back to float32 logits (copied: the interpreter reuses its buffer)."""
    params = _quantization(details)
    if params is None:
        return lambda a: np.array(a, dtype=np.float32)
    scale, zero, _ = params
    return lambda a: ((a.astype(np.float32) - zero) * scale).astype(np.float32)


def _log_partitions(interpreter: object, path: Path) -> None:
    """How many pieces XNNPACK runs the graph in (V3's int8 splits; V2's is one)."""
    details = getattr(interpreter, "_get_ops_details", None)
    if details is None:
        return
    with contextlib.suppress(Exception):
        ops = details()
        delegated = sum(op.get("op_name") == "DELEGATE" for op in ops)
        _log.debug("%s: %d XNNPACK partition(s), %d operations", path, delegated, len(ops))
