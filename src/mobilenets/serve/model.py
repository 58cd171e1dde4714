"""What the server serves: one model, loaded once, as a function from image bytes to classes.

:func:`load_served` reads a checkpoint (``load_model``), an exported artifact (the artifact
loader, with its own safety checks) or published weights (``--pretrained``), and wraps each in
the same :class:`ServedModel`. The artifact branch is one function, :func:`_from_artifact`, so
that moving to ``mobilenets.io.artifact.load`` (a ``.predict`` interface) changes it alone.
Uploaded images are decoded and preprocessed exactly as ``mobilenets predict`` does
(:meth:`mobilenets.data.preprocessing.Preprocessing.apply`), behind Pillow's decompression-bomb limit.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import load_image
from ..data.preprocessing import Preprocessing
from ..deploy.predict import classes_of
from ..errors import MobilenetsError

#: The metadata keys ``GET /v1/model`` shows besides the computed ones.
_CARD_KEYS = ("model", "model_kwargs", "preprocessing", "format", "int8", "recipe", "epoch")


class BadImage(MobilenetsError):
    """An upload that is not a usable image; ``status`` is the HTTP code it earns."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServedModel:
    """A loaded model: ``logits`` maps a preprocessed ``(N, C, S, S)`` float batch to logits."""

    name: str
    backend: str
    meta: dict[str, Any]
    logits: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    source: str = ""
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The checkpoint's preprocessing, with the channel count ``predict`` would use."""
        prep = dict(self.meta.get("preprocessing") or {})
        prep.setdefault("channels", (self.meta.get("model_kwargs") or {}).get("in_chans", 3))
        return prep

    @functools.cached_property
    def validated_preprocessing(self) -> Preprocessing:
        """:attr:`preprocessing` as the one :class:`Preprocessing` type, checked once."""
        return Preprocessing.from_meta({"preprocessing": self.preprocessing}, self.name)

    @property
    def num_classes(self) -> int:
        return int(self.card.get("num_classes") or len(self.meta.get("classes") or []))

    def preprocess(self, data: bytes) -> torch.Tensor:
        """One upload → its ``(C, S, S)`` input, or :class:`BadImage` (400, or 413 for a bomb)."""
        check_image_bytes(data)
        try:
            pre = self.validated_preprocessing
            return pre.apply([load_image(io.BytesIO(data), pre.channels)])[0]
        except MobilenetsError as e:
            cause = e.__cause__
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
            why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", why)
            raise BadImage(f"not a readable image ({why[:300]})") from e

    def predict(self, batch: torch.Tensor, top_k: int) -> list[list[dict[str, Any]]]:
        """Top-k ``{"class", "probability"}`` lists for each image of a preprocessed batch."""
        with torch.inference_mode():
            probs = torch.as_tensor(self.logits(batch)).float().softmax(dim=1)
        classes = classes_of(self.meta.get("classes"), probs.shape[1])
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [[{"class": classes[int(i)], "probability": float(v)} for v, i in zip(vs, ix)]
                for vs, ix in zip(values, indices)]


