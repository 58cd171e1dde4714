"""The one artifact loader: an exported model file back as a callable with its preprocessing.

ONNX files carry their metadata inside (``metadata_props["mobilenets"]``); TorchScript and
``.pt2`` files keep it in a sidecar ``<file>.json`` written by
:func:`mobilenets.deploy.export.export_model`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MobilenetsError
from .checkpoint import check_meta_fields
from .safety import (check_onnx_external_data, check_pt2_members, quiet_loading,
                     refuse_torchscript, weights_only_loads)

#: File suffix of each export format.
EXTENSIONS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
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
    """A loaded export: call it on float32 NCHW arrays (already preprocessed) for logits.

    ``preprocessing`` says how to make those arrays from images (``input_size``,
    ``channels``, ``mean``, ``std`` on [0, 1] pixels); ``classes`` names the outputs.
    """

    path: Path
    format: str
    meta: dict[str, Any]
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.meta.get("preprocessing") or {}

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    @property
    def int8(self) -> bool:
        return bool(self.meta.get("int8"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, dtype=np.float32))

    def as_module(self) -> nn.Module:
        """The artifact as a module from preprocessed batches to logits, so that the engine
        that measures checkpoints (:func:`mobilenets.training.evaluate`) measures exports too."""
        return _ArtifactModule(self)


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


def load_artifact(path: str | os.PathLike, threads: int | None = None, *,
                  trust_code: bool = False) -> Artifact:
    """Load an exported ``.onnx``, TorchScript or ``.pt2`` file with its preprocessing.

    ONNX files run in onnxruntime (float or int8) and carry their metadata inside; other
    formats need the ``<file>.json`` sidecar written by :func:`export_model`. ``threads``
    sets onnxruntime's intra-op threads, or PyTorch's (process-wide) for the other formats.
    Each format is read so that the file cannot run code (:mod:`mobilenets.io.safety`);
    TorchScript is a program and loads only with ``trust_code=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise MobilenetsError(f"artifact not found: {path}" if not path.exists()
                              else f"{path} is not a regular file")
    if path.suffix not in EXTENSIONS.values():
        raise MobilenetsError(f"{path} is not a checkpoint or an exported model (.safetensors, "
                              f"{', '.join(sorted(set(EXTENSIONS.values())))})")
    with quiet_loading(path):
        if path.suffix == ".onnx":
            return _load_onnx(path, threads)
        if path.suffix == ".pt" and not trust_code:
            refuse_torchscript(path)
        return _load_torch(path, threads)


def _load_onnx(path: Path, threads: int | None) -> Artifact:
    check_onnx_external_data(path)
    session = onnx_session(path, threads)
    meta_json = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if meta_json is None:
        raise MobilenetsError(f"{path} was not exported by mobilenets (no preprocessing "
                              "metadata); export it with `mobilenets export`")
    name = session.get_inputs()[0].name
    return Artifact(path, "onnx", _artifact_meta(meta_json, path),
                    _guarded(path, lambda x: session.run(None, {name: x})[0]))


def _read_sidecar(path: Path) -> dict[str, Any]:
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
    digest = meta.get("artifact_sha256")
    if isinstance(digest, str) and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise MobilenetsError(f"{side} describes another model file than {path} (SHA-256 differs): the "
                              "model was replaced without its sidecar; export it again")
    expected = "torchscript" if path.suffix == ".pt" else "pt2"
    if meta.get("format") != expected:
        raise MobilenetsError(f"{side}: format {meta.get('format')!r} does not match {path.name} "
                              f"(a {expected} file)")
    return meta


def _load_torch(path: Path, threads: int | None) -> Artifact:
    """A TorchScript (trusted by the caller) or ``.pt2`` artifact, on PyTorch."""
    meta = _read_sidecar(path)
    fmt = meta["format"]
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
    check_meta_fields(meta, source)
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
            if type(e).__module__.startswith("onnxruntime"):
                raise _run_failure(path, x, e) from e
            raise
    return call


_OUT_OF_MEMORY = ("out of memory", "can't allocate", "cannot allocate", "bad_alloc", "failed to allocate")


def _run_failure(path: Path, x: np.ndarray, e: BaseException) -> MobilenetsError:
    text = str(e).strip()
    first = text.splitlines()[0][:200] if text else type(e).__name__
    if isinstance(e, MemoryError) or any(s in text.lower() for s in _OUT_OF_MEMORY):
        return MobilenetsError(f"{path} ran out of memory on a batch of {x.shape[0]} ({first}); "
                               "use a smaller batch size")
    return MobilenetsError(f"{path} failed on inputs of shape {tuple(x.shape)}, as its metadata "
                           f"describes them ({first}); if the metadata was edited, re-export the model")

