"""The one artifact loader: any model file back as one callable with its preprocessing.

:func:`artifact_kind` decides once what a path is (a ``.safetensors`` checkpoint or a run
directory, float or int8 ONNX, TorchScript, ``.pt2``) and :func:`load` returns an
:class:`Artifact` with one interface for all of them: ``preprocessing``, ``classes``,
``format``, ``artifact(batch) -> logits`` and ``predict(images, top_k)``. Each format is read
as :mod:`mobilenets.io.safety` lays down. ONNX files carry their metadata inside
(``metadata_props["mobilenets"]``); TorchScript and ``.pt2`` files keep it in a sidecar
``<file>.json`` written by :func:`mobilenets.deploy.export.export_model`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.preprocessing import Preprocessing
from ..errors import MobilenetsError
from .checkpoint import check_meta_fields, checkpoint_file, load_model
from .safety import (check_onnx_external_data, check_pt2_members, quiet_loading,
                     refuse_torchscript, weights_only_loads)

#: File suffix of each export format (the runtimes' in :mod:`mobilenets.deploy.runtimes`).
EXTENSIONS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2",
                              "openvino": ".xml", "executorch": ".pte", "litert": ".tflite",
                              "coreml": ".mlpackage"}
#: What :func:`artifact_kind` answers.
KINDS: tuple[str, ...] = ("checkpoint", "onnx", "onnx-int8", *EXTENSIONS.keys() - {"onnx", "coreml"})
_SUFFIX_KINDS = {".safetensors": "checkpoint", **{v: k for k, v in EXTENSIONS.items()}}
#: The ONNX metadata property (and checkpoint metadata key) holding our metadata.
META_KEY = "mobilenets"


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.pt`` → ``model.pt.json``: where non-ONNX artifacts keep their metadata."""
    return Path(f"{path}.json")


def require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MobilenetsError(f"ONNX export needs the onnx extra ({e.name} is missing): "
                              "pip install 'mobilenets[onnx]'") from e
    return onnx, onnxruntime


@contextmanager
def torchscript_quietly() -> Iterator[None]:
    """TorchScript is deprecated upstream in favour of ``torch.export`` (our ``.pt2``);
    users who ask for it explicitly need no deprecation warning on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        yield


@dataclass
class Artifact:
    """A loaded model file: call it on float32 NCHW arrays (already preprocessed) for logits,
    or :meth:`predict` on images.

    ``format`` is its :func:`artifact_kind`; ``preprocessing`` says how to make those arrays
    from images and ``classes`` names the outputs; ``model`` is the network of a checkpoint
    (``None`` for exports).
    """

    path: Path
    format: str
    meta: dict[str, Any]
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    preprocessing: Preprocessing = field(default=None, repr=False)  # type: ignore[assignment]
    model: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            self.preprocessing = Preprocessing.from_meta(self.meta, self.path)

    @classmethod
    def from_model(cls, model: nn.Module, meta: dict[str, Any], path: str | os.PathLike,
                   fmt: str = "checkpoint") -> Artifact:
        """A PyTorch model (a loaded checkpoint, pretrained weights) behind the same interface."""
        from ..deploy.preprocess import input_channels

        model.eval()
        pre = Preprocessing.from_meta(meta, path, channels=input_channels(model))

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return cls(Path(path), fmt, meta, _guarded(Path(path), run), pre, model)

    @property
    def classes(self) -> list[str] | None:
        return list(self.preprocessing.classes) if self.preprocessing.classes is not None else None

    @property
    def int8(self) -> bool:
        return bool(self.meta.get("int8"))

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, dtype=np.float32))

    def predict(self, images: Any, top_k: int = 5, batch_size: int = 64) -> list[Any]:
        """Top-``top_k`` classes with probabilities for each image (file paths, PIL images, or a
        uint8/float ``(N, C, H, W)`` batch), preprocessed as :attr:`preprocessing` says, run
        ``batch_size`` at a time (:func:`mobilenets.deploy.predict.predict_images`)."""
        from ..deploy.predict import predict_images

        return predict_images(self, self.preprocessing, images, top_k, batch_size, meta=self.meta)

    def as_module(self) -> nn.Module:
        """The artifact as a module from preprocessed batches to logits, so that the engine
        that measures checkpoints (:func:`mobilenets.training.evaluate`) measures exports too;
        a checkpoint's own network."""
        return self.model if self.model is not None else _ArtifactModule(self)


