"""Classify images with any model: preprocess as the model's :class:`Preprocessing` says,
run, softmax, top-k. :meth:`mobilenets.io.artifact.Artifact.predict` is the usual way in."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.images import load_image
from ..data.preprocessing import Preprocessing
from ..errors import MobilenetsError


@dataclass
class Prediction:
    path: str  # the image file, or "image N" for in-memory images
    top: list[tuple[str, float]]  # (class name, probability), best first

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


def classes_of(classes: Sequence[str] | None, num_classes: int) -> list[str]:
    """The output names: the stored classes, or the output indices where there are none."""
    if classes is None or len(classes) != num_classes:
        return [str(i) for i in range(num_classes)]
    return [str(c) for c in classes]


def _chunks(preprocessing: Preprocessing, images: Any,
            batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(names, preprocessed batch) ``batch_size`` images at a time: memory is bounded by the
    batch, not by the number of files."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        batch = torch.as_tensor(images)
        batch = batch.unsqueeze(0) if batch.dim() == 3 else batch
        for start in range(0, len(batch), batch_size):
            chunk = batch[start:start + batch_size]
            yield [f"image {start + i}" for i in range(len(chunk))], preprocessing.apply(chunk)
        return
    items = list(images)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        names = [str(p) if isinstance(p, (str, os.PathLike)) else f"image {start + i}"
                 for i, p in enumerate(chunk)]
        pil = [load_image(p, preprocessing.channels) if isinstance(p, (str, os.PathLike)) else p
               for p in chunk]
        yield names, preprocessing.apply(pil)


def _check_request(images: Any, top_k: int, meta: dict[str, Any] | None) -> None:
    if len(images) == 0:
        raise MobilenetsError("no images given")
    if top_k < 1:
        raise MobilenetsError(f"top_k must be >= 1, got {top_k}")
    if ((meta or {}).get("model_kwargs") or {}).get("num_classes") == 0:
        raise MobilenetsError("this model has no classifier (num_classes=0): it outputs features, not "
                              "classes; give it one with reset_classifier(N) and train it")


@torch.no_grad()
def predict_images(logits_fn: Callable[[Any], Any], preprocessing: Preprocessing, images: Any,
                   top_k: int = 5, batch_size: int = 64, *,
                   meta: dict[str, Any] | None = None) -> list[Prediction]:
    """Top-k classes with probabilities for each image (file paths, PIL images, or a uint8/
    float ``(N, C, H, W)`` batch), for any function from a preprocessed batch to logits."""
    _check_request(images, top_k, meta)
    out: list[Prediction] = []
    for names, x in _chunks(preprocessing, images, batch_size):
        probs = torch.as_tensor(logits_fn(x)).float().softmax(dim=1)
        classes = classes_of(preprocessing.classes, probs.shape[1])
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        out += [Prediction(n, [(classes[int(i)], float(v)) for v, i in zip(vs, ix)])
                for n, vs, ix in zip(names, values, indices)]
    return out


def _meta_preprocessing(meta: dict[str, Any]) -> Preprocessing:
    """A checkpoint's preprocessing; converted checkpoints store no channel count, and their
    model's input channels decide."""
    in_chans = (meta.get("model_kwargs") or {}).get("in_chans", 3)
    return Preprocessing.from_meta(meta, "the checkpoint", channels=in_chans if isinstance(in_chans, int) else None)


def predict_with(logits_fn: Callable[[torch.Tensor], Any], meta: dict[str, Any],
                 paths: list[str | os.PathLike], top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
    """:func:`predict_images` on image files, with the preprocessing and classes of ``meta``
    (a checkpoint's metadata)."""
    if not paths:
        raise MobilenetsError("no images given")
    return predict_images(logits_fn, _meta_preprocessing(meta), paths, top_k, batch_size, meta=meta)


@torch.no_grad()
def predict_files(model: torch.nn.Module, meta: dict[str, Any], paths: list[str | os.PathLike],
                  top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
    """Top-k classes with probabilities for each image file, ``batch_size`` files at a time."""
    model.eval()
    return predict_with(model, meta, paths, top_k, batch_size)
