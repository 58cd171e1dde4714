"""Models from strangers never run code: what each file format can carry, and how we load it.

Whoever shares a model file writes every byte of it, sidecar included, so a hash beside the
file proves only that the two travelled together. The defence is in how each format is read:

- ``.safetensors`` checkpoints: a JSON header and raw tensors; nothing to execute.
- ``.pt2`` (``torch.export``): a zip whose tensors and sample inputs ``torch.load`` unpickles.
  Every member must be one that ``torch.export.save`` writes for a plain tensor program
  (:func:`check_pt2_members`), and the load runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` so
  that no ``torch.load`` on the path, torch's own fallbacks included, unpickles anything but
  tensors (:func:`weights_only_loads`).
- TorchScript ``.pt``: a program by PyTorch's own security policy; refused unless the caller
  says it trusts the file (``trust_code=True``, ``--trust-code``).
- ONNX: a protobuf graph; tensors stored outside it (external data) are read only from the
  model's own folder (:func:`check_onnx_external_data`); onnxruntime loads no custom-op
  library unless the program registers one, which we never do.
- OpenVINO IR (``.xml`` graph, ``.bin`` weights): OpenVINO's parser, with no extension
  library added, so an operation outside OpenVINO's opsets is an error.
- LiteRT ``.tflite``: a flatbuffer graph; one naming a custom or ``Flex`` operation is refused
  before the interpreter reads it (``runtimes.litert.check_operators``), which then runs with
  builtin kernels only (no custom-op registerer, no delegate library).
- ``.pth``/``.bin`` weights to convert: ``torch.load(weights_only=True)``.
- Keras ``.h5``: read with h5py as arrays; the model config (where a Lambda layer's code
  would live) is never read.
- Downloaded weights (``pretrained=``): checked against their published hash before use,
  then read by the loaders above (:mod:`mobilenets.io.download`).
- Images uploaded to ``mobilenets serve``: data, not code, but crafted to exhaust memory; the
  body is capped (``--max-body-mb``), any image over Pillow's ``MAX_IMAGE_PIXELS`` is refused
  from its header before decoding, and decoding is the one ``predict`` uses
  (:mod:`mobilenets.serve.model`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from ..errors import MobilenetsError
from ..logs import captured_logs


@dataclass(frozen=True)
class FormatPolicy:
    """One row of the loading policy (docs/security.md prints this table)."""

    format: str
    suffixes: tuple[str, ...]
    can_carry_code: bool
    how_loaded: str
    trust_code: str


POLICY: tuple[FormatPolicy, ...] = (
    FormatPolicy("checkpoint", (".safetensors",), False,
                 "safetensors: JSON header + raw tensors; metadata validated", "nothing"),
    FormatPolicy("pt2", (".pt2",), True,
                 "zip members allow-listed to what torch.export.save writes; every torch.load "
                 "forced to weights_only", "nothing: a pt2 that fails the checks is refused"),
    FormatPolicy("torchscript", (".pt",), True,
                 "refused: TorchScript is a program", "loads it with torch.jit.load"),
    FormatPolicy("onnx", (".onnx",), False,
                 "onnxruntime; external data only inside the model's folder; no custom-op "
                 "libraries", "nothing"),
    FormatPolicy("openvino", (".xml", ".bin"), False,
                 "OpenVINO's read_model: the XML graph and the .bin weights beside it (both "
                 "hashed in the sidecar); operations from OpenVINO's own opsets only, no "
                 "extension library is ever added", "nothing"),
    FormatPolicy("litert", (".tflite",), False,
                 "operation codes read from the flatbuffer first: a custom or Flex operation is "
                 "refused; then ai_edge_litert's Interpreter with builtin kernels and XNNPACK, no "
                 "custom-op registerer or delegate library", "nothing"),
    FormatPolicy("executorch", (".pte",), False,
                 "ExecuTorch's Program/Method loader: operators resolved only against the "
                 "kernels compiled into the executorch package, delegate blobs only by the "
                 "backends compiled in (XNNPACK); no kernel or backend library is ever loaded "
                 "for a file, so a foreign operator or delegate is an error", "nothing"),
    FormatPolicy("coreml", (".mlpackage",), False,
                 "never loaded: every command refuses a Core ML package (it runs only on Apple "
                 "devices); mobilenets only writes it", "nothing"),
    FormatPolicy("torch weights", (".pth", ".bin"), True,
                 "torch.load(weights_only=True): tensors and plain containers only", "nothing"),
    FormatPolicy("keras weights", (".h5",), True,
                 "h5py reads weight arrays; the model config (Lambda code) is never read",
                 "nothing"),
    FormatPolicy("downloaded weights", (".pth", ".bin", ".safetensors", ".h5"), True,
                 "hash checked before use (registry SHA-256 or MD5, a URL's #sha256=, or "
                 "torch.hub's name-<8 hex> prefix), then the loaders of the rows above",
                 "nothing"),
    FormatPolicy("images uploaded to serve", (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif"),
                 False, "body capped by --max-body-mb (413); over Pillow's MAX_IMAGE_PIXELS refused "
                 "from the header, before decoding (413); decoded as predict decodes files (400 if "
                 "unreadable)", "nothing"),
)

TRUST_CODE_HINT = ("TorchScript files are programs (PyTorch's security policy), so mobilenets "
                   "runs them only when told the file is trusted: pass --trust-code "
                   "(Python: trust_code=True) if you made it or trust who did, or load the .pt2 "
                   "or .onnx export instead")


def refuse_torchscript(path: Path) -> None:
    """The error for a TorchScript file loaded without ``trust_code``."""
    raise MobilenetsError(f"{path} is TorchScript and was not loaded: {TRUST_CODE_HINT}")


# ----------------------------------------------------------------------------- .pt2

#: The members ``torch.export.save`` writes for a program of plain tensors, below the one
#: top-level folder it names after the file. Anything else (a pickled constant, a custom
#: object, an AOTInductor library, a legacy-format member) is refused before torch reads it.
_PT2_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt)")


def check_pt2_members(path: Path) -> None:
    """Refuse a ``.pt2`` holding anything but what ``torch.export.save`` writes."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise MobilenetsError(f"{path} is not a pt2 file (not a readable zip: {e})") from e
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1:
        raise MobilenetsError(f"{path} is not a pt2 file written by torch.export.save "
                              f"(members under {len(roots)} top-level folders)")
    root = roots.pop()
    for name in names:
        rest = name[len(root) + 1:]
        if not name.startswith(root + "/") or not _PT2_MEMBERS.fullmatch(rest):
            raise MobilenetsError(
                f"{path} holds {name!r}, which torch.export.save does not write for a model "
                "of plain tensors; refusing to load it (it could carry code)")
    with zipfile.ZipFile(path) as z:
        if f"{root}/models/model.json" not in names:
            raise MobilenetsError(f"{path} is not a pt2 file written by torch.export.save (no program)")
        info = z.getinfo(f"{root}/models/model.json")
        if info.file_size > _MAX_PROGRAM_BYTES:
            raise MobilenetsError(f"{path}: its program is {info.file_size:,} bytes; refusing it")
        check_pt2_program(path, z.read(info))


