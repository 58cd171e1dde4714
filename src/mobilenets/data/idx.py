"""Fashion-MNIST and MNIST: IDX files (``train-*`` and ``t10k-*``, gzipped or raw)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import MobilenetsError
from .tensor_images import TensorImages, check_known, check_labels

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), validating its header against its size."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise MobilenetsError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise MobilenetsError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise MobilenetsError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no int64 overflow
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise MobilenetsError(f"{path}: IDX header promises {shape} ({expected} bytes) but the "
                              f"file holds {len(body)} bytes (truncated or corrupt)")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def find_idx(directory: Path, prefix: str) -> tuple[Path, Path] | None:
    """The images and labels files of split ``prefix`` (``train``, ``t10k``), under either
    of the names the datasets ship with, or None."""
    for images_name, labels_name in ((f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"),
                                     (f"{prefix}-images.idx3-ubyte", f"{prefix}-labels.idx1-ubyte")):
        for suffix in (".gz", ""):
            images, labels = directory / (images_name + suffix), directory / (labels_name + suffix)
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def is_idx(path: Path) -> bool:
    """Whether ``path`` holds an IDX dataset (either split)."""
    return bool(find_idx(path, "train") or find_idx(path, "t10k"))


def load_idx_dir(directory: str | os.PathLike, split: str, classes: list[str] | None = None) -> TensorImages:
    """Fashion-MNIST / MNIST layout: ``train-*`` and ``t10k-*`` image and label IDX files."""
    directory = Path(directory)
    prefix = "train" if split == "train" else "t10k"
    found = find_idx(directory, prefix)
    if found is None:
        raise MobilenetsError(f"no {prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz] "
                              f"in {directory}")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise MobilenetsError(f"{found[0]}: expected uint8 images (N, H, W) and integer labels (N,), got "
                              f"{images.dtype} {images.shape} and {labels.dtype} {labels.shape}")
    check_labels(labels, found[1])
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    check_known(n_classes, classes, found[1])
    if classes is None:
        classes = FASHION_MNIST_CLASSES if "fashion" in str(directory).lower() else [str(i) for i in range(max(n_classes, 1))]
    return TensorImages(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), list(classes), str(directory))
