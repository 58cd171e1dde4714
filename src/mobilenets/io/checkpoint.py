"""Model files: safetensors weights with the JSON metadata needed to rebuild and use them.

One ``.safetensors`` file holds the tensors and, in its header's metadata under the key
``"mobilenets"``, a JSON document: the model name and constructor options, the input
preprocessing (size, mean, std, channels), class names and anything the writer adds
(epoch, metrics). Loading never executes code: safetensors is plain data and the model is
rebuilt from the registry by name. Writes are atomic (temporary file, fsync, rename), so
a crash or a full disk never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from ..data.images import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ..errors import MobilenetsError, did_you_mean
from ..models.registry import check_options, create_model, list_models

META_KEY = "mobilenets"
FORMAT_VERSION = 1


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path``, created with mode 0o666 so that the
    kernel applies the umask as ``open()`` would: ``tempfile.mkstemp`` gives 0o600, and
    finding out the umask to widen that takes ``os.umask``, which changes it for a moment
    for every thread of the process."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {path}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
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
        hint = "; free some disk space and try again" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise MobilenetsError(f"could not save {path}: {e.strerror or e} "
                              f"(the previous file, if any, is unchanged){hint}") from e


def state_to_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return safetensors_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``torch.compile`` wrapper, whose state-dict keys carry an
    ``_orig_mod.`` prefix."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def model_meta(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    """The metadata that rebuilds ``model`` (it must come from :func:`create_model`)."""
    from ..models.base import FeatureMaps

    model = unwrap(model)
    if isinstance(model, FeatureMaps):
        raise MobilenetsError("a features_only model holds no head and is not saved on its own: save "
                              "the full model (create_model without features_only), whose weights "
                              "load into create_model(..., features_only=True) by name")
    name = getattr(model, "model_name", None)
    if name is None:
        raise MobilenetsError("only models made by mobilenets.create_model can be saved")
    classes = extra.get("classes")
    if classes is not None and len(classes) != model.num_classes:
        # Refused here, not only by load_model: a file that saves must load.
        raise MobilenetsError(f"{len(classes)} class names were given for a model with "
                              f"{model.num_classes} outputs")
    meta = {"format_version": FORMAT_VERSION, "model": name,
            "model_kwargs": dict(getattr(model, "model_kwargs", {}))}
    meta.update(extra)
    return meta


def save_model(model: torch.nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Save ``model``'s weights and metadata (``preprocessing``, ``classes``, ...) atomically.

    A converted model's own ``preprocessing`` (its source's input size and normalization)
    and a pretrained model's ``classes`` are stored unless ``meta`` gives them, so that
    ``predict`` can use the file at once.
    """
    path = Path(path)
    model = unwrap(model)
    if "preprocessing" not in meta and isinstance(getattr(model, "preprocessing", None), dict):
        meta["preprocessing"] = model.preprocessing
    if "classes" not in meta and isinstance(getattr(model, "classes", None), list):
        meta["classes"] = model.classes  # pretrained ImageNet weights carry their class names
    atomic_write_bytes(path, state_to_bytes(model.state_dict(), model_meta(model, **meta)))
    return path


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names: itself, or for a run directory its best (then
    model, then last) checkpoint."""
    path = Path(path)
    try:
        found = path.exists()
    except PermissionError as e:  # a folder on the way that this user may not enter
        raise MobilenetsError(f"permission denied: cannot read checkpoint {path}") from e
    if not found:
        raise MobilenetsError(f"checkpoint not found: {path}")
    if not path.is_dir() and not path.is_file():  # opening a FIFO would block forever
        raise MobilenetsError(f"{path} is not a regular file (a pipe or a device?); give a checkpoint file")
    if path.is_dir():
        for candidate in ("best.safetensors", "model.safetensors", "last.safetensors"):
            if (path / candidate).is_file():
                return path / candidate
        raise MobilenetsError(f"{path} is a directory without best/model/last.safetensors")
    if not os.access(path, os.R_OK):  # safetensors reports EACCES as "No such file or directory"
        raise MobilenetsError(f"permission denied: cannot read checkpoint {path}")
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a mobilenets ``.safetensors`` file, with clear errors."""
    path = checkpoint_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError, MemoryError) as e:
        raise MobilenetsError(f"{path} is not a readable safetensors checkpoint "
                              f"(truncated or corrupt?): {e}") from e
    if META_KEY not in header:
        raise MobilenetsError(f"{path} has no mobilenets metadata; convert foreign weights "
                              "with `mobilenets convert`")
    try:
        meta = json.loads(header[META_KEY])
    except (ValueError, RecursionError) as e:  # JSONDecodeError, over-long ints, deep nesting
        raise MobilenetsError(f"{path}: corrupt metadata ({e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) \
            or not isinstance(meta.get("model_kwargs", {}), dict):
        raise MobilenetsError(f"{path}: metadata lacks a model name and options")
    if meta["model"] not in list_models():
        raise MobilenetsError(f"{path}: unknown model {_short(meta['model'])} in metadata; "
                              f"known models: {', '.join(list_models())}")
    check_meta_fields(meta, path)
    return tensors, meta


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters: metadata values can be arbitrarily long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON ints can exceed any float: 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 1e300 if isinstance(value, int) else math.isfinite(value)


def check_meta_fields(meta: dict[str, Any], path: str | os.PathLike, *, model_channels: bool = True) -> None:
    """Reject metadata whose ``classes`` or ``preprocessing`` would break a later step
    (evaluation, prediction, export) with an obscure error: the file is corrupt or foreign.
    Preprocessing and classes are checked by :meth:`Preprocessing.from_meta`, against the
    input channels the model options give (``model_channels``: the options rebuild the model,
    as in a checkpoint; an export's graph is fixed and fails clearly if fed otherwise)."""
    from ..data.preprocessing import Preprocessing, check_classes

    holdout = meta.get("holdout")
    if holdout is not None and not (isinstance(holdout, dict) and isinstance(holdout.get("seed"), int)
                                    and _is_number(holdout.get("val_fraction"))
                                    and 0 < holdout["val_fraction"] < 1):
        raise MobilenetsError(f"{path}: metadata 'holdout' must be a seed and a fraction in (0, 1), "
                              f"got {_short(holdout)}")
    if meta.get("preprocessing") is None:
        check_classes(meta.get("classes"), path)
        return
    kwargs = meta.get("model_kwargs")
    in_chans = kwargs.get("in_chans", 3) if isinstance(kwargs, dict) and model_channels else None
    # Options out of range are reported by check_model_kwargs, with their own message.
    valid = isinstance(in_chans, int) and not isinstance(in_chans, bool) and 1 <= in_chans <= 4096
    Preprocessing.from_meta(meta, path, channels=in_chans if valid else None)


def check_model_kwargs(name: str, kwargs: dict[str, Any], source: str) -> None:
    """Model options from a file's metadata, checked as :func:`create_model` checks them
    (:func:`mobilenets.models.registry.check_options`), so that untrusted metadata fails with one
    clear error and whatever builds also loads."""
    try:
        check_options(name, kwargs)
    except MobilenetsError as e:
        raise MobilenetsError(f"{source}: metadata options are invalid for {name} ({e}); the file "
                              "is corrupt or was not written by mobilenets") from e


#: Prefix of the tensors with which ``last.safetensors`` also carries what resuming a run
#: needs (optimizer, EMA, QAT ranges); they are not model weights.
TRAIN_STATE_PREFIX = "train/"


def model_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` without the training state: what the model itself loads."""
    return {k: v for k, v in tensors.items() if not k.startswith(TRAIN_STATE_PREFIX)}


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (strictly; the
    training state a ``last.safetensors`` also holds is left out)."""
    tensors, meta = read_checkpoint(path)
    tensors = model_weights(tensors)
    model = build_checked(meta["model"], meta.get("model_kwargs", {}), tensors, source=str(path))
    load_state(model, tensors, source=str(path))
    check_meta_fits_model(meta, model, str(path))
    classes = meta.get("classes")
    if classes is not None and len(classes) != model.num_classes:
        raise MobilenetsError(f"{path}: metadata names {len(classes)} classes but the model has "
                              f"{model.num_classes} outputs" + (" (no classifier)" if model.num_classes == 0
                                                               else "") + "; the file is inconsistent")
    model.eval()
    return model, meta


def build_checked(name: str, kwargs: dict[str, Any], tensors: dict[str, torch.Tensor],
                  source: str) -> torch.nn.Module:
    """The model that untrusted metadata describes, built only once its tensor shapes are
    known to match ``tensors``: a skeleton on the ``meta`` device (no memory) is compared
    first, so odd options fail with one clear error instead of a huge allocation."""
    check_model_kwargs(name, kwargs, source)
    try:
        with torch.device("meta"):
            skeleton = create_model(name, **kwargs)
    except MobilenetsError as e:
        raise MobilenetsError(f"{source}: {e}") from e
    except Exception as e:  # noqa: BLE001 - any failure means the options do not build a model
        raise MobilenetsError(f"{source}: metadata options {_short(kwargs, 200)} do not build "
                              f"{name}: {e}") from e
    _check_fit(skeleton, tensors, source)
    return create_model(name, **kwargs)


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with one clear error naming the first offending tensors: names,
    shapes, kinds (integers into float weights) and values (NaN/Inf)."""
    _check_fit(model, tensors, source)
    check_tensor_kinds(model.state_dict(), tensors, source)
    check_finite(tensors, source)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:  # e.g. a tensor of a dtype that cannot be copied (complex)
        raise MobilenetsError(f"{source} does not fit {getattr(model, 'model_name', 'the model')}: {e}") from e


def _check_fit(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Names, then shapes, of ``tensors`` against ``model``'s state dict."""
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


def check_tensor_kinds(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a file tensor of another kind than the model's (integers or booleans for float
    weights, floats for a counter, complex anywhere): ``load_state_dict`` would cast it
    silently, and integer weights mean the file is not what it claims to be."""
    def kind(t: torch.Tensor) -> str:
        return "complex" if t.is_complex() else "float" if t.is_floating_point() else "integer"

    wrong = [f"{k} ({tensors[k].dtype} for {v.dtype})" for k, v in own.items()
             if k in tensors and kind(tensors[k]) != kind(v)]
    if wrong:
        raise MobilenetsError(f"{source}: tensors of the wrong kind (file for model): {', '.join(wrong[:3])}"
                              + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
                              + "; the file is corrupt or not a checkpoint of this model")


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or Inf, naming the first such tensor: such a model loads
    and predicts ``nan`` for every image, silently wrong."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise MobilenetsError(f"{source}: tensor {name} holds {bad} non-finite value"
                                  f"{'s' if bad > 1 else ''} (NaN or Inf) of {t.numel()}; the "
                                  "weights are broken (a diverged run or a corrupt file)")


def stem_channels(model: torch.nn.Module) -> int | None:
    """Input channels of the model's first convolution: what its inputs must have."""
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def check_meta_fits_model(meta: dict[str, Any], model: torch.nn.Module, source: str) -> None:
    """Metadata preprocessing against the weights: a file that says 1 channel for a stem
    that takes 3 would fail later, inside the first convolution, with a raw error."""
    pre = meta.get("preprocessing")
    channels = pre.get("channels") if isinstance(pre, dict) else None
    stem = stem_channels(model)
    if channels is not None and stem is not None and channels != stem:
        raise MobilenetsError(f"{source}: metadata preprocessing says {channels} input channel"
                              f"{'s' if channels != 1 else ''} but the weights' first convolution "
                              f"takes {stem}; the file is inconsistent")
