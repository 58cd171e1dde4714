"""One Preprocessing type (issue 27 item 5, issue 31's absurd preprocessing): validation of
every field in one place, the on-disk dict round trip, and ``apply`` on any image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.data.augment import normalize
from mobilenets.data.images import resize_center_crop, to_uint8_tensor
from mobilenets.data.preprocessing import Preprocessing, as_preprocessing
from mobilenets.errors import MobilenetsError

PRE = {"input_size": 28, "channels": 1, "mean": [0.286], "std": [0.353]}
PRE_MOVE = Path(__file__).parent / "fixtures" / "pre_move"


def meta(**pre_changes) -> dict:
    return {"preprocessing": {**PRE, **pre_changes}, "classes": [f"c{i}" for i in range(3)]}


@pytest.mark.parametrize("changes,message", [
    ({"input_size": -5}, "input_size must be an integer in 8..1024, got -5"),
    ({"input_size": 16384}, "input_size must be an integer in 8..1024"),
    ({"input_size": 28.0}, "input_size must be an integer"),
    ({"input_size": True}, "input_size must be an integer"),
    ({"channels": 0}, "channels must be an integer in 1..4096, got 0"),
    ({"channels": "1"}, "channels must be an integer"),
    ({"mean": "x"}, "mean must be one finite number per channel"),
    ({"mean": [0.5, 0.5]}, "mean must be one finite number per channel (1)"),
    ({"mean": [float("nan")]}, "mean must be one finite number"),
    ({"mean": [10 ** 400]}, "mean must be one finite number"),
    ({"std": [0]}, "std non-zero"),
    ({"std": [1e-300]}, "std must be one finite number >= 0.001"),
    ({"std": [-0.5]}, "std must be one finite number >= 0.001"),
    ({"std": [float("nan")]}, "std must be one finite number"),
    ({"std": [float("inf")]}, "std must be one finite number"),
    ({"resize_size": 20}, "resize_size must be an integer in 28..2048"),
    ({"resize_size": "256"}, "resize_size must be an integer"),
    ({"interpolation": "lanczos9"}, "interpolation must be one of nearest, bilinear, bicubic"),
])
def test_each_field_is_validated(changes: dict, message: str) -> None:
    with pytest.raises(MobilenetsError, match=r"^f\.safetensors: metadata preprocessing .*" + _re(message)):
        Preprocessing.from_meta(meta(**changes), "f.safetensors")


def _re(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("bad,message", [
    ({"preprocessing": "/etc/passwd"}, "must be a mapping"),
    ({"preprocessing": {"input_size": 28}}, "mean must be one finite number per channel (3), got None"),
    ({}, "has no preprocessing metadata"),
    ({"preprocessing": PRE, "classes": "abc"}, "'classes' must be a list of names"),
    ({"preprocessing": PRE, "classes": ["a", 1]}, "'classes' must be a list of names"),
    ({"preprocessing": PRE, "classes": ["a", "b", "a"]}, "names 'a' twice"),
])
def test_the_record_and_classes_are_validated(bad: dict, message: str) -> None:
    with pytest.raises(MobilenetsError, match=_re(message)):
        Preprocessing.from_meta(bad, "f")


def test_channels_are_checked_against_the_model() -> None:
    with pytest.raises(MobilenetsError, match="says 1 input channels, the model has 3"):
        Preprocessing.from_meta(meta(), "f", channels=3)
    converted = {"preprocessing": {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}}
    assert Preprocessing.from_meta(converted, "f", channels=3).channels == 3  # none stored: the model's


def test_constructing_one_validates_it_too() -> None:
    with pytest.raises(MobilenetsError, match="std non-zero"):
        Preprocessing(28, 1, [0.5], [1e-300])
    p = Preprocessing(28, 1, [0], [1])
    assert p.mean == (0.0,) and p.std == (1.0,) and p.resize_size is None


@pytest.mark.parametrize("record", [
    PRE,
    {"input_size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "resize_size": 256, "interpolation": "bicubic"},
    {"input_size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "nearest"},
])
def test_to_meta_writes_back_what_from_meta_read(record: dict) -> None:
    m = {"preprocessing": record, "classes": ["a", "b"]}
    p = Preprocessing.from_meta(m, "f")
    assert p.to_meta() == m and Preprocessing.from_meta(json.loads(json.dumps(p.to_meta())), "f") == p
    assert Preprocessing.from_meta({"preprocessing": record}, "f").to_meta() == {"preprocessing": record}
    assert as_preprocessing(record) == Preprocessing.from_meta({"preprocessing": record}, "f")


def test_pre_move_checkpoints_metadata_reads_and_keeps_its_record() -> None:
    expected = json.loads((PRE_MOVE / "expected.json").read_text())
    for name, entry in expected.items():
        p = Preprocessing.from_meta(entry["meta"], name)
        stored = dict(entry["meta"]["preprocessing"])
        stored.pop("resize")  # a sentence describing the transform, not a setting
        assert p.record() == stored and p.classes == tuple(entry["meta"]["classes"])


def test_apply_keeps_todays_outputs_for_images_at_size() -> None:
    p = Preprocessing.from_meta(meta(), "f")
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p.apply(images), normalize(images, [0.286], [0.353]))
    assert torch.equal(p.apply(images.numpy()), p.apply(images))
    assert torch.equal(p.apply(images[0]), p.apply(images[:1]))  # (C, H, W) is one image
    as_float = p.apply(images.float() / 255)
    torch.testing.assert_close(as_float, p.apply(images), rtol=0, atol=1e-5)


def _photo(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("size,mode", [((37, 91), "RGB"), ((300, 7), "L"), ((50, 50), "RGBA"),
                                       ((64, 33), "P"), ((29, 28), "I;16")])
def test_apply_on_odd_sizes_and_modes(size: tuple[int, int], mode: str) -> None:
    p = Preprocessing(28, 1, [0.5], [0.25])
    img = _photo(*size, mode=mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)
    x = p.apply([img])
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.min() >= -2 - 1e-6 and x.max() <= 2 + 1e-6  # (0 - 0.5) / 0.25 .. (1 - 0.5) / 0.25
    rgb = Preprocessing(28, 3, [0.5] * 3, [0.25] * 3).apply([img, _photo(28, 40)])
    assert rgb.shape == (2, 3, 28, 28)


def test_apply_without_resize_size_is_todays_predict_transform() -> None:
    """The central square resized to input_size (bilinear): what `predict` always did."""
    p = Preprocessing(28, 3, [0.5] * 3, [0.25] * 3)
    img = _photo(70, 45)
    today = normalize(to_uint8_tensor(resize_center_crop(img, 28))[None], p.mean, p.std)
    assert torch.equal(p.apply([img]), today)
    # uint8 arrays at another size go through the same Pillow path as files
    arr = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert torch.equal(p.apply(arr[None]), today)


def test_resize_size_resizes_the_shorter_side_then_crops() -> None:
    """resize_size 256 / input_size 224 (the published transform): the crop keeps 224/256 of
    the shorter side, as torchvision's Resize(256) + CenterCrop(224) does (here with Pillow)."""
    p = Preprocessing(224, 3, [0.0] * 3, [1.0] * 3, resize_size=256, interpolation="bicubic")
    img = _photo(400, 300).filter(_blur())
    ours = p.apply([img])[0]
    resized = img.resize((341, 256), Image.BICUBIC)  # shorter side 300 -> 256, 400 -> int(400 * 256 / 300)
    left, top = round((341 - 224) / 2), round((256 - 224) / 2)
    ref = to_uint8_tensor(resized.crop((left, top, left + 224, top + 224))).float() / 255
    assert ours.shape == ref.shape == (3, 224, 224)
    # Same region and filter; Pillow's box resize differs from resize-then-crop only by rounding.
    err = (ours - ref).abs().mean()
    assert err < 0.01
    plain = Preprocessing(224, 3, [0.0] * 3, [1.0] * 3, interpolation="bicubic").apply([img])[0]
    assert (plain - ref).abs().mean() > 3 * err  # without resize_size the crop is another region


