"""Datasets: Fashion-MNIST/MNIST (IDX), CIFAR-10/100 (python pickles), image folders.

Every dataset yields ``(image, label)`` with ``image`` a ``uint8`` tensor ``(C, H, W)`` of a
fixed size, and has ``classes`` (names). Normalisation and batch augmentation happen on
whole batches in the training engine (:mod:`mobilenets.data.augment`), which is much faster on
CPU than per-image transforms. Small datasets (IDX, CIFAR) live in memory as one tensor.

Image conversion (``load_image``), for folders and ``mobilenets predict``:

* EXIF orientation is applied first (a phone photo is classified the way it is viewed);
* 16-bit grayscale (``I;16``, and the ``I`` mode in which Pillow opens 16-bit PGM and some
  16-bit PNGs) keeps its top 8 bits (>> 8), like every 16-bit image viewer; other 32-bit
  integer images (TIFF) keep values up to 255 and are scaled by their maximum above; float images (``F``) are read as [0, 1] when
  their values lie there (scientific TIFFs), else as [0, 255], clipped;
* palette (``P``) and other modes are converted to RGB (or L for 1-channel models);
* transparent images (``RGBA``, ``LA``, palette or colour-key transparency) are
  composited on white;
* 1-channel models receive luminance (``L``), 3-channel models RGB (grayscale repeated).

Bad input in image folders:

* files that are not images or cannot be decoded (corrupt, truncated) are skipped with one
  warning that counts them, or are an error naming the first one with ``strict=True``
  (``--strict``). Small-image folders (materialised) decode every file up front; for large
  ("photo") folders every file's header is opened at scan time (cheap, no decoding), and a
  file whose header is fine but whose data is broken stops training or evaluation with an
  error naming it when it is first decoded;
* images smaller than the crop (``image_size``) are upscaled (bilinear) and counted in a
  warning, never refused: a few small photos in a folder are common and harmless, and
  ``mobilenets predict`` treats any size the same way.

Nothing here downloads: a dataset name looks in the usual system locations, a path is
read as given.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import MobilenetsError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
#: Where dataset names are looked up (the Debian packages dataset-fashion-mnist, etc.).
SEARCH_DIRS = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist", "~/.cache/mobilenets/fashion-mnist",
                      "data/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist", "~/.cache/mobilenets/mnist", "data/mnist"],
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class TensorImages(Dataset):
    """An in-memory dataset: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""
    kind: str = "small"  # "small" (pad-crop augmentation) or "photo" (random-resized-crop)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise MobilenetsError(f"{self.source}: images must be uint8 (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise MobilenetsError(f"{self.source}: {len(self.images)} images but "
                                  f"{len(self.labels)} labels")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise MobilenetsError(f"{self.source}: labels outside 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch by index, without per-item Python overhead."""
        return self.images[idx], self.labels[idx]

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, idx: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[idx], self.labels[idx], self.classes, self.source, self.kind)

    def resized(self, size: int) -> "TensorImages":
        """Every image through :func:`resize_center_crop`, as ``mobilenets predict`` would
        prepare it: a checkpoint is evaluated at the input size it was trained for."""
        from PIL import Image

        if size == self.image_size and self.images.shape[-2] == size:
            return self
        need = len(self) * self.channels * size * size
        if need > _memory_bytes() // 2:
            raise MobilenetsError(f"{self.source}: {len(self)} images at {size}×{size} px need "
                                  f"{need / 2**30:.1f} GiB in memory, more than half of this machine's; "
                                  "choose a smaller --image-size")
        mode = "L" if self.channels == 1 else "RGB"
        out = torch.empty(len(self), self.channels, size, size, dtype=torch.uint8)
        for i, img in enumerate(self.images):
            pil = Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy(), mode)
            out[i] = to_uint8_tensor(resize_center_crop(pil, size))
        return TensorImages(out, self.labels, self.classes, self.source, self.kind)