def check_image_bytes(data: bytes) -> None:
    """Refuse an empty upload, and a decompression bomb before any pixel is decoded: Pillow
    reads only the header here, and any image over its ``MAX_IMAGE_PIXELS`` is refused (Pillow
    itself only warns between one and two times that limit)."""
    import warnings

    from PIL import Image

    if not data:
        raise BadImage("empty body: send an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError as e:
        raise BadImage(f"image refused as a decompression bomb ({e})", 413) from e
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the full decode
        return
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise BadImage(f"image refused as a decompression bomb: {width}x{height} = "
                       f"{width * height:,} pixels, over Pillow's limit of {limit:,}", 413)


def load_served(source: str | os.PathLike | None, *, pretrained: str | None = None,
                trust_code: bool = False, backend: str = "auto") -> ServedModel:
    """The model ``mobilenets serve`` serves: ``--pretrained TAG``, a checkpoint (or run
    directory), or an exported ``.onnx``/``.pt2``/``.pt`` file."""
    if pretrained:
        if source is not None:
            raise MobilenetsError(f"give either {source} or --pretrained {pretrained}, not both")
        return _from_pretrained(pretrained)
    if source is None:
        raise MobilenetsError("give a checkpoint (or exported model), or --pretrained TAG")
    path = Path(source)
    if not path.exists():
        raise MobilenetsError(f"model not found: {path}")
    from ..io.artifact import artifact_kind, check_runner

    kind = artifact_kind(path)
    check_runner(path, kind, backend)
    if kind == "checkpoint":
        from ..io.checkpoint import load_model

        model, meta = load_model(path)
        return _from_module(model, meta, str(path))
    return _from_artifact(path, trust_code)


def _from_module(model: torch.nn.Module, meta: dict[str, Any], source: str) -> ServedModel:
    """A PyTorch model on ``bench``'s ``channels_last`` path: BatchNorm folded, NHWC, no
    gradients (about 1.7x eager at batch 1 and 2x at batch 32 on 2 cores, docs/performance.md)."""
    from ..deploy.fold import prepare_for_inference

    model.eval()
    fast = prepare_for_inference(model).to(memory_format=torch.channels_last)

    def logits(batch: torch.Tensor) -> torch.Tensor:
        return fast(batch.contiguous(memory_format=torch.channels_last))

    served = ServedModel(str(meta.get("model", type(model).__name__)), "torch", meta, logits, source)
    served.card = model_card(meta, model)
    return served


def _from_pretrained(spec: str) -> ServedModel:
    from ..cli.weights import pretrained_checkpoint

    model, meta = pretrained_checkpoint(spec)
    return _from_module(model, meta, spec)


def _from_artifact(path: Path, trust_code: bool) -> ServedModel:
    """An exported file through the one artifact loader (:mod:`mobilenets.io.artifact`)."""
    from ..io.artifact import load_artifact, runner_of

    artifact = load_artifact(path, trust_code=trust_code)

    def logits(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(artifact(batch.numpy())))

    backend = runner_of(artifact.format)
    meta = {**artifact.meta, "format": artifact.format}
    served = ServedModel(str(meta.get("model", path.stem)), backend, meta, logits, str(path))
    served.card = model_card(meta, None)
    return served


def model_card(meta: dict[str, Any], model: torch.nn.Module | None) -> dict[str, Any]:
    """What ``GET /v1/model`` and the page's panel show: variant, width, resolution, params,
    MAdds (counted on a meta-device copy when the file is not a PyTorch module) and accuracy."""
    card: dict[str, Any] = {k: meta[k] for k in _CARD_KEYS if k in meta}
    kwargs = meta.get("model_kwargs") or {}
    card["width_mult"] = kwargs.get("width_mult", 1.0)
    card["resolution"] = (meta.get("preprocessing") or {}).get("input_size")
    card.update(_size_of(meta, model))
    card["accuracy"] = _accuracy(meta)
    return card


def _size_of(meta: dict[str, Any], model: torch.nn.Module | None) -> dict[str, Any]:
    """Params and MAdds as ``mobilenets models`` counts them; an artifact's network is rebuilt
    from its metadata (random weights: only its shape matters) to count them."""
    from ..analysis.profile import profile
    from ..models.registry import create_model

    size = int((meta.get("preprocessing") or {}).get("input_size") or 224)
    try:
        built = model if model is not None else create_model(meta["model"], **(meta.get("model_kwargs") or {}))
        counted = profile(built, size)
    except Exception:  # noqa: BLE001 - a foreign artifact: no card figures, still servable
        return {}
    return {"params": counted.params, "madds": counted.madds,
            "num_classes": getattr(built, "num_classes", None)}


def _accuracy(meta: dict[str, Any]) -> dict[str, Any] | None:
    """Published top-1 for ``--pretrained`` weights, else the checkpoint's measured val top-1."""
    tag = (meta.get("pretrained") or {}).get("tag") if isinstance(meta.get("pretrained"), dict) else None
    if tag:
        from ..io.weights import find_weights

        entry = find_weights(tag)
        return {"top1": entry.top1, "source": f"published ({entry.tag}, ImageNet)"}
    if isinstance(meta.get("val_acc"), (int, float)):
        return {"top1": round(100 * float(meta["val_acc"]), 2), "source": "measured (validation split)"}
    return None
