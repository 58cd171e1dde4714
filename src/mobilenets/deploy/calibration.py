"""Calibration images for int8: where they come from (the training split, as served) and
how onnxruntime's calibrator reads them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MobilenetsError
from .preprocess import preprocess
from .tracing import INPUT_NAME


def batches(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Stack an iterable of ``(C, H, W)`` tensors into ``(B, C, H, W)`` batches."""
    batch: list[torch.Tensor] = []
    for img in images:
        batch.append(img)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


class ImageCalibrationReader:
    """Feeds preprocessed image batches to onnxruntime's calibrator.

    onnxruntime's ``CalibrationDataReader`` accepts any class with ``get_next`` (its
    ``__subclasshook__``), so this class needs no onnxruntime import to be defined.
    """

    def __init__(self, images: Iterable[torch.Tensor], preprocessing: dict[str, Any],
                 input_name: str = INPUT_NAME, batch_size: int = 8) -> None:
        self._batches = batches(images, batch_size)
        self.preprocessing = preprocessing
        self.input_name = input_name
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += batch.shape[0]
        return {self.input_name: preprocess(batch, self.preprocessing)}


def _flat_folder(path: Path) -> list[Path]:
    """The images of ``path`` when it is a folder without class sub-folders, else ``[]``."""
    from ..data.datasets import IMAGE_EXTENSIONS

    if not path.is_dir() or any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir()):
        return []
    return sorted(p for p in path.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _image_source(spec: str | os.PathLike, preprocessing: dict[str, Any],
                  holdout: dict[str, Any] | None) -> tuple[int, Callable[[int], torch.Tensor]]:
    """How many candidate images ``spec`` holds, and how to load the i-th as served."""
    from ..data.datasets import load_dataset, load_image, resize_center_crop, to_uint8_tensor

    channels, size = preprocessing["channels"], preprocessing["input_size"]
    files = _flat_folder(Path(spec))
    if files:  # a flat folder: every image is a calibration candidate
        return len(files), lambda i: to_uint8_tensor(resize_center_crop(load_image(files[i], channels), size))
    # the labels do not matter, so one class folder is enough
    ds = load_dataset(str(spec), "train", image_size=size, channels=channels, augment=False,
                      min_classes=1, holdout=holdout)
    if ds.channels != channels:  # IDX/CIFAR arrays are not converted like files
        raise MobilenetsError(f"calibration data {spec} has {ds.channels}-channel images but the model "
                              f"takes {channels}; calibrate on the data it was trained on")
    return len(ds), lambda i: ds[i][0]


def load_calibration_images(spec: str | os.PathLike, n: int, preprocessing: dict[str, Any],
                            seed: int = 0, holdout: dict[str, Any] | None = None) -> torch.Tensor:
    """``n`` images (uint8 ``(n, C, H, W)``) drawn at random from the training split of
    ``spec``, or from a flat folder of unlabelled images, centre-cropped as served.

    The training split, never the test split: calibration chooses quantization ranges,
    and choosing them on test images would leak the test set into the model. ``holdout``
    (a checkpoint's stored ``{"seed", "val_fraction"}``) leaves out the images its training
    held out for validation, so that they stay unseen too.
    """
    if n < 1:
        raise MobilenetsError(f"--calibration-size must be >= 1, got {n}")
    count, image = _image_source(spec, preprocessing, holdout)
    if count == 0:
        raise MobilenetsError(f"calibration data {spec} has no images")
    if count < n:
        warnings.warn(f"calibration uses all {count} images of {spec} (fewer than the {n} asked for)",
                      stacklevel=2)
    idx = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.stack([image(i) for i in idx])