def _memory_bytes() -> int:
    """Physical memory of this machine (a large number where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 50


# ----------------------------------------------------------------------------- IDX

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


def _find_idx(directory: Path, prefix: str) -> tuple[Path, Path] | None:
    for images_name, labels_name in ((f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"),
                                     (f"{prefix}-images.idx3-ubyte", f"{prefix}-labels.idx1-ubyte")):
        for suffix in (".gz", ""):
            images, labels = directory / (images_name + suffix), directory / (labels_name + suffix)
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def load_idx_dir(directory: str | os.PathLike, split: str, classes: list[str] | None = None) -> TensorImages:
    """Fashion-MNIST / MNIST layout: ``train-*`` and ``t10k-*`` image and label IDX files."""
    directory = Path(directory)
    prefix = "train" if split == "train" else "t10k"
    found = _find_idx(directory, prefix)
    if found is None:
        raise MobilenetsError(f"no {prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz] "
                              f"in {directory}")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise MobilenetsError(f"{found[0]}: expected uint8 images (N, H, W) and integer labels (N,), got "
                              f"{images.dtype} {images.shape} and {labels.dtype} {labels.shape}")
    _check_labels(labels, found[1])
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    _check_known(n_classes, classes, found[1])
    if classes is None:
        classes = FASHION_MNIST_CLASSES if "fashion" in str(directory).lower() else [str(i) for i in range(max(n_classes, 1))]
    return TensorImages(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), list(classes), str(directory))


#: More classes than any real dataset: a corrupt label file must not make us build a list
#: of billions of class names.
MAX_CLASSES = 100_000


def _check_known(n_classes: int, classes: list[str] | None, source: Path) -> None:
    """IDX and CIFAR labels are bare class indices: nothing tells a subset of a model's
    classes from another dataset, so with the model's ``classes`` the counts must agree."""
    if classes is not None and n_classes != len(classes):
        raise MobilenetsError(f"the model was trained on {len(classes)} classes, {source} has {n_classes}")


def _check_labels(labels: np.ndarray, source: Path) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= MAX_CLASSES):
        raise MobilenetsError(f"{source}: labels must be in 0..{MAX_CLASSES - 1}, found "
                              f"{int(labels.min())}..{int(labels.max())} (corrupt file?)")


# ----------------------------------------------------------------------------- CIFAR

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
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except MobilenetsError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises many types
        raise MobilenetsError(f"cannot read CIFAR pickle {path}: {e}") from e


def _key(d: dict, name: str) -> Any:
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    return None


def load_cifar_dir(directory: str | os.PathLike, split: str, classes: list[str] | None = None) -> TensorImages:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or CIFAR-100
    (``train``, ``test``, ``meta``) in their python pickle layout, read as data only.
    ``classes`` (a model's) name the labels instead of the ``meta`` file."""
    directory = Path(directory)
    if (directory / "data_batch_1").is_file() or (directory / "test_batch").is_file():
        files = sorted(directory.glob("data_batch_*")) if split == "train" else [directory / "test_batch"]
        meta_file, label_key, names_key = directory / "batches.meta", "labels", "label_names"
    else:
        files = [directory / ("train" if split == "train" else "test")]
        meta_file, label_key, names_key = directory / "meta", "fine_labels", "fine_label_names"
    files = [f for f in files if f.is_file()]
    if not files:
        raise MobilenetsError(f"no CIFAR {split} batches in {directory}")
    images, labels = [], []
    for f in files:
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
        _check_labels(lab, f)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    labels_all = np.concatenate(labels)
    if not len(labels_all):
        raise MobilenetsError(f"no images in the CIFAR {split} batches of {directory}")
    _check_known(int(labels_all.max()) + 1, classes, directory)
    if classes is None and meta_file.is_file():
        meta = safe_unpickle(meta_file)
        names = _key(meta, names_key) if isinstance(meta, dict) else None
        if isinstance(names, (list, tuple)):
            classes = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]
    if classes is None:
        classes = [str(i) for i in range(int(labels_all.max()) + 1)]
    return TensorImages(torch.from_numpy(np.concatenate(images)), torch.from_numpy(labels_all),
                        classes, str(directory))


# ----------------------------------------------------------------------------- images

#: The advice ``load_image`` ends its errors with; a folder-level report gives its own.
_REPLACE_HINT = "; remove or replace the file"


