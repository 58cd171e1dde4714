"""CIFAR-10 and CIFAR-100 in their python pickle layout, read as data only.

The pickles come from the internet; :func:`safe_unpickle` refuses anything but builtins and
numpy arrays, so a doctored batch file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MobilenetsError
from .tensor_images import TensorImages, check_known, check_labels


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's python pickles contain: builtins and numpy arrays (and
    ``_codecs.encode``, a pure function with which protocol 2 rebuilds byte strings)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not plain data")


def safe_unpickle(path: Path) -> Any:
    """The plain data in a pickle file, or one :class:`MobilenetsError` naming it."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except MobilenetsError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises many types
        raise MobilenetsError(f"cannot read CIFAR pickle {path}: {e}") from e


def is_cifar(path: Path) -> bool:
    """Whether ``path`` holds CIFAR-10 or CIFAR-100 pickles."""
    return any((path / n).is_file() for n in ("data_batch_1", "test_batch", "meta", "batches.meta"))


def _key(d: dict, name: str) -> Any:
    """``d[name]`` under a str or a bytes key (pickles written by Python 2 use bytes)."""
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    return None


def _layout(directory: Path, split: str) -> tuple[list[Path], Path, str, str]:
    """Batch files, meta file, label key and class-names key: CIFAR-10 or CIFAR-100."""
    if (directory / "data_batch_1").is_file() or (directory / "test_batch").is_file():
        files = sorted(directory.glob("data_batch_*")) if split == "train" else [directory / "test_batch"]
        return files, directory / "batches.meta", "labels", "label_names"
    return [directory / ("train" if split == "train" else "test")], directory / "meta", "fine_labels", \
        "fine_label_names"


def _read_batch(f: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` and labels of one batch file, checked."""
    d = safe_unpickle(f)
    data, lab = (_key(d, "data"), _key(d, label_key)) if isinstance(d, dict) else (None, None)
    if data is None or lab is None:
        raise MobilenetsError(f"{f}: not a CIFAR batch (needs 'data' and '{label_key}')")
    try:  # a corrupt batch may hold anything under these keys
        data, lab = np.asarray(data), np.asarray(lab, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise MobilenetsError(f"{f}: not a CIFAR batch ({e})") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1:] != (3072,) or lab.shape != (len(data),):
        raise MobilenetsError(f"{f}: expected uint8 data (N, 3072) and N labels, got "
                              f"{data.dtype} {data.shape} and labels {lab.shape}")
    check_labels(lab, f)
    return data.reshape(-1, 3, 32, 32), lab


def _class_names(meta_file: Path, names_key: str) -> list[str] | None:
    """The class names in the ``meta`` file, if it is there and holds them."""
    if not meta_file.is_file():
        return None
    meta = safe_unpickle(meta_file)
    names = _key(meta, names_key) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)):
        return None
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar_dir(directory: str | os.PathLike, split: str, classes: list[str] | None = None) -> TensorImages:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or CIFAR-100
    (``train``, ``test``, ``meta``) in their python pickle layout, read as data only.
    ``classes`` (a model's) name the labels instead of the ``meta`` file."""
    directory = Path(directory)
    files, meta_file, label_key, names_key = _layout(directory, split)
    files = [f for f in files if f.is_file()]
    if not files:
        raise MobilenetsError(f"no CIFAR {split} batches in {directory}")
    batches = [_read_batch(f, label_key) for f in files]
    labels_all = np.concatenate([lab for _, lab in batches])
    if not len(labels_all):
        raise MobilenetsError(f"no images in the CIFAR {split} batches of {directory}")
    check_known(int(labels_all.max()) + 1, classes, directory)
    if classes is None:
        classes = _class_names(meta_file, names_key)
    if classes is None:
        classes = [str(i) for i in range(int(labels_all.max()) + 1)]
    return TensorImages(torch.from_numpy(np.concatenate([images for images, _ in batches])),
                        torch.from_numpy(labels_all), classes, str(directory))
