"""One image file to the pixels a network is given: decoding, resizing, uint8 tensors.

Conversion rules of :func:`load_image` (image folders and ``mobilenets predict``):

* EXIF orientation is applied first (a phone photo is classified the way it is viewed);
* 16-bit grayscale (``I;16``, and the ``I`` mode in which Pillow opens 16-bit PGM and some
  16-bit PNGs) keeps its top 8 bits (>> 8), like every 16-bit image viewer; other 32-bit
  integer images (TIFF) keep values up to 255 and are scaled by their maximum above; float
  images (``F``) are read as [0, 1] when their values lie there (scientific TIFFs), else as
  [0, 255], clipped;
* palette (``P``) and other modes are converted to RGB (or L for 1-channel models);
* transparent images (``RGBA``, ``LA``, palette or colour-key transparency) are
  composited on white;
* 1-channel models receive luminance (``L``), 3-channel models RGB (grayscale repeated).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import MobilenetsError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
#: Smallest side the networks are given: below it, the strided layers leave nothing.
MIN_IMAGE_SIZE = 8
#: Largest: four times the papers' biggest input (224); far beyond it a typo (2240 for 224)
#: would only end in an out-of-memory kill.
MAX_IMAGE_SIZE = 1024
#: The advice ``load_image`` ends its errors with; a folder-level report gives its own.
REPLACE_HINT = "; remove or replace the file"


def load_image(path: str | os.PathLike, channels: int) -> PILImage:
    """Open any image and convert it to ``L`` (channels=1) or ``RGB`` as the module
    docstring lays out."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
        source_format = img.format
        ImageOps.exif_transpose(img, in_place=True)
        return convert_mode(img, channels, source_format)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MobilenetsError(f"cannot read image {path}: {e}{REPLACE_HINT}") from e
    except Exception as e:  # noqa: BLE001 - decoders of corrupt files raise many types (struct.error,
        # IndexError, DecompressionBombError, ...): all mean "not a usable image"
        raise MobilenetsError(f"cannot read image {path}: {type(e).__name__}: {e}{REPLACE_HINT}") from e


def convert_mode(img: PILImage, channels: int, source_format: str | None = None) -> PILImage:
    """A loaded PIL image in ``L`` or ``RGB``, following the rules in the module docstring."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = _integer_to_l(img, source_format)
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if arr.size and arr.min() >= 0 and arr.max() <= 1:
            arr = arr * 255
        img = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def _integer_to_l(img: PILImage, source_format: str | None) -> PILImage:
    """16- and 32-bit integer images to 8 bits: 16-bit data keeps its top byte, true
    32-bit data is scaled by its maximum above 255."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.int64)
    hi = int(arr.max()) if arr.size else 0
    # Pillow opens 16-bit PGM and some 16-bit PNGs as 32-bit "I": those are 16-bit data.
    sixteen = img.mode != "I" or source_format in ("PNG", "PPM")
    if sixteen and hi <= 65535:
        arr = arr >> 8
    elif hi > 255:
        arr = arr * 255 // hi
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")


def resize_center_crop(img: PILImage, size: int, fraction: float = 1.0,
                       interpolation: str = "bilinear") -> PILImage:
    """The centred square of side ``fraction`` × the shorter side, resized to ``size``×``size``.

    ``fraction`` 1 is the central square (shorter side to ``size``, then a central crop);
    ``input_size / resize_size`` is the published evaluation transform (shorter side to
    ``resize_size``, centre crop ``input_size``). The crop comes first (Pillow's resize
    ``box``), so a 1×30000 image costs no more memory than a square.
    """
    from PIL import Image

    w, h = img.size
    side = min(w, h) if fraction == 1.0 else min(w, h) * fraction
    left, top = (w - side) / 2, (h - side) / 2
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    return img.resize((size, size), resample, box=(left, top, left + side, top + side))


def to_uint8_tensor(img: PILImage) -> torch.Tensor:
    """A PIL image as the uint8 ``(C, H, W)`` tensor every dataset yields."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def check_image_size(size: int) -> None:
    """Refuse a side outside [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE] before any image is resized."""
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise MobilenetsError(f"image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] px, got {size}")
