"""Datasets and images: IDX (``idx``), CIFAR (``cifar``), image folders (``folders``), image
decoding (``images``), the in-memory dataset (``tensor_images``), batch augmentation (``augment``);
``datasets`` detects the format and splits."""

from .datasets import load_dataset
from .folders import load_image_folder
from .images import load_image

__all__ = ["load_dataset", "load_image", "load_image_folder"]
