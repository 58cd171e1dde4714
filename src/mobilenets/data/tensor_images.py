"""The in-memory dataset (IDX, CIFAR and small-image folders) and the checks on its labels.

Small datasets live in memory as one uint8 tensor, so that a batch is one indexing
operation; normalisation and augmentation then run on whole batches
(:mod:`mobilenets.data.augment`), much faster on a CPU than per-image transforms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import MobilenetsError
from .images import resize_center_crop, to_uint8_tensor

#: More classes than any real dataset: a corrupt label file must not make us build a list
#: of billions of class names.
MAX_CLASSES = 100_000


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

    def subset(self, idx: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[idx], self.labels[idx], self.classes, self.source, self.kind)

    def resized(self, size: int) -> TensorImages:
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


def check_labels(labels: np.ndarray, source: Path) -> None:
    """Class indices read from a file must be plausible before any list is sized by them."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= MAX_CLASSES):
        raise MobilenetsError(f"{source}: labels must be in 0..{MAX_CLASSES - 1}, found "
                              f"{int(labels.min())}..{int(labels.max())} (corrupt file?)")


def check_known(n_classes: int, classes: list[str] | None, source: Path) -> None:
    """IDX and CIFAR labels are bare class indices: nothing tells a subset of a model's
    classes from another dataset, so with the model's ``classes`` the counts must agree."""
    if classes is not None and n_classes != len(classes):
        raise MobilenetsError(f"the model was trained on {len(classes)} classes, {source} has {n_classes}")