class _ArtifactModule(nn.Module):
    def __init__(self, artifact: Artifact) -> None:
        super().__init__()
        self.artifact = artifact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.artifact(x.detach().cpu().numpy()))


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (all graph optimizations, ``threads`` intra-op threads)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        raise MobilenetsError(f"{path} is not a loadable ONNX model: {e}") from e


def _existing_file(path: Path, what: str) -> None:
    """``path`` is a regular file: a FIFO would block the first read forever, a device
    would stream without end."""
    if not path.exists():
        raise MobilenetsError(f"{what} not found: {path}")
    if not path.is_file():
        raise MobilenetsError(f"{path} is not a regular file (a pipe or a device?); give a model file")


def artifact_kind(path: str | os.PathLike) -> str:
    """What ``path`` is, decided once for every command: one of :data:`KINDS`. A run
    directory is its checkpoint; int8 ONNX files are told from float ones by their metadata."""
    path = Path(path)
    if path.suffix == EXTENSIONS["coreml"]:
        raise MobilenetsError(f"{path} is a Core ML package: it runs only on Apple devices (macOS, "
                              "iOS), in an app or with coremltools on a Mac; mobilenets writes it "
                              "(export --format coreml) but does not run it")
    if path.is_dir():
        checkpoint_file(path)  # refuses a directory without a checkpoint
        return "checkpoint"
    _existing_file(path, "checkpoint or model file")
    kind = _SUFFIX_KINDS.get(path.suffix)
    if kind is None:
        raise MobilenetsError(f"{path} is not a checkpoint or an exported model (.safetensors, "
                              f"{', '.join(sorted(set(EXTENSIONS.values())))})")
    if kind == "onnx" and _onnx_is_int8(path):
        return "onnx-int8"
    return kind


#: What ``--backend`` of ``predict``, ``eval`` and ``serve`` can name ("auto": the file's own).
RUNNERS: tuple[str, ...] = ("auto", "torch", "onnxruntime", *(k for k in EXTENSIONS if k not in
                                                              ("onnx", "torchscript", "pt2", "coreml")))


def runner_of(kind: str) -> str:
    """The engine that runs a file of :func:`artifact_kind` ``kind``: PyTorch for checkpoints,
    TorchScript and ``.pt2``, onnxruntime for ONNX, else the runtime of that name."""
    if kind in ("checkpoint", "torchscript", "pt2"):
        return "torch"
    return "onnxruntime" if kind in ("onnx", "onnx-int8") else kind


def check_runner(path: str | os.PathLike, kind: str, backend: str) -> None:
    """``--backend`` against the file it should run: one runs only its own files."""
    own = runner_of(kind)
    if backend not in ("auto", own):
        raise MobilenetsError(f"--backend {backend} cannot run {path}, a {kind} file that runs on "
                              f"{own}; export the checkpoint with `mobilenets export --format "
                              f"{'onnx' if backend == 'onnxruntime' else backend}` to run it on "
                              f"{backend} (torch runs .safetensors, .pt and .pt2 files)")


def _onnx_is_int8(path: Path) -> bool:
    """Whether an ONNX file's mobilenets metadata records int8 quantization (a file that does
    not parse is left to the loader, which says why)."""
    onnx, _ = require_onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        meta = json.loads(props.get(META_KEY, "{}"))
    except Exception:  # noqa: BLE001 - protobuf, onnx and json raise many types for bad bytes
        return False
    return isinstance(meta, dict) and bool(meta.get("int8"))


def require_checkpoint(path: str | os.PathLike, command: str, hint: str = "") -> Path:
    """The checkpoint file ``path`` names, for a command that needs the trainable network
    (``export``, ``bench``, ``train --init``); an export gets one error naming the way."""
    # A missing file named as an export gets the same advice as an existing one.
    kind = artifact_kind(path) if Path(path).exists() else _SUFFIX_KINDS.get(Path(path).suffix)
    if kind is None:
        raise MobilenetsError(f"checkpoint not found: {path}")
    if kind != "checkpoint":
        raise MobilenetsError(f"{path} is an exported model; {command} takes the .safetensors "
                              f"checkpoint it was exported from{hint}")
    return checkpoint_file(path)


