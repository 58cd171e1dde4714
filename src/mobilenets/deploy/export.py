"""Ship a trained MobileNet: an inference graph, checked exports, int8, and one loader.

The path from a checkpoint to a deployed file is

1. :func:`prepare_for_inference`: a copy in eval mode with every BatchNorm folded into the
   convolution before it (:func:`fold_batchnorm`) and dropout removed. Both are exact in
   eval mode and leave the exported graph with only the operations a runtime must execute.
2. :func:`export_model`: write ONNX (opset :data:`ONNX_OPSET`, the ``torch.export``-based
   exporter; ``nn.Hardswish``/``nn.Hardsigmoid`` become the native ``HardSwish``/
   ``HardSigmoid`` ops), TorchScript (traced and frozen) or a ``torch.export`` program
   (``.pt2``), all with a dynamic batch dimension. The file is then loaded back with the
   runtime that will serve it and compared with the PyTorch model (:func:`check_parity`):
   an export that does not reproduce the model is an error, not a warning.
3. Optionally int8 (:func:`quantize_onnx`): post-training static quantization with
   ``onnxruntime.quantization`` (QDQ format, per-channel int8 weights, uint8 activations
   calibrated on real images), so the file that is measured is the file that is served.

The preprocessing (input size, channels, mean/std) and class names travel with every
artifact: inside the ONNX file (``metadata_props["mobilenets"]``), in a sidecar
``<file>.json`` for TorchScript and ``.pt2``. :func:`load_artifact` reads any of them back
as a callable on float32 NCHW arrays.

``onnx`` and ``onnxruntime`` are the optional ``mobilenets[onnx]`` extra; they are imported
only by the functions that need them.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..io.artifact import EXTENSIONS, META_KEY, Artifact, load_artifact, onnx_session, require_onnx, sidecar_path, torchscript_quietly
from ..io.checkpoint import atomic_write_bytes, check_meta_fields, checkpoint_file, load_model
from ..models.conventions import check_choice
from ..errors import MobilenetsError
from ..models.layers import ConvNormAct

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "pt2")
#: ONNX opset of exported graphs: >= 14 has native HardSwish, 18 is the exporter's default.
ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Largest allowed ``max|artifact - pytorch| / max|pytorch|``. Float exports differ from
#: PyTorch only by the order of floating-point operations (~1e-6); int8 rounds every
#: activation to 256 levels, which moves logits by a few percent of their range.
FLOAT_TOLERANCE = 1e-4
INT8_TOLERANCE = 0.25
#: Batch size of the example input used to trace; parity runs other sizes (1 and 3) so a
#: batch dimension that was baked in as a constant fails the check.
_TRACE_BATCH = 2


# ----------------------------------------------------------------------------- the graph

def fold_conv_bn_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place: ``bn(conv(x)) == conv'(x)``.

    ``w' = w·γ/√(σ²+ε)`` per output channel, ``b' = β + (b − μ)·γ/√(σ²+ε)``, in float64
    so that folding adds no rounding error beyond the final cast.
    """
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter((bn.bias.double() + (bias - bn.running_mean.double()) * scale)
                             .to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose ``ConvNormAct`` layers have no BatchNorm.

    Every BN of a MobileNet directly follows a convolution inside a ``ConvNormAct``, so
    folding it there covers the whole network; the ``bn`` child becomes ``nn.Identity``.
    """
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvNormAct) and isinstance(m.bn, nn.BatchNorm2d):
            fold_conv_bn_(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """A copy with BatchNorm folded, dropout removed and gradients off (eval mode).

    Dropout is the identity in eval mode; removing it keeps it out of exported graphs.
    """
    model = fold_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, nn.Identity())
    model.requires_grad_(False)
    return model


class Bf16Inference(nn.Module):
    """An inference-ready model whose weights and activations are bfloat16, called with
    and returning float32 tensors like the model it came from (see :func:`bf16_inference`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.model(x.to(torch.bfloat16))
        if isinstance(out, torch.Tensor):
            return out.float()
        return [t.float() for t in out]  # a features_only model's maps


def bf16_inference(model: nn.Module) -> Bf16Inference:
    """A copy of ``model`` for bf16 inference on CPUs with native bf16 instructions:
    BatchNorm folded (:func:`prepare_for_inference`), channels-last, every weight and
    activation in bfloat16, float32 in and out.

    Why: on AVX-512-BF16/AMX CPUs oneDNN's bf16 convolutions halve the bytes that
    MobileNets' memory-bound layers move; under ``torch.compile`` this is the fastest
    PyTorch path measured here (README: Latency). bf16 keeps 8 bits of mantissa, so logits
    move by about 1 % of their range: ``mobilenets eval --precision bf16`` measures what
    that does to accuracy (uncompiled; Inductor's fused kernels keep some intermediates
    in fp32, which moves logits by less than the bf16 rounding itself). Folding happens
    in float32, before the cast, so the folded weights are rounded once.
    """
    ready = prepare_for_inference(model).to(memory_format=torch.channels_last)
    return Bf16Inference(ready.to(torch.bfloat16)).eval()


def input_channels(model: nn.Module) -> int:
    """Input channels of ``model`` (its first convolution's)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise MobilenetsError("the model has no convolution; cannot infer its input channels")
    return first.in_channels


# ----------------------------------------------------------------------------- preprocessing

def resolve_preprocessing(model: nn.Module, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's ``preprocessing`` checked against ``model``, ``channels`` filled in.

    Converted checkpoints store mean/std/input_size without ``channels``; trained ones store
    all four. Without mean/std an artifact could not be used correctly, so that is an error.
    """
    pre = dict((meta or {}).get("preprocessing") or {})
    channels = input_channels(model)
    pre.setdefault("channels", channels)
    if pre["channels"] != channels:
        raise MobilenetsError(f"preprocessing says {pre['channels']} input channels, the model "
                              f"has {channels}")
    missing = [k for k in ("input_size", "mean", "std") if k not in pre]
    if missing:
        raise MobilenetsError(f"checkpoint metadata lacks preprocessing {', '.join(missing)}; "
                              "re-save it with save_model(..., preprocessing={'input_size': ..., "
                              "'mean': [...], 'std': [...]})")
    for key in ("mean", "std"):
        if len(pre[key]) != channels:
            raise MobilenetsError(f"preprocessing {key} has {len(pre[key])} values for "
                                  f"{channels} channels")
    return pre


def preprocess(images: torch.Tensor | np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` images (a tensor or a numpy array) → the float32 array the
    model reads.

    Images must already have the model's size and channels (datasets load them that way);
    resizing here would silently differ from what the model was trained on.
    """
    from ..data.augment import normalize

    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise MobilenetsError(f"images must be uint8 pixels (0-255), got {images.dtype}")
    c, size = preprocessing["channels"], preprocessing["input_size"]
    if images.dim() != 4 or tuple(images.shape[1:]) != (c, size, size):
        raise MobilenetsError(f"images are {tuple(images.shape[1:])} (C, H, W) but the model "
                              f"expects ({c}, {size}, {size})")
    return normalize(images, preprocessing["mean"], preprocessing["std"]).numpy()


def batches(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Stack an iterable of ``(C, H, W)`` tensors into ``(B, C, H, W)`` batches."""
    batch: list[torch.Tensor] = []
    for img in images:
        batch.append(img)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def load_calibration_images(spec: str | os.PathLike, n: int, preprocessing: dict[str, Any],
                            seed: int = 0, holdout: dict[str, Any] | None = None) -> torch.Tensor:
    """``n`` images (uint8 ``(n, C, H, W)``) drawn at random from the training split of
    ``spec``, or from a flat folder of unlabelled images, centre-cropped as served.

    The training split, never the test split: calibration chooses quantization ranges,
    and choosing them on test images would leak the test set into the model. ``holdout``
    (a checkpoint's stored ``{"seed", "val_fraction"}``) leaves out the images its training
    held out for validation, so that they stay unseen too.
    """
    from ..data.datasets import IMAGE_EXTENSIONS, load_dataset, load_image, resize_center_crop, to_uint8_tensor

    if n < 1:
        raise MobilenetsError(f"--calibration-size must be >= 1, got {n}")
    channels, size = preprocessing["channels"], preprocessing["input_size"]
    path = Path(spec)
    files = []
    if path.is_dir() and not any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir()):
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if files:  # a flat folder: every image is a calibration candidate
        count = len(files)
        image = lambda i: to_uint8_tensor(resize_center_crop(load_image(files[i], channels), size))  # noqa: E731
    else:  # the labels do not matter, so one class folder is enough
        ds = load_dataset(str(spec), "train", image_size=size, channels=channels, augment=False,
                          min_classes=1, holdout=holdout)
        if ds.channels != channels:  # IDX/CIFAR arrays are not converted like files
            raise MobilenetsError(f"calibration data {spec} has {ds.channels}-channel images but the model "
                                  f"takes {channels}; calibrate on the data it was trained on")
        count = len(ds)
        image = lambda i: ds[i][0]  # noqa: E731
    if count == 0:
        raise MobilenetsError(f"calibration data {spec} has no images")
    if count < n:
        warnings.warn(f"calibration uses all {count} images of {spec} (fewer than the {n} asked for)",
                      stacklevel=2)
    idx = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.stack([image(i) for i in idx])


# ----------------------------------------------------------------------------- metadata

def artifact_metadata(model: nn.Module, preprocessing: dict[str, Any],
                      classes: Sequence[str] | None, fmt: str, **extra: Any) -> dict[str, Any]:
    """What an artifact carries besides its graph: enough to feed it and read its output."""
    meta = {"format": fmt, "model": getattr(model, "model_name", type(model).__name__),
            "model_kwargs": dict(getattr(model, "model_kwargs", {})),
            "preprocessing": preprocessing, "classes": list(classes) if classes else None,
            "input": INPUT_NAME, "output": OUTPUT_NAME, "mobilenets_version": __version__}
    meta.update(extra)
    return meta


def _write_sidecar(path: Path, meta: dict[str, Any], data: bytes) -> None:
    """The sidecar records the artifact's SHA-256, so that a model file later replaced
    beside it is refused instead of served with another model's classes and normalization."""
    meta = {**meta, "artifact_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(sidecar_path(path), (json.dumps(meta, indent=2) + "\n").encode())


# ----------------------------------------------------------------------------- exporters

@contextmanager
def _quiet_exporter() -> Iterator[None]:
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


def _example(preprocessing: dict[str, Any]) -> torch.Tensor:
    c, s = preprocessing["channels"], preprocessing["input_size"]
    return torch.randn(_TRACE_BATCH, c, s, s, generator=torch.Generator().manual_seed(0))


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1)}


def onnx_bytes(model: nn.Module, preprocessing: dict[str, Any], meta: dict[str, Any],
               opset: int = ONNX_OPSET) -> bytes:
    """The serialized ONNX graph of an inference-ready ``model`` with ``meta`` embedded."""
    onnx, _ = require_onnx()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(model, (_example(preprocessing),), dynamo=True,
                                        opset_version=opset, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME],
                                        dynamic_shapes=(_batch_dim(),), verbose=False)
    except ImportError as e:  # the exporter needs onnxscript
        raise MobilenetsError(f"ONNX export needs {e.name}: pip install 'mobilenets[onnx]'") from e
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta, sort_keys=True)})
    return proto.SerializeToString()


def torchscript_bytes(model: nn.Module, preprocessing: dict[str, Any]) -> bytes:
    """A traced, frozen TorchScript module (weights inlined as constants)."""
    buf = io.BytesIO()
    with torch.no_grad(), torchscript_quietly():
        # check_trace re-traces to compare graphs; the parity check after export is stricter.
        traced = torch.jit.trace(model, _example(preprocessing), check_trace=False)
        torch.jit.save(torch.jit.freeze(traced.eval()), buf)
    return buf.getvalue()


def pt2_bytes(model: nn.Module, preprocessing: dict[str, Any]) -> bytes:
    """A ``torch.export`` program with a dynamic batch dimension."""
    buf = io.BytesIO()
    with _quiet_exporter(), torch.no_grad():
        program = torch.export.export(model, (_example(preprocessing),),
                                      dynamic_shapes=(_batch_dim(),))
        torch.export.save(program, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- int8

_INT8_NOTE = ("onnxruntime static QDQ, per-channel int8 weights, uint8 activations, "
              "MinMax calibration")


class ImageCalibrationReader:
    """Feeds preprocessed image batches to onnxruntime's calibrator.

    onnxruntime's ``CalibrationDataReader`` accepts any class with ``get_next`` (its
    ``__subclasshook__``), so this class needs no onnxruntime import to be defined.
    """

    def __init__(self, images: Iterable[torch.Tensor], preprocessing: dict[str, Any],
                 input_name: str = INPUT_NAME, batch_size: int = 8) -> None:
        self._batches = batches(images, batch_size)
        self.preprocessing = preprocessing
        self.input_name = input_name
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += batch.shape[0]
        return {self.input_name: preprocess(batch, self.preprocessing)}


#: Ops through which a tensor's scale passes unchanged: ``op(k·x) = k·op(x)`` (``Mul``
#: only when the other factor does not depend on ``x`` too; checked where used).
_LINEAR_OPS = frozenset({"GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Mul"})


def int8_friendly(proto: Any) -> Any:
    """Rewrite MobileNets' float-only ops into ops onnxruntime runs in int8, fewest first.

    onnxruntime has no int8 kernel for ``HardSwish``, ``HardSigmoid`` or ``ReduceMean``:
    quantized as they are, each is dequantized, computed in float and requantized. The
    same function is computed here by ``Add``/``Mul``/``Clip`` (``QLinearAdd``/
    ``QLinearMul``; a ``Clip`` is absorbed into its input's quantization range) and
    ``GlobalAveragePool``. Each element-wise op is a pass over the feature map, so
    constant factors are folded into convolution weights where the maths allows:

    * ``HardSigmoid(z) = Clip(αz + β, 0, 1)``: when ``z`` comes only from a convolution
      (squeeze-excite's second layer), α and β go into its weight and bias, and only the
      ``Clip`` remains: no pass at all.
    * ``HardSwish(x) = x · Clip(x + 3, 0, 6) / 6``: the ``/6`` goes into the weights of
      the convolutions or linear layers that read the result, when every path to them
      is linear (pooling, reshapes, squeeze-excite's gating ``Mul``): two passes.
      Otherwise (a residual ``Add`` reads it) ``x · Clip(x/6 + ½, 0, 1)``: three.

    ``ReduceMean`` over H, W with ``keepdims`` becomes ``GlobalAveragePool``. The
    rewritten graph computes the same function up to float rounding (tested).
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = copy.deepcopy(proto)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    arrays: dict[str, np.ndarray] = {}  # initializers changed by folding
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
        for name in node.output:
            producer[name] = i
    graph_outputs = {o.name for o in graph.output}

    def const(name: str, value: float) -> str:
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.array(value, dtype=np.float32), name)
        return name

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name]).astype(np.float32)
        return arrays[name]

    def own_weight(node: Any, k: int) -> bool:
        """``node``'s input ``k`` is an initializer that no other node reads."""
        return (len(node.input) > k and node.input[k] in inits
                and len(consumers[node.input[k]]) == 1)

    def linear_readers(tensor: str) -> list[Any] | None:
        """The Conv/Gemm nodes that read ``tensor`` through linear ops, or None if any
        path ends anywhere else (a graph output, a residual ``Add``, an activation)."""
        readers, seen, stack = [], set(), [tensor]
        while stack:
            t = stack.pop()
            if t in graph_outputs:
                return None
            for i in consumers.get(t, []):
                node = graph.node[i]
                if i in seen or list(node.input).count(t) != 1:
                    return None  # reached twice: a product of two scaled factors
                seen.add(i)
                if node.op_type in ("Conv", "Gemm") and node.input[0] == t and own_weight(node, 1):
                    readers.append(node)
                elif node.op_type in _LINEAR_OPS and (node.op_type == "Mul" or node.input[0] == t):
                    stack.append(node.output[0])
                else:
                    return None
        return readers

    def fold_into_producer(z: str, alpha: float, beta: float) -> bool:
        """Make the convolution producing ``z`` compute ``αz + β`` instead."""
        if z not in producer or z in graph_outputs or len(consumers[z]) != 1:
            return False
        conv = graph.node[producer[z]]
        if conv.op_type != "Conv" or not own_weight(conv, 1):
            return False
        if len(conv.input) > 2 and not own_weight(conv, 2):
            return False
        weight = array(conv.input[1])
        if len(conv.input) > 2:
            bias = array(conv.input[2])
        else:
            bias = np.zeros(weight.shape[0], dtype=np.float32)
            conv.input.append(f"{conv.input[1]}_int8_bias")
            inits[conv.input[2]] = numpy_helper.from_array(bias, conv.input[2])
        arrays[conv.input[1]] = weight * np.float32(alpha)
        arrays[conv.input[2]] = bias * np.float32(alpha) + np.float32(beta)
        return True

    def hard_sigmoid(x: str, y: str, alpha: float, beta: float, prefix: str) -> list[Any]:
        ax, axb = prefix + "_ax", prefix + "_axb"
        return [helper.make_node("Mul", [x, const(f"int8_alpha_{alpha:.6g}", alpha)], [ax]),
                helper.make_node("Add", [ax, const(f"int8_beta_{beta:.6g}", beta)], [axb]),
                helper.make_node("Clip", [axb, const("int8_zero", 0.0), const("int8_one", 1.0)],
                                 [y])]

    nodes: list[Any] = []
    for i, node in enumerate(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        prefix = f"int8_{i}_{node.op_type}"
        if node.op_type == "HardSwish":
            x, y = node.input[0], node.output[0]
            readers = linear_readers(y)
            if readers:
                for reader in readers:
                    arrays[reader.input[1]] = array(reader.input[1]) / np.float32(6)
                nodes += [helper.make_node("Add", [x, const("int8_three", 3.0)], [prefix + "_x3"]),
                          helper.make_node("Clip", [prefix + "_x3", const("int8_zero", 0.0),
                                                    const("int8_six", 6.0)], [prefix + "_gate"]),
                          helper.make_node("Mul", [x, prefix + "_gate"], [y])]
            else:
                nodes += hard_sigmoid(x, prefix + "_gate", 1 / 6, 0.5, prefix)
                nodes.append(helper.make_node("Mul", [x, prefix + "_gate"], [y]))
        elif node.op_type == "HardSigmoid":
            alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
            if fold_into_producer(node.input[0], alpha, beta):
                nodes.append(helper.make_node("Clip", [node.input[0], const("int8_zero", 0.0),
                                                       const("int8_one", 1.0)], list(node.output)))
            else:
                nodes += hard_sigmoid(node.input[0], node.output[0], alpha, beta, prefix)
        elif node.op_type == "ReduceMean" and _is_spatial_mean(node, attrs, inits):
            nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output)))
        else:
            nodes.append(node)
    for name, value in arrays.items():
        inits[name] = numpy_helper.from_array(value, name)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    del graph.initializer[:]  # the replaced ReduceMeans' axes go
    graph.initializer.extend(t for name, t in inits.items() if name in used)
    onnx.checker.check_model(proto)
    return proto


def _is_spatial_mean(node: Any, attrs: dict[str, Any], inits: dict[str, Any]) -> bool:
    from onnx import numpy_helper

    # MobileNets average rank-4 maps only, so axes modulo 4 are the non-negative axes.
    if attrs.get("keepdims", 1) != 1 or len(node.input) < 2 or node.input[1] not in inits:
        return False
    axes = sorted(int(a) % 4 for a in numpy_helper.to_array(inits[node.input[1]]).ravel())
    return axes == [2, 3]


def quantize_onnx(fp32: str | os.PathLike, output: str | os.PathLike,
                  images: Iterable[torch.Tensor], preprocessing: dict[str, Any],
                  batch_size: int = 8, reduce_range: bool | None = None) -> Path:
    """Post-training static int8 quantization of the ONNX file ``fp32`` into ``output``.

    QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops, which onnxruntime
    fuses into int8 kernels, and which other runtimes can read), per-channel symmetric
    int8 weights, per-tensor uint8 activations whose ranges are the min/max observed on
    ``images`` (uint8 ``(C, H, W)`` tensors, a few hundred are plenty). The metadata of
    ``fp32`` is carried over, with the int8 settings added.

    ``reduce_range`` rounds weights to [−64, 64] instead of [−127, 127], which x86 CPUs
    without VNNI need to avoid int16 saturation in onnxruntime's kernels; by default it
    follows this machine (:func:`mobilenets.ops.cpu.reduce_range_default`).
    """
    from ..ops.cpu import reduce_range_default
    from ..training.qat import weight_qmax

    onnx, _ = require_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = onnx.load(str(fp32))
    props = {p.key: p.value for p in source.metadata_props}
    reader = ImageCalibrationReader(images, preprocessing, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="mobilenets-int8-") as tmp:
        rewritten, prepared, quantized = (Path(tmp) / n for n in ("a.onnx", "b.onnx", "c.onnx"))
        if reduce_range is None:
            reduce_range = reduce_range_default()
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
        proto = onnx.load(str(quantized))
    meta = json.loads(props.get(META_KEY, "{}"))
    meta["int8"] = {"method": _INT8_NOTE, "calibration_images": reader.count,
                    "reduce_range": reduce_range, "weight_range": weight_qmax(reduce_range)}
    props[META_KEY] = json.dumps(meta, sort_keys=True)
    onnx.helper.set_model_props(proto, props)
    output = Path(output)
    atomic_write_bytes(output, proto.SerializeToString())
    return output


# ----------------------------------------------------------------------------- parity

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


# ----------------------------------------------------------------------------- export

@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how well it reproduces the model."""

    path: Path
    format: str
    int8: bool
    parity: Parity
    files: list[Path]
    #: int8 only: whether the weights were rounded to 7 bits (:func:`quantize_onnx`).
    reduce_range: bool | None = None

    def summary(self) -> str:
        kind = self.format
        if self.int8:
            kind = "int8 ONNX" + (" (7-bit weights, for x86 CPUs without VNNI)" if self.reduce_range else "")
        return f"exported {kind} -> {self.path}\nparity: {self.parity.summary()}"


def _check_request(fmt: str, int8: bool, reduce_range: bool | None = None) -> None:
    check_choice("format", fmt, FORMATS)
    if int8 and fmt != "onnx":
        raise MobilenetsError(f"int8 export is ONNX only (onnxruntime quantization), "
                              f"not {fmt}; use --format onnx")
    if reduce_range is not None and not int8:
        raise MobilenetsError("--reduce-range chooses the int8 weight range; it needs --int8")


def default_output(checkpoint: str | os.PathLike, fmt: str, int8: bool = False) -> Path:
    """``run/best.safetensors`` (or ``run``) → ``run/best.onnx`` (``.int8.onnx``, ``.pt``, ``.pt2``)."""
    base = checkpoint_file(checkpoint).with_suffix("")
    return base.with_name(base.name + (".int8" if int8 else "") + EXTENSIONS[fmt])


def _check_output(output: Path, fmt: str) -> None:
    """Before anything is written: a file name whose suffix fits the format, so that a
    slip (``-o best.safetensors``, ``-o photo.png``) cannot replace another file."""
    if output.is_dir():
        raise MobilenetsError(f"output {output} is a directory; give a file name")
    if output.suffix != EXTENSIONS[fmt]:
        raise MobilenetsError(f"output {output}: a {fmt} export is a {EXTENSIONS[fmt]} file; "
                              f"give a name ending in {EXTENSIONS[fmt]}")


def _check_tolerance(tolerance: float | None) -> None:
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise MobilenetsError(f"tolerance must be a positive number, got {tolerance}")


def export_model(model: nn.Module, fmt: str, output: str | os.PathLike, *,
                 preprocessing: dict[str, Any], classes: Sequence[str] | None = None,
                 int8: bool = False, calibration_images: torch.Tensor | None = None,
                 tolerance: float | None = None, extra_meta: dict[str, Any] | None = None,
                 reduce_range: bool | None = None) -> ExportResult:
    """Export ``model`` as ``fmt`` to ``output``, reload it and check it against ``model``.

    ``calibration_images`` (uint8 ``(N, C, H, W)``) are required for ``int8`` and, when
    given, also serve as the parity inputs (real images exercise the int8 ranges that
    matter); otherwise parity uses standard-normal inputs, which is what normalised images
    look like. Raises :class:`MobilenetsError` when the artifact differs from the model by
    more than ``tolerance`` (default :data:`FLOAT_TOLERANCE`, :data:`INT8_TOLERANCE`).
    ``reduce_range``: 7-bit int8 weights, see :func:`quantize_onnx`.
    """
    _check_request(fmt, int8, reduce_range)
    if int8 and (calibration_images is None or len(calibration_images) == 0):
        raise MobilenetsError("int8 needs calibration images (--calibration-data PATH)")
    output = Path(output)
    _check_output(output, fmt)
    _check_tolerance(tolerance)
    reference = copy.deepcopy(model).eval()
    ready = prepare_for_inference(model)
    meta = artifact_metadata(model, preprocessing, classes, fmt, **(extra_meta or {}))
    # Written under a staging name and moved into place only once the parity check passes:
    # a failed export never replaces the artifact that was there.
    staged = output.with_name(f".{output.stem}.staging{output.suffix}")
    files = [output]
    if fmt == "onnx":
        data = onnx_bytes(ready, preprocessing, meta)
        if int8:
            if reduce_range is None:
                from ..ops.cpu import reduce_range_default
                reduce_range = reduce_range_default()
            with tempfile.TemporaryDirectory(prefix="mobilenets-export-") as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                fp32.write_bytes(data)
                quantize_onnx(fp32, staged, calibration_images, preprocessing,
                              reduce_range=reduce_range)
        else:
            atomic_write_bytes(staged, data)
    else:
        data = torchscript_bytes(ready, preprocessing) if fmt == "torchscript" \
            else pt2_bytes(ready, preprocessing)
        atomic_write_bytes(staged, data)
        _write_sidecar(staged, meta, data)
        files.append(sidecar_path(output))

    inputs_are_images = calibration_images is not None and len(calibration_images) >= 2
    if inputs_are_images:
        inputs = preprocess(calibration_images[:8], preprocessing)
    else:
        c, s = preprocessing["channels"], preprocessing["input_size"]
        inputs = torch.randn(4, c, s, s, generator=torch.Generator().manual_seed(1)).numpy()
    if tolerance is None:
        tolerance = INT8_TOLERANCE if int8 else FLOAT_TOLERANCE
    try:
        parity = check_parity(load_artifact(staged, trust_code=True), reference, inputs, tolerance)
    except BaseException:
        _discard(staged)
        raise
    on_noise = "" if inputs_are_images else " (on random inputs: give two or more calibration images)"
    if not parity.ok:
        rejected = output.with_name(f"{output.stem}.rejected{output.suffix}")
        _move(staged, rejected)
        raise MobilenetsError(f"the {fmt} export does not reproduce the PyTorch model{on_noise}: "
                              f"{parity.summary()}; it is kept for inspection as {rejected}"
                              + (f", and {output} is unchanged" if output.exists() else ""))
    _move(staged, output)
    return ExportResult(output, fmt, int8, parity, files, reduce_range)


def _move(src: Path, dst: Path) -> None:
    """An artifact and its sidecar (if any) renamed together."""
    if sidecar_path(src).exists():
        os.replace(sidecar_path(src), sidecar_path(dst))
    os.replace(src, dst)


def _discard(path: Path) -> None:
    for p in (path, sidecar_path(path)):
        p.unlink(missing_ok=True)


def export_checkpoint(checkpoint: str | os.PathLike, fmt: str,
                      output: str | os.PathLike | None = None, *, int8: bool = False,
                      calibration_data: str | os.PathLike | None = None,
                      calibration_size: int = 256,
                      tolerance: float | None = None,
                      reduce_range: bool | None = None) -> ExportResult:
    """:func:`export_model` for a checkpoint file (or run directory), with its preprocessing
    and classes. An ``output`` that is a directory (or ends in ``/``) gets the default name."""
    _check_request(fmt, int8, reduce_range)
    _check_tolerance(tolerance)
    if Path(checkpoint).suffix in EXTENSIONS.values():
        raise MobilenetsError(f"{checkpoint} is already an export; export takes the .safetensors "
                              "checkpoint it came from")
    if output is not None and (Path(output).is_dir() or str(output).endswith(("/", os.sep))):
        output = Path(output) / default_output(checkpoint, fmt, int8).name
    if output is not None:
        _check_output(Path(output), fmt)
    model, meta = load_model(checkpoint)
    preprocessing = resolve_preprocessing(model, meta)
    if int8 and calibration_data is None:
        raise MobilenetsError("--int8 needs --calibration-data (a dataset name such as "
                              "fashion-mnist, or a directory of training images)")
    images = (load_calibration_images(calibration_data, calibration_size, preprocessing,
                                      holdout=meta.get("holdout"))
              if calibration_data is not None else None)
    return export_model(model, fmt, output or default_output(checkpoint, fmt, int8),
                        preprocessing=preprocessing, classes=meta.get("classes"), int8=int8,
                        calibration_images=images, tolerance=tolerance, reduce_range=reduce_range,
                        extra_meta={"holdout": meta["holdout"]} if "holdout" in meta else None)
