"""Image folders: ``root/<class>/<image>`` files, with or without ``train/`` and ``val/``.

Bad input in image folders:

* files that are not images or cannot be decoded (corrupt, truncated) are skipped with one
  warning that counts them, or are an error naming the first one with ``strict=True``
  (``--strict``). Small-image folders (materialised) decode every file up front; for large
  ("photo") folders every file's header is opened at scan time (cheap, no decoding), and a
  file whose header is fine but whose data is broken is found when it is first decoded:
  the same policy then, one warning naming it and the next readable image of the folder in
  its place (the epoch keeps its length, so steps and resumes stay exact), or with
  ``strict`` an error naming it;
* a class folder this user may not read is "permission denied" with its path;
* images smaller than the crop (``image_size``) are upscaled (bilinear) and counted in a
  warning, never refused: a few small photos in a folder are common and harmless, and
  ``mobilenets predict`` treats any size the same way.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import MobilenetsError
from .images import (IMAGE_EXTENSIONS, MIN_IMAGE_SIZE, REPLACE_HINT, check_image_size, load_image,
                     resize_center_crop, to_uint8_tensor)
from .tensor_images import TensorImages

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: Image folders without ``train/`` and ``val/`` hold out this fraction of each class.
DEFAULT_VAL_FRACTION = 0.1
#: Sub-folders that hold each split, in the order they are looked for.
_SPLIT_FOLDERS = {"train": ["train"], "val": ["val", "valid", "validation", "test"],
                  "test": ["test", "val", "valid", "validation"]}


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
    strict: bool = False  # a file that fails to decode: an error, not replaced by the next one
    #: Evaluation crop: the share of the shorter side kept (``input_size / resize_size`` of
    #: published weights; 1 the central square) and the resampling filter.
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"
    _epoch: int = field(default=0, repr=False)
    _augment: bool = field(default=True, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int, augment: bool = True) -> None:
        """Seed this epoch's crops; ``augment=False`` gives a training set's images as
        evaluation sees them (``--no-aug-epochs``)."""
        self._epoch, self._augment = epoch, augment

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i, img = self._decode(i)
        if self.train and self._augment and self.kind == "photo":
            img = self._random_resized_crop(img, i)
        else:
            img = self.center_crop(img)
        return to_uint8_tensor(img), self.labels[i]

    def center_crop(self, img: PILImage) -> PILImage:
        """The evaluation transform: the one ``predict`` applies with the model's preprocessing."""
        return resize_center_crop(img, self.image_size, self.crop_fraction, self.interpolation)

    def _decode(self, i: int) -> tuple[int, PILImage]:
        """Image ``i``, or (not ``strict``) the next readable one in its place, with a warning."""
        for k in range(min(len(self.files), 16)):
            j = (i + k) % len(self.files)
            try:
                img = load_image(self.files[j], self.channels)
            except MobilenetsError as e:
                if self.strict:
                    raise
                warnings.warn(f"skipped an unreadable image: {e}; the next image of {self.source} "
                              "takes its place (--strict makes this an error)", stacklevel=2)
                continue
            return j, img
        raise MobilenetsError(f"{self.source}: 16 images in a row from {self.files[i]} cannot be "
                              "decoded; the folder is damaged")

    def _random_resized_crop(self, img: PILImage, i: int) -> PILImage:
        """Seeded by (seed, epoch, index), so a resumed run crops the same way."""
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
    if not os.access(root, os.R_OK | os.X_OK):
        raise MobilenetsError(f"permission denied: cannot read data directory {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise MobilenetsError(f"{root} has no class folders; expected {root}/<class>/<image files>")
    files, labels = [], []
    for label, name in enumerate(classes):
        if not os.access(root / name, os.R_OK | os.X_OK):  # rglob would find nothing, silently
            raise MobilenetsError(f"permission denied: cannot read class folder {root / name}")
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


def load_image_folder(root: str | os.PathLike, split: str, *, image_size: int | None = None,
                      channels: int | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
                      seed: int = 0, classes: list[str] | None = None, strict: bool = False,
                      augment: bool | None = None, min_classes: int = 2,
                      crop_fraction: float = 1.0, interpolation: str = "bilinear") -> Dataset:
    """An image-folder dataset; uses ``root/train`` and ``root/val`` (or ``test``) if present,
    otherwise holds out ``val_fraction`` of each class (seeded) for validation.

    Images of 64 px or less are loaded into memory (and augmented like CIFAR); larger ones
    are decoded lazily, with a random-resized crop when ``augment`` (default: the train
    split). Unreadable files are skipped with a warning, or are an error with ``strict``
    (see the module docstring). With a model's ``classes``, folders are matched to them by
    name (any subset, in any order); without, at least ``min_classes`` class folders are
    needed (a classifier needs two; calibration images need no labels). ``crop_fraction`` and
    ``interpolation``: the evaluation crop of a model's preprocessing (published ImageNet
    weights resize the shorter side to ``resize_size`` and crop ``input_size``).
    """
    root = Path(root)
    files, labels, found_classes, split_dir = _split_files(root, split, val_fraction, seed)
    where = split_dir or root
    labels, found_classes = _match_classes(labels, found_classes, classes, min_classes, where, root)
    probe_channels, probe_size = _probe_images(files)
    channels = channels or probe_channels
    if image_size is None and min(probe_size, 224) < MIN_IMAGE_SIZE:
        raise MobilenetsError(f"the images in {root} are about {probe_size} px; the networks need at "
                              f"least {MIN_IMAGE_SIZE} (--image-size upscales them)")
    image_size = image_size or min(probe_size, 224)
    check_image_size(image_size)
    train = split == "train" if augment is None else augment
    ds = ImageFolder(files, labels, found_classes, image_size, channels, train=train,
                     source=str(where), kind="photo" if image_size > 64 else "small", seed=seed,
                     strict=strict, crop_fraction=crop_fraction, interpolation=interpolation)
    if image_size <= 64:
        return _materialize(ds, strict)
    return _check_headers(ds, strict)


def _split_files(root: Path, split: str, val_fraction: float,
                 seed: int) -> tuple[list[Path], list[int], list[str], Path | None]:
    """Files, labels and class folders of ``split``, and the split's own folder if it has
    one; a folder without ``train/`` holds out a seeded ``val_fraction`` of each class."""
    split_dir = next((root / s for s in _SPLIT_FOLDERS[split] if (root / s).is_dir()), None)
    if (root / "train").is_dir():
        if split_dir is None:
            raise MobilenetsError(f"{root} has train/ but no val/ or test/ folder")
        return (*scan_image_folder(split_dir), split_dir)
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
    return files, labels, found_classes, split_dir


def _match_classes(labels: list[int], found_classes: list[str], classes: list[str] | None,
                   min_classes: int, where: Path, root: Path) -> tuple[list[int], list[str]]:
    """Labels as indices into a model's ``classes`` (folders matched by name), or, without
    them, the folders' own classes once there are at least ``min_classes``."""
    if classes is not None:
        unknown = [c for c in found_classes if c not in classes]
        if unknown:
            raise MobilenetsError(f"{where}: class folder(s) {unknown[:5]} are not among the "
                                  f"model's {len(classes)} classes ({', '.join(map(str, classes[:10]))}"
                                  f"{', ...' if len(classes) > 10 else ''})")
        index = {c: i for i, c in enumerate(classes)}
        return [index[found_classes[i]] for i in labels], list(classes)
    if len(found_classes) < min_classes:
        hint = (f"; {root} looks like a single split: put it in {root.parent}/<train|val>/<class>/"
                if found_classes[0].lower() in ("train", "val", "valid", "validation", "test") else "")
        raise MobilenetsError(f"{where} has one class folder ({found_classes[0]}); a "
                              f"classifier needs at least two{hint}")
    return labels, found_classes


def _report(bad: list[str], small: int, ds: ImageFolder, strict: bool) -> None:
    """One warning (or, ``strict``, one error) for unreadable files; one for small images."""
    if bad and strict:
        raise MobilenetsError(f"{len(bad)} unreadable image file(s) in {ds.source}, e.g. "
                              f"{bad[0].removesuffix(REPLACE_HINT)}; remove them, or leave out "
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
        images.append(to_uint8_tensor(ds.center_crop(img)))
        labels.append(ds.labels[i])
    _report(bad, small, ds, strict)
    if not images:
        raise MobilenetsError(f"no readable images in {ds.source}")
    return TensorImages(torch.stack(images), torch.tensor(labels, dtype=torch.int64), ds.classes,
                        ds.source, "small")
