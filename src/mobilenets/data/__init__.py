"""Datasets, image folders, image decoding and batch augmentation."""

from .datasets import load_dataset, load_image, load_image_folder

__all__ = ["load_dataset", "load_image", "load_image_folder"]
