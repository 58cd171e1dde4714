"""Classify image files with a checkpoint, using the preprocessing stored in it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..data.augment import normalize
from ..data.datasets import load_image, resize_center_crop, to_uint8_tensor
from ..errors import MobilenetsError


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), best first

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


def preprocess_images(paths: list[str | os.PathLike], preprocessing: dict[str, Any]) -> torch.Tensor:
    """Any image file, size or mode → the normalised ``(N, C, S, S)`` batch the model expects."""
    try:
        size, channels = int(preprocessing["input_size"]), int(preprocessing["channels"])
        mean, std = preprocessing["mean"], preprocessing["std"]
    except (KeyError, TypeError, ValueError) as e:
        raise MobilenetsError(f"checkpoint preprocessing metadata is incomplete: {e}") from e
    batch = [to_uint8_tensor(resize_center_crop(load_image(p, channels), size)) for p in paths]
    return normalize(torch.stack(batch), mean, std)


def classes_of(meta: dict[str, Any], num_classes: int) -> list[str]:
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) != num_classes:
        return [str(i) for i in range(num_classes)]
    return [str(c) for c in classes]


@torch.no_grad()
def predict_files(model: torch.nn.Module, meta: dict[str, Any], paths: list[str | os.PathLike],
                  top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
    """Top-k classes with probabilities for each image file, ``batch_size`` files at a time."""
    model.eval()
    return predict_with(model, meta, paths, top_k, batch_size)


def predict_with(logits_fn: Callable[[torch.Tensor], torch.Tensor], meta: dict[str, Any],
                 paths: list[str | os.PathLike], top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
    """Like :func:`predict_files` for any function from a preprocessed batch to logits
    (an exported ONNX/TorchScript artifact, for instance)."""
    if not paths:
        raise MobilenetsError("no images given")
    preprocessing = meta.get("preprocessing")
    if not isinstance(preprocessing, dict):
        raise MobilenetsError("the checkpoint has no preprocessing metadata (input size, mean, std)")
    # Converted checkpoints store no channel count: their model's input channels decide.
    in_chans = (meta.get("model_kwargs") or {}).get("in_chans", 3)
    preprocessing = {"channels": in_chans, **preprocessing}
    if top_k < 1:
        raise MobilenetsError(f"top_k must be >= 1, got {top_k}")
    if (meta.get("model_kwargs") or {}).get("num_classes") == 0:
        raise MobilenetsError("this model has no classifier (num_classes=0): it outputs features, not "
                              "classes; give it one with reset_classifier(N) and train it")
    out: list[Prediction] = []
    for start in range(0, len(paths), batch_size):  # memory bounded by the batch, not the file count
        chunk = paths[start:start + batch_size]
        with torch.no_grad():
            probs = torch.as_tensor(logits_fn(preprocess_images(chunk, preprocessing))).float().softmax(dim=1)
        classes = classes_of(meta, probs.shape[1])
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        out += [Prediction(str(p), [(classes[int(i)], float(v)) for v, i in zip(vs, ix)])
                for p, vs, ix in zip(chunk, values, indices)]
    return out
