"""What a model's input is: one :class:`Preprocessing` value, validated in one place.

Checkpoints, ONNX files and sidecars store it as a plain dict under ``meta["preprocessing"]``
(``input_size``, ``channels``, ``mean``, ``std``; published weights add ``resize_size`` and
``interpolation``) with the class names beside it in ``meta["classes"]``. That dict comes
from files anyone may have written, so :meth:`Preprocessing.from_meta` is the one gate every
loader goes through, and :meth:`Preprocessing.to_meta` writes the same dict back, so files
written before this type existed load unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MobilenetsError
from .augment import normalize
from .images import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, convert_mode, resize_center_crop, to_uint8_tensor

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: Largest channel count (as for the models' ``in_chans``).
MAX_CHANNELS = 4096
#: Smallest std: a std of 1e-300 passes "non-zero" and turns pixel noise into inputs of 1e300.
MIN_STD = 1e-3
#: How the image is resized (Pillow's filters; torch's modes for float tensors).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
#: The informational key trained checkpoints carry (a sentence, not a setting).
_DESCRIPTION_KEY = "resize"


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters: metadata values can be arbitrarily long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_finite(value: Any) -> bool:
    """A finite int or float, not a bool (JSON ints can exceed any float: 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 1e300 if isinstance(value, int) else math.isfinite(value)


def check_classes(classes: Any, source: str | os.PathLike) -> tuple[str, ...] | None:
    """Class names from a file: ``None`` or a list of distinct strings (a duplicate makes two
    outputs indistinguishable in every report)."""
    if classes is None:
        return None
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise MobilenetsError(f"{source}: metadata 'classes' must be a list of names, got {_short(classes)}")
    if len(set(classes)) != len(classes):
        dup = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise MobilenetsError(f"{source}: metadata 'classes' names {_short(dup)} twice; class names "
                              "must be distinct")
    return tuple(classes)


def _problem(p: Preprocessing) -> str | None:
    """What is wrong with ``p``'s fields, or ``None``: checked in the order they are read."""
    if not _is_int(p.input_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE):
        return f"input_size must be an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {_short(p.input_size)}"
    if not _is_int(p.channels, 1, MAX_CHANNELS):
        return f"channels must be an integer in 1..{MAX_CHANNELS}, got {_short(p.channels)}"
    for key, values in (("mean", p.mean), ("std", p.std)):
        ok = isinstance(values, (list, tuple)) and len(values) == p.channels \
            and all(_is_finite(v) for v in values)
        if key == "std" and ok and not all(v >= MIN_STD for v in values):
            return f"std must be one finite number >= {MIN_STD:g} per channel (std non-zero), got {_short(values)}"
        if not ok:
            return f"{key} must be one finite number per channel ({p.channels}), got {_short(values)}"
    if p.resize_size is not None and not _is_int(p.resize_size, p.input_size, 2 * MAX_IMAGE_SIZE):
        return (f"resize_size must be an integer in {p.input_size}..{2 * MAX_IMAGE_SIZE} (at least "
                f"input_size: the crop is taken from the resized image), got {_short(p.resize_size)}")
    if p.interpolation not in INTERPOLATIONS:
        return f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {_short(p.interpolation)}"
    return None


@dataclass(frozen=True)
class Preprocessing:
    """How images become a model's input: shorter side to ``resize_size`` (or, without it, the
    central square), centre crop ``input_size``, pixels to [0, 1], ``(x - mean) / std`` per
    channel; ``classes`` names the outputs. Constructing one validates it."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int | None = None
    interpolation: str = "bilinear"
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise MobilenetsError(f"preprocessing {problem}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "classes", check_classes(self.classes, "preprocessing"))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str | os.PathLike, *,
                  channels: int | None = None) -> Preprocessing:
        """The preprocessing and classes of a file's metadata, or one clear error naming
        ``source``. ``channels``: the model's input channels, where known; converted
        checkpoints store none and take the model's."""
        pre = meta.get("preprocessing") if isinstance(meta, Mapping) else None
        if pre is None:
            raise MobilenetsError(f"{source} has no preprocessing metadata (input size, mean, std); "
                                  "re-save it with save_model(..., preprocessing={'input_size': ..., "
                                  "'mean': [...], 'std': [...]})")
        if not isinstance(pre, Mapping):
            raise MobilenetsError(f"{source}: metadata preprocessing must be a mapping, got {_short(pre)}")
        classes = check_classes(meta.get("classes"), source)
        stored = pre.get("channels", channels if channels is not None else 3)
        try:  # a missing field is named as a wrong one (``got None``), in the order they are checked
            made = cls(pre.get("input_size"), stored, _seq(pre.get("mean")), _seq(pre.get("std")),
                       pre.get("resize_size"), pre.get("interpolation", "bilinear"), classes)
        except MobilenetsError as e:
            raise MobilenetsError(f"{source}: metadata {e}") from e
        if channels is not None and made.channels != channels:
            raise MobilenetsError(f"{source}: preprocessing says {made.channels} input channels, the "
                                  f"model has {channels}; the metadata does not fit the weights")
        return made

    def record(self) -> dict[str, Any]:
        """The ``meta["preprocessing"]`` dict, as files have always stored it."""
        out: dict[str, Any] = {"input_size": self.input_size, "channels": self.channels,
                               "mean": list(self.mean), "std": list(self.std)}
        if self.resize_size is not None:
            out["resize_size"] = self.resize_size
        if self.resize_size is not None or self.interpolation != "bilinear":
            out["interpolation"] = self.interpolation
        return out

    def to_meta(self) -> dict[str, Any]:
        """``{"preprocessing": ..., "classes": ...}`` to merge into a file's metadata
        (``classes`` only when known)."""
        out: dict[str, Any] = {"preprocessing": self.record()}
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    @property
    def crop_fraction(self) -> float:
        """The share of the shorter side the crop keeps (1: the central square)."""
        return 1.0 if self.resize_size is None else self.input_size / self.resize_size

    def apply(self, images: torch.Tensor | np.ndarray | Sequence[PILImage]) -> torch.Tensor:
        """Images → the normalized float32 ``(N, C, input_size, input_size)`` batch.

        ``images``: PIL images of any size and mode, or a ``(N, C, H, W)`` (or ``(C, H, W)``)
        uint8 array/tensor in [0, 255] or float one in [0, 1]. Images already at
        ``input_size`` are only normalized; others are cropped and resized as the class
        docstring says (uint8 pixels through Pillow, exactly as image files are).
        """
        if isinstance(images, (torch.Tensor, np.ndarray)):
            return self._apply_array(torch.as_tensor(images))
        batch = [to_uint8_tensor(self._resize_pil(convert_mode(img, self.channels))) for img in images]
        if not batch:
            raise MobilenetsError("no images given")
        return normalize(torch.stack(batch), self.mean, self.std)

    def _resize_pil(self, img: PILImage) -> PILImage:
        return resize_center_crop(img, self.input_size, self.crop_fraction, self.interpolation)

    def _apply_array(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise MobilenetsError(f"images must be (N, {self.channels}, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            if x.shape[-2:] != (self.input_size, self.input_size):
                return self.apply([_to_pil(img) for img in x])
            return normalize(x, self.mean, self.std)
        if not x.is_floating_point():
            raise MobilenetsError(f"images must be uint8 pixels (0-255) or floats in [0, 1], got {x.dtype}")
        x = x.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = _resize_float(x, self.input_size, self.crop_fraction, self.interpolation)
        m = torch.tensor(self.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - m) / s


def _seq(value: Any) -> Any:
    """A JSON list as a tuple; anything else as it is, for the validator to name."""
    return tuple(value) if isinstance(value, list) else value


def _to_pil(image: torch.Tensor) -> PILImage:
    from PIL import Image

    arr = image.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _resize_float(x: torch.Tensor, size: int, fraction: float, interpolation: str) -> torch.Tensor:
    """Float images: the centred crop of ``fraction`` of the shorter side, resized (with
    antialiasing where torch has it) to ``size``×``size``."""
    h, w = x.shape[-2:]
    side = max(1, round(min(h, w) * fraction))
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    if interpolation == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=True)


def as_preprocessing(value: Preprocessing | Mapping[str, Any], source: str = "preprocessing") -> Preprocessing:
    """A :class:`Preprocessing` from itself or from the dict files store (for callers that
    still hold the dict)."""
    if isinstance(value, Preprocessing):
        return value
    return Preprocessing.from_meta({"preprocessing": value}, source)