def load_image(path: str | os.PathLike, channels: int) -> "PIL.Image.Image":  # noqa: F821
    """Open any image and convert it to ``L`` (channels=1) or ``RGB`` as documented above."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
        source_format = img.format
        ImageOps.exif_transpose(img, in_place=True)
        return _convert_mode(img, channels, source_format)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MobilenetsError(f"cannot read image {path}: {e}{_REPLACE_HINT}") from e
    except Exception as e:  # noqa: BLE001 - decoders of corrupt files raise many types (struct.error,
        # IndexError, DecompressionBombError, ...): all mean "not a usable image"
        raise MobilenetsError(f"cannot read image {path}: {type(e).__name__}: {e}{_REPLACE_HINT}") from e


def _convert_mode(img, channels: int, source_format: str | None = None):
    """A loaded PIL image in ``L`` or ``RGB``, following the rules in the module docstring."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64)
        hi = int(arr.max()) if arr.size else 0
        # Pillow opens 16-bit PGM and some 16-bit PNGs as 32-bit "I": those are 16-bit data.
        sixteen = img.mode != "I" or source_format in ("PNG", "PPM")
        if sixteen and hi <= 65535:
            arr = arr >> 8
        elif hi > 255:  # true 32-bit integers (TIFF): scaled by their maximum
            arr = arr * 255 // hi
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if arr.size and arr.min() >= 0 and arr.max() <= 1:
            arr = arr * 255
        img = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def resize_center_crop(img, size: int):
    """The central square of the image (its side the shorter side) resized to ``size``×``size``
    (bilinear): the same as shorter side to ``size`` then a central crop, but the crop comes
    first (Pillow's resize ``box``), so a 1×30000 image costs no more memory than a square."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))


def to_uint8_tensor(img) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


@dataclass
class ImageFolder(Dataset):
    """``root/<class>/<image>`` files, decoded lazily with Pillow (DataLoader workers).

    Training samples of photographs get a random-resized crop (scale 0.25-1, aspect 3/4-4/3)
    here, per image; evaluation samples are resized and centre-cropped to ``image_size``.
    """

    files: list[Path]
    labels: list[int]
    classes: list[str]
    image_size: int
    channels: int
    train: bool = False
    source: str = ""
    kind: str = "photo"
    seed: int = 0
    _epoch: int = field(default=0, repr=False)
    _augment: bool = field(default=True, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int, augment: bool = True) -> None:
        """Seed this epoch's crops; ``augment=False`` gives a training set's images as
        evaluation sees them (``--no-aug-epochs``)."""
        self._epoch, self._augment = epoch, augment

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = load_image(self.files[i], self.channels)
        if self.train and self._augment and self.kind == "photo":
            img = self._random_resized_crop(img, i)
        else:
            img = resize_center_crop(img, self.image_size)
        return to_uint8_tensor(img), self.labels[i]

    def _random_resized_crop(self, img, i: int):
        from PIL import Image

        rng = np.random.default_rng([self.seed, self._epoch, i])
        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(0.25, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return img.resize((self.image_size, self.image_size), Image.BILINEAR,
                                  box=(x, y, x + cw, y + ch))
        return resize_center_crop(img, self.image_size)


def scan_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of ``root/<class>/*``; every class folder must hold images."""
    if not root.is_dir():
        raise MobilenetsError(f"data directory not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise MobilenetsError(f"{root} has no class folders; expected {root}/<class>/<image files>")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*")  # nothing hidden: ._name, .ipynb_checkpoints/
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root / name).parts))
        if not found:
            raise MobilenetsError(f"class folder {root / name} has no images "
                                  f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def _probe_images(files: list[Path], n: int = 32) -> tuple[int, int]:
    """(channels, typical size) from ``n`` images spread evenly over the (class-sorted) list,
    first and last included: 1 channel if all of them are grayscale."""
    from PIL import Image

    gray, sizes = True, []
    picks = np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))
    for p in (files[i] for i in picks):
        try:
            with Image.open(p) as img:
                gray &= img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
                sizes.append(min(img.size))
        except Exception:  # noqa: BLE001 - unreadable files are counted later, not here
            continue
    if not sizes:
        raise MobilenetsError(f"none of {min(n, len(files))} files sampled from {files[0].parent.parent} "
                              f"could be read as images (e.g. {files[0]})")
    return (1 if gray else 3), int(np.median(sizes))