def load(path: str | os.PathLike, *, trust_code: bool = False, threads: int | None = None) -> Artifact:
    """Any model file (checkpoint, run directory, ONNX, int8 ONNX, TorchScript, ``.pt2``) as
    an :class:`Artifact`. Checkpoints load with :func:`~mobilenets.io.checkpoint.load_model`
    (in eval mode); exports as :func:`load_artifact` says. ``threads``: onnxruntime's
    intra-op threads, or PyTorch's (process-wide) for the others."""
    kind = artifact_kind(path)
    if kind != "checkpoint":
        return _load_export(Path(path), kind, threads, trust_code)
    file = checkpoint_file(path)
    model, meta = load_model(file)
    if threads:
        torch.set_num_threads(threads)
    return Artifact.from_model(model, meta, file)


def load_artifact(path: str | os.PathLike, threads: int | None = None, *,
                  trust_code: bool = False) -> Artifact:
    """Load an exported ``.onnx``, TorchScript or ``.pt2`` file with its preprocessing.

    ONNX files run in onnxruntime (float or int8) and carry their metadata inside; other
    formats need the ``<file>.json`` sidecar written by :func:`export_model`. ``threads``
    sets onnxruntime's intra-op threads, or PyTorch's (process-wide) for the other formats.
    Each format is read so that the file cannot run code (:mod:`mobilenets.io.safety`);
    TorchScript is a program and loads only with ``trust_code=True``. :func:`load` also
    takes checkpoints.
    """
    kind = artifact_kind(path)
    if kind == "checkpoint":
        raise MobilenetsError(f"{path} is a checkpoint, not an exported model; load it with "
                              "mobilenets.io.artifact.load or mobilenets.load_model")
    return _load_export(Path(path), kind, threads, trust_code)


def _load_export(path: Path, kind: str, threads: int | None, trust_code: bool) -> Artifact:
    with quiet_loading(path):
        if kind in ("onnx", "onnx-int8"):
            return _load_onnx(path, kind, threads)
        if kind in ("torchscript", "pt2"):
            if kind == "torchscript" and not trust_code:
                refuse_torchscript(path)
            return _load_torch(path, kind, threads)
        return _load_runtime(path, kind, threads)


def _load_runtime(path: Path, kind: str, threads: int | None) -> Artifact:
    """An OpenVINO, ExecuTorch or LiteRT artifact, in its own runtime
    (:mod:`mobilenets.deploy.runtimes`), with its sidecar's metadata."""
    from ..deploy.runtimes import require

    meta = _read_sidecar(path, kind)
    runtime = require(kind)
    try:
        run = runtime.load(path, threads)
    except MobilenetsError:  # the runtime's own refusal (a custom operation), already worded
        raise
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types for bad files
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise MobilenetsError(f"{path} is not a loadable {kind} file: {type(e).__name__}: {first}") from e
    return Artifact(path, kind, meta, _guarded(path, run))


def _load_onnx(path: Path, kind: str, threads: int | None) -> Artifact:
    check_onnx_external_data(path)
    session = onnx_session(path, threads)
    meta_json = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if meta_json is None:
        raise MobilenetsError(f"{path} was not exported by mobilenets (no preprocessing "
                              "metadata); export it with `mobilenets export`")
    name = session.get_inputs()[0].name
    return Artifact(path, kind, _artifact_meta(meta_json, path),
                    _guarded(path, lambda x: session.run(None, {name: x})[0]))


