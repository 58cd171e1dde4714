"""Tiny datasets written by the tests: IDX files, CIFAR pickles and image folders."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn


def pattern_images(n: int, classes: int = 4, size: int = 28, seed: int = 0, channels: int = 1):
    """Images whose class is a bright square in one of ``classes`` positions, plus noise:
    learnable in a few steps, so tests can check that training lowers the loss."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    cell = size // 2
    for i, c in enumerate(labels):
        y, x = (c // 2) * cell, (c % 2) * cell
        images[i, y:y + cell, x:x + cell] = 200
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_dir(root: Path, n_train: int = 64, n_test: int = 32, classes: int = 4, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = pattern_images(n, classes, seed=seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images[..., 0], gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return root


def make_cifar10_dir(root: Path, n: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, seed in (("data_batch_1", 0), ("data_batch_2", 1), ("test_batch", 2)):
        images, labels = pattern_images(n, 4, size=32, seed=seed, channels=3)
        data = images.transpose(0, 3, 1, 2).reshape(n, -1)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels.tolist(), b"batch_label": b"x"}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"a", b"b", b"c", b"d"], b"num_vis": 3072}, f)
    return root


def make_cifar100_dir(root: Path, n: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, seed in (("train", 0), ("test", 1)):
        images, labels = pattern_images(n, 4, size=32, seed=seed, channels=3)
        with open(root / name, "wb") as f:
            pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                         "fine_labels": labels.tolist(), "coarse_labels": [0] * n}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": ["w", "x", "y", "z"]}, f)
    return root


def make_image_folder(root: Path, n_per_class: int = 6, size: int = 28, classes=("cat", "dog", "fox"),
                      splits: bool = False, modes=("L",)) -> Path:
    """root[/train|/val]/<class>/<i>.png with images in the given PIL modes, cycled."""
    from PIL import Image

    for split in (("train", "val") if splits else ("",)):
        for c_i, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            images, _ = pattern_images(n_per_class, len(classes), size=size, seed=c_i + 7, channels=3)
            for i in range(n_per_class):
                mode = modes[i % len(modes)]
                img = Image.fromarray(images[i])
                if mode == "I;16":
                    arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
                    img = Image.fromarray(arr)  # uint16 -> mode I;16
                else:
                    img = img.convert(mode)
                img.save(d / f"{i}.png")
    return root


def randomize_batchnorm(module: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, then eval mode:
    fresh BN layers are the identity in eval, which would hide folding/splitting bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return module.eval()