#: Image folders without ``train/`` and ``val/`` hold out this fraction of each class.
DEFAULT_VAL_FRACTION = 0.1
#: Smallest side the networks are given: below it, the strided layers leave nothing.
MIN_IMAGE_SIZE = 8
#: Largest: four times the papers' biggest input (224); far beyond it a typo (2240 for 224)
#: would only end in an out-of-memory kill.
MAX_IMAGE_SIZE = 1024


def load_image_folder(root: str | os.PathLike, split: str, *, image_size: int | None = None,
                      channels: int | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
                      seed: int = 0, classes: list[str] | None = None, strict: bool = False,
                      augment: bool | None = None, min_classes: int = 2) -> Dataset:
    """An image-folder dataset; uses ``root/train`` and ``root/val`` (or ``test``) if present,
    otherwise holds out ``val_fraction`` of each class (seeded) for validation.

    Images of 64 px or less are loaded into memory (and augmented like CIFAR); larger ones
    are decoded lazily, with a random-resized crop when ``augment`` (default: the train
    split). Unreadable files are skipped with a warning, or are an error with ``strict``
    (see the module docstring). With a model's ``classes``, folders are matched to them by
    name (any subset, in any order); without, at least ``min_classes`` class folders are
    needed (a classifier needs two; calibration images need no labels).
    """
    root = Path(root)
    sub = {"train": ["train"], "val": ["val", "valid", "validation", "test"],
           "test": ["test", "val", "valid", "validation"]}[split]
    split_dir = next((root / s for s in sub if (root / s).is_dir()), None)
    has_splits = (root / "train").is_dir()
    if has_splits:
        if split_dir is None:
            raise MobilenetsError(f"{root} has train/ but no val/ or test/ folder")
        files, labels, found_classes = scan_image_folder(split_dir)
    else:
        files, labels, found_classes = scan_image_folder(root)
        if not 0 < val_fraction < 1:
            raise MobilenetsError(f"{root} has no train/ and val/ folders; give a validation "
                                  f"fraction in (0, 1), got {val_fraction}")
        g = np.random.default_rng(seed)
        keep = []
        labels_arr = np.asarray(labels)
        for c in range(len(found_classes)):
            idx = np.flatnonzero(labels_arr == c)
            idx = idx[g.permutation(len(idx))]
            n_val = max(1, int(round(len(idx) * val_fraction))) if len(idx) > 1 else 0
            keep += list(idx[n_val:] if split == "train" else idx[:n_val])
        keep.sort()
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        if not files:
            raise MobilenetsError(f"{root}: no images left for the {split} split")
    if classes is not None:
        unknown = [c for c in found_classes if c not in classes]
        if unknown:
            raise MobilenetsError(f"{split_dir or root}: class folder(s) {unknown[:5]} are not among the "
                                  f"model's {len(classes)} classes ({', '.join(map(str, classes[:10]))}"
                                  f"{', ...' if len(classes) > 10 else ''})")
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[found_classes[i]] for i in labels]
        found_classes = list(classes)
    elif len(found_classes) < min_classes:
        hint = (f"; {root} looks like a single split: put it in {root.parent}/<train|val>/<class>/"
                if found_classes[0].lower() in ("train", "val", "valid", "validation", "test") else "")
        raise MobilenetsError(f"{split_dir or root} has one class folder ({found_classes[0]}); a "
                              f"classifier needs at least two{hint}")
    probe_channels, probe_size = _probe_images(files)
    channels = channels or probe_channels
    if image_size is None and min(probe_size, 224) < MIN_IMAGE_SIZE:
        raise MobilenetsError(f"the images in {root} are about {probe_size} px; the networks need at "
                              f"least {MIN_IMAGE_SIZE} (--image-size upscales them)")
    image_size = image_size or min(probe_size, 224)
    _check_image_size(image_size)
    train = split == "train" if augment is None else augment
    ds = ImageFolder(files, labels, found_classes, image_size, channels, train=train,
                     source=str(split_dir or root), kind="photo" if image_size > 64 else "small", seed=seed)
    if image_size <= 64:
        return _materialize(ds, strict)
    return _check_headers(ds, strict)