def _read_sidecar(path: Path, expected: str) -> dict[str, Any]:
    """The sidecar's metadata, checked to describe this very file and a known format. The
    hash proves only that the two files travelled together, not who wrote them."""
    side = sidecar_path(path)
    if not side.is_file():
        raise MobilenetsError(f"{side} not found: TorchScript and .pt2 artifacts keep their "
                              "preprocessing there; export with `mobilenets export`")
    try:
        text = side.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise MobilenetsError(f"{side} is not readable: {e}") from e
    meta = _artifact_meta(text, side)
    # Companion files (OpenVINO's weights) are keyed by suffix: ``best.xml`` -> ``best.bin``.
    digests = {path: meta.get("artifact_sha256")}
    for suffix, digest in (meta.get("companions_sha256") or {}).items():
        if not re.fullmatch(r"\.[A-Za-z0-9]{1,8}", str(suffix)):
            raise MobilenetsError(f"{side}: companion file suffix {suffix!r} is not a plain suffix")
        digests[path.with_suffix(suffix)] = digest
    for file, digest in digests.items():
        if not isinstance(digest, str):
            continue
        if not file.is_file():
            raise MobilenetsError(f"{file} not found: {path.name} needs it beside it")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise MobilenetsError(f"{side} describes another model file than {file} (SHA-256 differs): the "
                                  "model was replaced without its sidecar; export it again")
    if meta.get("format") != expected:
        raise MobilenetsError(f"{side}: format {meta.get('format')!r} does not match {path.name} "
                              f"(a {expected} file)")
    return meta


def _load_torch(path: Path, fmt: str, threads: int | None) -> Artifact:
    """A TorchScript (trusted by the caller) or ``.pt2`` artifact, on PyTorch."""
    meta = _read_sidecar(path, fmt)
    if fmt == "pt2":
        check_pt2_members(path)
    try:
        if fmt == "torchscript":
            with torchscript_quietly():
                module = torch.jit.load(str(path), map_location="cpu")
        else:
            with weights_only_loads():
                module = torch.export.load(str(path)).module()
    except pickle.UnpicklingError as e:  # weights_only refused a pickle: say so, not torch's advice
        raise MobilenetsError(f"{path} holds a member that is not plain tensors (damaged, or a "
                              "pickle that could run code); refusing to load it") from e
    except Exception as e:  # noqa: BLE001 - truncated or foreign files fail in many ways (BadZipFile, ...)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise MobilenetsError(f"{path} is not a loadable {fmt} file: {type(e).__name__}: {first}") from e
    if threads:
        torch.set_num_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return Artifact(path, fmt, meta, _guarded(path, run))


def _artifact_meta(text: str, source: Path) -> dict[str, Any]:
    """An artifact's metadata (ONNX property or sidecar JSON), checked like a checkpoint's."""
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MobilenetsError(f"{source}: metadata is not readable JSON ({e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("preprocessing"), dict):
        raise MobilenetsError(f"{source}: metadata lacks its preprocessing; export with `mobilenets export`")
    check_meta_fields(meta, source, model_channels=False)
    return meta


def _guarded(path: Path, run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``run``, with the runtime's errors as one clear error: running out of memory, or
    (most often) metadata that does not fit the graph."""
    def call(x: np.ndarray) -> np.ndarray:
        try:
            return run(x)
        except (RuntimeError, ValueError, MemoryError, AssertionError) as e:  # torch.export's guards assert
            raise _run_failure(path, x, e) from e
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            if type(e).__module__.startswith(_RUNTIME_MODULES):
                raise _run_failure(path, x, e) from e
            raise
    return call


#: Packages whose exceptions, raised while running a batch, mean the batch did not fit the model.
_RUNTIME_MODULES = ("onnxruntime", "openvino", "executorch", "ai_edge_litert", "tflite_runtime")
_OUT_OF_MEMORY = ("out of memory", "can't allocate", "cannot allocate", "bad_alloc", "failed to allocate")


def _run_failure(path: Path, x: np.ndarray, e: BaseException) -> MobilenetsError:
    text = str(e).strip()
    first = text.splitlines()[0][:200] if text else type(e).__name__
    if isinstance(e, MemoryError) or any(s in text.lower() for s in _OUT_OF_MEMORY):
        return MobilenetsError(f"{path} ran out of memory on a batch of {x.shape[0]} ({first}); "
                               "use a smaller batch size")
    return MobilenetsError(f"{path} failed on inputs of shape {tuple(x.shape)}, as its metadata "
                           f"describes them ({first}); if the metadata was edited, re-export the model")