#: The operators a MobileNet's exported graph calls (and a few more a CNN export may use).
#: A node calling anything else (``torch.os.system`` resolves by attribute lookup) is refused.
PT2_OPERATORS: frozenset[str] = frozenset(
    f"torch.ops.aten.{op}" for op in (
        "conv2d.default", "convolution.default", "linear.default", "addmm.default", "t.default",
        "add.Tensor", "add_.Tensor", "mul.Tensor", "mul_.Tensor", "mean.dim", "pad.default",
        "constant_pad_nd.default", "flatten.using_ints", "view.default", "reshape.default",
        "relu.default", "relu_.default", "hardtanh.default", "hardtanh_.default",
        "hardswish.default", "hardswish_.default", "hardsigmoid.default", "hardsigmoid_.default",
        "sigmoid.default", "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default",
        "avg_pool2d.default", "dropout.default", "clone.default", "contiguous.default",
        "_native_batch_norm_legit_no_training.default", "batch_norm.default",
    )) | {"_operator.getitem"}

#: A symbolic size as ``torch.export.save`` writes it: a bare symbol, ``Symbol('s0', ...)``
#: with sympy's assumption flags, or an integer. torch parses these with ``sympy.sympify``,
#: which evaluates Python: any other text is refused before torch reads it.
_SYMBOL = re.compile(r"-?\d+|[a-z]+\d*|Symbol\('[a-z]+\d*'(, [a-z]+=(True|False))*\)")

#: The largest ``models/model.json`` read (a MobileNet's is well under 1 MB).
_MAX_PROGRAM_BYTES = 64 << 20


def _program_strings(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a parsed ``model.json``, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _program_strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _program_strings(v, key)


def check_pt2_program(path: Path, text: bytes) -> None:
    """Refuse a serialized program that would make torch evaluate text or call a function
    that is not a MobileNet operator: guard code (compiled by torch into a Python function),
    symbolic sizes other than plain symbols (``sympy.sympify`` evaluates them), node targets
    outside :data:`PT2_OPERATORS`."""
    try:
        program = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MobilenetsError(f"{path}: its program is not readable JSON ({e})") from e
    for key, value in _program_strings(program):
        if key == "guards_code" and value:
            bad = f"guard code {str(value)[:80]!r}"
        elif key == "expr_str" and not (isinstance(value, str) and _SYMBOL.fullmatch(value)):
            bad = f"the symbolic size {str(value)[:80]!r}"
        elif key == "target" and value not in PT2_OPERATORS:
            bad = f"a call to {str(value)[:80]!r}"
        else:
            continue
        raise MobilenetsError(f"{path} holds {bad}, which a mobilenets export never writes; "
                              "refusing to load it (torch would evaluate it as code)")


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in the block unpickles tensors only, even where the caller (torch's
    own ``.pt2`` fallbacks) passes ``weights_only=False``."""
    with mock.patch.dict(os.environ, {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}):
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # restored on exit
        yield


# ----------------------------------------------------------------------------- ONNX

def _onnx_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of an ONNX graph, its subgraphs (If/Loop bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for g in attr.graphs:
                yield from _onnx_tensors(g)


def check_onnx_external_data(path: Path) -> None:
    """Refuse an ONNX file whose external tensor data lies outside its own folder (an
    absolute ``location``, ``..``, or a link that leads out), before onnxruntime reads it."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise many types for bad bytes
        raise MobilenetsError(f"{path} is not a loadable ONNX model: {e}") from e
    folder = path.resolve().parent
    for tensor in _onnx_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise MobilenetsError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                "model's folder; refusing to read it (external data must sit beside the model)")


# ----------------------------------------------------------------------------- log noise

#: Loggers of the libraries that report on their own internals while loading a file.
_NOISY_LOGGERS = ("torch", "torch.export", "torch._export", "torch.fx", "onnxruntime")


def quiet_loading(path: Path) -> contextlib.AbstractContextManager[None]:
    """Capture what torch's loggers say while ``path`` loads (a dozen ``W...`` lines and a
    traceback for a refused ``.pt2``), so that a user sees our one error line; ``--verbose``
    shows it (:func:`mobilenets.logs.captured_logs`)."""
    return captured_logs(_NOISY_LOGGERS, f"while loading {path}")
