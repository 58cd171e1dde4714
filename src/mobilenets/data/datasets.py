"""Datasets by name or path: format detection, splits, and the held-out validation part.

Fashion-MNIST/MNIST (IDX, :mod:`.idx`), CIFAR-10/100 (python pickles, :mod:`.cifar`) and
image folders (:mod:`.folders`). Every dataset yields ``(image, label)`` with ``image`` a
``uint8`` tensor ``(C, H, W)`` of a fixed size (:mod:`.images`), and has ``classes``
(names). Small datasets (IDX, CIFAR, small-image folders) live in memory as one tensor
(:class:`.tensor_images.TensorImages`); normalisation and batch augmentation happen on whole
batches in the training engine (:mod:`mobilenets.data.augment`).

Nothing here downloads: a dataset name looks in the usual system locations, a path is
read as given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import MobilenetsError
# Every name below was importable from this module before it was split; other packages
# and user code import them from here.
from .cifar import is_cifar, load_cifar_dir, safe_unpickle
from .folders import DEFAULT_VAL_FRACTION, ImageFolder, load_image_folder, scan_image_folder
from .idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, find_idx, is_idx, load_idx_dir, read_idx
from .images import (IMAGE_EXTENSIONS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_image_size, load_image,
                     resize_center_crop, to_uint8_tensor)
from .tensor_images import MAX_CLASSES, TensorImages

__all__ = [
    "DEFAULT_VAL_FRACTION", "FASHION_MNIST_CLASSES", "IMAGE_EXTENSIONS", "MAX_CLASSES", "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE", "MNIST_CLASSES", "SEARCH_DIRS", "ImageFolder", "TensorImages", "find_idx",
    "holdout_split", "is_cifar", "is_idx", "load_cifar_dir", "load_dataset", "load_idx_dir",
    "load_image", "load_image_folder", "mix_seed", "read_idx", "resize_center_crop",
    "resolve_data_dir", "safe_unpickle", "scan_image_folder", "splits_from_train", "to_uint8_tensor",
]

#: Where dataset names are looked up (the Debian packages dataset-fashion-mnist, etc.).
SEARCH_DIRS = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist", "~/.cache/mobilenets/fashion-mnist",
                      "data/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist", "~/.cache/mobilenets/mnist", "data/mnist"],
}


def resolve_data_dir(spec: str) -> Path:
    """A dataset name (``fashion-mnist``, ``mnist``) or a path, as an existing directory."""
    if spec.lower() in SEARCH_DIRS:
        for d in SEARCH_DIRS[spec.lower()]:
            path = Path(d).expanduser()
            if is_idx(path):
                return path
        hint = (" (Debian: apt-get install dataset-fashion-mnist)" if spec.lower() == "fashion-mnist"
                else "")
        raise MobilenetsError(f"{spec} not found in {', '.join(SEARCH_DIRS[spec.lower()])}{hint}; "
                              f"or pass --data DIR with its IDX files")
    path = Path(spec).expanduser()
    if not path.exists():
        raise MobilenetsError(f"data not found: {spec!r} is neither a known dataset "
                              f"({', '.join(SEARCH_DIRS)}) nor an existing path")
    if not path.is_dir():
        raise MobilenetsError(f"--data must be a directory or a dataset name, got file {path}")
    children = [c for c in path.iterdir() if not c.name.startswith(".")]
    if not children:
        raise MobilenetsError(f"data directory {path} is empty")
    # An unpacked archive: `cifar-10-python.tar.gz` unpacks into cifar-10-batches-py/.
    if len(children) == 1 and children[0].is_dir() and (is_cifar(children[0]) or is_idx(children[0])):
        return children[0]
    return path


def splits_from_train(spec: str) -> bool:
    """True when the dataset has no validation split of its own (an image folder without
    ``train/``), so that :func:`load_dataset` holds out part of each class for it."""
    path = resolve_data_dir(spec)
    return not (is_idx(path) or is_cifar(path) or (path / "train").is_dir())


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers (seed, epoch, step, ...)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def holdout_split(ds: Dataset, fraction: float, seed: int) -> tuple[TensorImages, TensorImages]:
    """``(train, val)``: a seeded ``fraction`` of an in-memory dataset held out for validation
    (``--val-fraction`` on data with a split of its own; ``eval`` redraws it from the seed)."""
    if not isinstance(ds, TensorImages):
        raise MobilenetsError("--val-fraction holds part of train/ out in memory, which a folder of "
                              "large images is not; put the validation images in val/ (used when "
                              "--val-fraction is left out)")
    if not 0 < fraction < 1:
        raise MobilenetsError(f"validation fraction must be in (0, 1), got {fraction}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(mix_seed(seed, 99)))
    n_val = max(1, int(len(ds) * fraction))
    return ds.subset(perm[n_val:].sort().values), ds.subset(perm[:n_val].sort().values)


def load_dataset(spec: str, split: str = "train", *, image_size: int | None = None,
                 classes: list[str] | None = None, holdout: dict[str, Any] | None = None,
                 **kwargs: Any) -> Dataset:
    """Load ``split`` ("train", "val" or "test") of a dataset name or directory.

    The format is detected: IDX files (Fashion-MNIST/MNIST), CIFAR pickles, or an image
    folder. For IDX and CIFAR, "val" is the test split. ``image_size``: the side images are
    given at (in-memory datasets are resized like ``mobilenets predict`` resizes).
    ``classes``: a model's class names; image folders are matched to them by name, IDX and
    CIFAR labels (class indices) are named by them. ``holdout``: a checkpoint's stored
    ``{"seed", "val_fraction"}``, so that "train" and "val" are the images its training
    used and held out (a folder without ``train/`` is split by it; data with a split of its
    own has its training split divided by :func:`holdout_split`). Other ``kwargs`` go to
    :func:`load_image_folder` (``channels``, ``val_fraction``, ``seed``, ``strict``, ``augment``).
    """
    if split not in ("train", "val", "test"):
        raise MobilenetsError(f"split must be train, val or test, got {split!r}")
    path = resolve_data_dir(spec)
    held = {k: holdout[k] for k in ("seed", "val_fraction")} if holdout else {}
    divided = bool(held) and split != "test" and not splits_from_train(spec)
    source = "train" if divided else split
    if is_idx(path):
        ds = load_idx_dir(path, source, classes or (MNIST_CLASSES if spec.lower() == "mnist" else None))
    elif is_cifar(path):
        ds = load_cifar_dir(path, source, classes)
    else:
        ds = load_image_folder(path, source, image_size=image_size, classes=classes, **{**kwargs, **held})
        image_size = None  # the folder loader sized its images itself
    if image_size:
        check_image_size(image_size)
        ds = ds.resized(image_size)
    return holdout_split(ds, held["val_fraction"], held["seed"])[split == "val"] if divided else ds