def _report(bad: list[str], small: int, ds: ImageFolder, strict: bool) -> None:
    """One warning (or, ``strict``, one error) for unreadable files; one for small images."""
    if bad and strict:
        raise MobilenetsError(f"{len(bad)} unreadable image file(s) in {ds.source}, e.g. "
                              f"{bad[0].removesuffix(_REPLACE_HINT)}; remove them, or leave out "
                              "--strict to skip them")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {ds.source}, e.g. {bad[0]} "
                      "(--strict makes this an error)", stacklevel=3)
    if small:
        warnings.warn(f"{small} image(s) in {ds.source} are smaller than {ds.image_size} px and are "
                      "upscaled", stacklevel=3)


def _check_headers(ds: ImageFolder, strict: bool) -> ImageFolder:
    """Open every file's header (no decoding, well under a millisecond each) so that files
    that are not images are skipped or refused now, not in the middle of an epoch."""
    from PIL import Image

    files, labels, bad, small = [], [], [], 0
    for path, label in zip(ds.files, ds.labels):
        try:
            with Image.open(path) as img:
                size = min(img.size)
        except Exception as e:  # noqa: BLE001 - whatever the reason, this file is unusable
            bad.append(f"cannot read image {path}: {e}")
            continue
        small += size < ds.image_size
        files.append(path)
        labels.append(label)
    _report(bad, small, ds, strict)
    if not files:
        raise MobilenetsError(f"no readable images in {ds.source}")
    ds.files, ds.labels = files, labels
    return ds


def _materialize(ds: ImageFolder, strict: bool = False) -> TensorImages:
    """Decode a small-image folder once into memory, skipping unreadable files with a count."""
    images, labels, bad, small = [], [], [], 0
    for i in range(len(ds)):
        try:
            img = load_image(ds.files[i], ds.channels)
        except MobilenetsError as e:
            bad.append(str(e))
            continue
        small += min(img.size) < ds.image_size
        images.append(to_uint8_tensor(resize_center_crop(img, ds.image_size)))
        labels.append(ds.labels[i])
    _report(bad, small, ds, strict)
    if not images:
        raise MobilenetsError(f"no readable images in {ds.source}")
    return TensorImages(torch.stack(images), torch.tensor(labels, dtype=torch.int64), ds.classes,
                        ds.source, "small")


# ----------------------------------------------------------------------------- entry point

def resolve_data_dir(spec: str) -> Path:
    """A dataset name (``fashion-mnist``, ``mnist``) or a path, as an existing directory."""
    if spec.lower() in SEARCH_DIRS:
        for d in SEARCH_DIRS[spec.lower()]:
            path = Path(d).expanduser()
            if _is_idx(path):
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
    if len(children) == 1 and children[0].is_dir() and (_is_cifar(children[0]) or _is_idx(children[0])):
        return children[0]
    return path


def _check_image_size(size: int) -> None:
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise MobilenetsError(f"image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] px, got {size}")


def _is_idx(path: Path) -> bool:
    return bool(_find_idx(path, "train") or _find_idx(path, "t10k"))


def _is_cifar(path: Path) -> bool:
    return any((path / n).is_file() for n in ("data_batch_1", "test_batch", "meta", "batches.meta"))


def splits_from_train(spec: str) -> bool:
    """True when the dataset has no validation split of its own (an image folder without
    ``train/``), so that :func:`load_dataset` holds out part of each class for it."""
    path = resolve_data_dir(spec)
    return not (_is_idx(path) or _is_cifar(path) or (path / "train").is_dir())


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
    if _is_idx(path):
        ds = load_idx_dir(path, source, classes or (MNIST_CLASSES if spec.lower() == "mnist" else None))
    elif _is_cifar(path):
        ds = load_cifar_dir(path, source, classes)
    else:
        ds = load_image_folder(path, source, image_size=image_size, classes=classes, **{**kwargs, **held})
        image_size = None  # the folder loader sized its images itself
    if image_size:
        _check_image_size(image_size)
        ds = ds.resized(image_size)
    return holdout_split(ds, held["val_fraction"], held["seed"])[split == "val"] if divided else ds
