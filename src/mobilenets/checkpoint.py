"""Model files: safetensors weights with the JSON metadata needed to rebuild and use them.

One ``.safetensors`` file holds the tensors and, in its header's metadata under the key
``"mobilenets"``, a JSON document: the model name and constructor options, the input
preprocessing (size, mean, std, channels), class names and anything the writer adds
(epoch, metrics). Loading never executes code: safetensors is plain data and the model is
rebuilt from the registry by name. Writes are atomic (temporary file, fsync, rename), so
a crash or a full disk never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from .errors import MobilenetsError
from .registry import create_model, list_models

META_KEY = "mobilenets"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MobilenetsError(f"cannot write to {path.parent}: {e.strerror or e}; "
                              "choose a writable output directory") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise MobilenetsError(f"could not save {path}: {e.strerror or e} "
                              "(the previous file, if any, is unchanged)") from e


def state_to_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return safetensors_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def model_meta(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    """The metadata that rebuilds ``model`` (it must come from :func:`create_model`)."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise MobilenetsError("only models made by mobilenets.create_model can be saved")
    meta = {"format_version": FORMAT_VERSION, "model": name,
            "model_kwargs": dict(getattr(model, "model_kwargs", {}))}
    meta.update(extra)
    return meta


def save_model(model: torch.nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Save ``model``'s weights and metadata (``preprocessing``, ``classes``, ...) atomically."""
    path = Path(path)
    atomic_write_bytes(path, state_to_bytes(model.state_dict(), model_meta(model, **meta)))
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a mobilenets ``.safetensors`` file, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise MobilenetsError(f"checkpoint not found: {path}")
    if path.is_dir():
        for candidate in ("best.safetensors", "model.safetensors", "last.safetensors"):
            if (path / candidate).is_file():
                path = path / candidate
                break
        else:
            raise MobilenetsError(f"{path} is a directory without best/model/last.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise MobilenetsError(f"{path} is not a readable safetensors checkpoint "
                              f"(truncated or corrupt?): {e}") from e
    if META_KEY not in header:
        raise MobilenetsError(f"{path} has no mobilenets metadata; convert foreign weights "
                              "with `mobilenets convert`")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise MobilenetsError(f"{path}: corrupt metadata ({e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) \
            or not isinstance(meta.get("model_kwargs", {}), dict):
        raise MobilenetsError(f"{path}: metadata lacks a model name and options")
    if meta["model"] not in list_models():
        raise MobilenetsError(f"{path}: unknown model {meta['model']!r} in metadata")
    return tensors, meta


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (strictly)."""
    tensors, meta = read_checkpoint(path)
    model = create_model(meta["model"], **meta.get("model_kwargs", {}))
    load_state(model, tensors, source=str(path))
    model.eval()
    return model, meta


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with one clear error naming the first offending tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k not in own]
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in tensors and tensors[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}")
    if extra:
        problems.append(f"unexpected {extra[:3]}")
    if wrong:
        problems.append(f"wrong shapes (file vs model) {wrong[:3]}")
    if problems:
        raise MobilenetsError(f"{source} does not fit {getattr(model, 'model_name', 'the model')}: "
                              + "; ".join(problems))
    model.load_state_dict(tensors)