def _blur():
    from PIL import ImageFilter

    return ImageFilter.GaussianBlur(3)  # smooth pixels, so a sub-pixel shift is a small difference


def test_apply_float_images_of_another_size() -> None:
    p = Preprocessing(28, 1, [0.5], [0.25])
    x = p.apply(torch.full((2, 1, 40, 60), 0.75))
    torch.testing.assert_close(x, torch.ones(2, 1, 28, 28))  # (0.75 - 0.5) / 0.25 everywhere


def test_apply_refuses_what_it_cannot_read() -> None:
    p = Preprocessing(28, 1, [0.5], [0.25])
    with pytest.raises(MobilenetsError, match=r"images must be \(N, 1, H, W\), got \(2, 3, 28, 28\)"):
        p.apply(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(MobilenetsError, match="uint8 pixels"):
        p.apply(torch.zeros(2, 1, 28, 28, dtype=torch.int64))
    with pytest.raises(MobilenetsError, match="no images"):
        p.apply([])


def test_predict_applies_the_published_resize(tmp_path: Path) -> None:
    """``predict`` feeds the model exactly ``apply``'s batch: with ``resize_size`` the
    published transform (docs/weights.md), not the central square."""
    from mobilenets.deploy.predict import predict_images

    path = tmp_path / "wide.png"
    _photo(90, 60).save(path)
    p = Preprocessing(32, 3, [0.5] * 3, [0.25] * 3, resize_size=40, interpolation="bicubic",
                      classes=("a", "b"))
    seen: list[torch.Tensor] = []

    def logits(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return torch.tensor([[0.0, 1.0]])

    top = predict_images(logits, p, [path], top_k=1)[0].top
    assert top[0][0] == "b" and torch.equal(seen[0], p.apply([Image.open(path)]))
    square = Preprocessing(32, 3, [0.5] * 3, [0.25] * 3, interpolation="bicubic")
    assert not torch.equal(seen[0], square.apply([Image.open(path)]))
