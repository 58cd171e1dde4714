"""Loaders (IDX, CIFAR, image folders), image conversion and batch augmentation."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import make_cifar10_dir, make_cifar100_dir, make_idx_dir, make_image_folder, write_idx
from mobilenets import MobilenetsError
from mobilenets.data.augment import normalize, random_crop_flip, random_erasing
from mobilenets.data.datasets import TensorImages, load_dataset, load_image, read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dir_loads_both_splits(tmp_path, gz):
    root = make_idx_dir(tmp_path / "fm", n_train=12, n_test=8, gz=gz)
    train, test = load_dataset(str(root), "train"), load_dataset(str(root), "test")
    assert isinstance(train, TensorImages)
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 8 and train.classes == ["0", "1", "2", "3"]
    img, label = train[0]
    assert img.shape == (1, 28, 28) and 0 <= label < 4


def test_fashion_mnist_directory_names_its_classes(tmp_path):
    root = make_idx_dir(tmp_path / "fashion-mnist", n_train=10, n_test=10)
    assert load_dataset(str(root), "train").classes[0] == "T-shirt/top"


def test_idx_truncated_or_wrong_magic_is_a_clear_error(tmp_path):
    arr = np.zeros((3, 4, 4), np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(MobilenetsError, match="truncated or corrupt"):
        read_idx(path)
    (tmp_path / "y").write_bytes(b"\x01\x02\x03\x04" * 4)
    with pytest.raises(MobilenetsError, match="bad magic"):
        read_idx(tmp_path / "y")


def test_cifar10_and_cifar100_pickles(tmp_path):
    c10 = load_dataset(str(make_cifar10_dir(tmp_path / "c10")), "train")
    assert c10.images.shape == (40, 3, 32, 32) and c10.classes == ["a", "b", "c", "d"]
    assert len(load_dataset(str(tmp_path / "c10"), "test")) == 20
    c100 = load_dataset(str(make_cifar100_dir(tmp_path / "c100")), "test")
    assert c100.images.shape == (20, 3, 32, 32) and c100.classes == ["w", "x", "y", "z"]


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_cifar_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_cifar10_dir(tmp_path / "c10")
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(MobilenetsError, match="refusing to load"):
        load_dataset(str(root), "train")
    assert not (tmp_path / "pwned").exists()


def test_image_folder_with_splits_and_any_mode(tmp_path):
    root = make_image_folder(tmp_path / "imgs", splits=True, modes=("L", "I;16", "LA"))
    train = load_dataset(str(root), "train")
    val = load_dataset(str(root), "val")
    assert train.classes == ["cat", "dog", "fox"] and len(train) == 18 and len(val) == 18
    assert train.images.shape[1:] == (1, 28, 28)  # all grayscale -> 1 channel


def test_image_folder_colour_and_val_fraction(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_per_class=10, modes=("RGB", "RGBA", "P"))
    train = load_dataset(str(root), "train", val_fraction=0.2)
    val = load_dataset(str(root), "val", val_fraction=0.2)
    assert len(train) == 24 and len(val) == 6
    assert train.channels == 3


def test_large_images_are_decoded_lazily_with_random_resized_crop(tmp_path):
    root = make_image_folder(tmp_path / "photos", n_per_class=3, size=100, modes=("RGB",), splits=True)
    train = load_dataset(str(root), "train", image_size=80)
    assert not isinstance(train, TensorImages) and train.kind == "photo"
    img, label = train[0]
    assert img.shape == (3, 80, 80) and img.dtype == torch.uint8
    train.set_epoch(1)
    again, _ = train[0]
    assert not torch.equal(img, again)  # a new crop each epoch, seeded


def test_data_errors(tmp_path):
    with pytest.raises(MobilenetsError, match="neither a known dataset"):
        load_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MobilenetsError, match="is empty"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(MobilenetsError, match="has no images"):
        load_dataset(str(tmp_path / "noimg"))


def test_corrupt_images_are_skipped_with_a_warning(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_per_class=4)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load_dataset(str(root), "train", val_fraction=0.25)
    assert any("skipped 1 unreadable" in str(w.message) for w in caught) or len(train) == 9


def test_load_image_conversions(tmp_path):
    arr16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096)
    Image.fromarray(arr16).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png", channels=1)
    assert img.mode == "L" and np.asarray(img)[3, 3] == (15 * 4096) >> 8
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "b.png")
    assert load_image(tmp_path / "b.png", channels=3).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "b.png", channels=1).mode == "L"


def test_augmentations_are_seeded_and_shape_preserving():
    images = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8)
    a = random_crop_flip(images, 2, True, torch.Generator().manual_seed(3))
    b = random_crop_flip(images, 2, True, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, images)
    # With no padding and no flip, the crop is the identity.
    assert torch.equal(random_crop_flip(images, 0, False, torch.Generator()), images)
    x = normalize(images, [0.5], [0.25])
    assert torch.allclose(x, (images.float() / 255 - 0.5) / 0.25)
    erased = random_erasing(x, 1.0, torch.Generator().manual_seed(0))
    assert ((erased == 0) & (x != 0)).any(dim=(1, 2, 3)).all()  # every image has a hole


# --------------------------------------------------------------------------- found by using the tool

def test_folders_are_matched_to_a_models_classes_by_name(tmp_path):
    """A checkpoint's label i means its class i: folders sorted differently, or only some of
    the classes, must be relabelled by name; folders it does not know are an error."""
    root = make_image_folder(tmp_path / "f", n_per_class=2, classes=("cat", "dog", "fox"))
    ds = load_dataset(str(root), "val", classes=["fox", "owl", "cat", "dog"], val_fraction=0.5)
    assert ds.classes == ["fox", "owl", "cat", "dog"]
    names = {p.parent.name for p in root.rglob("*.png")}
    assert names == {"cat", "dog", "fox"}
    # The val split holds one image per class: labels follow the model's order.
    assert sorted(ds.labels.tolist()) == [0, 2, 3]
    with pytest.raises(MobilenetsError, match=r"\['fox'\] are not among the model's 2 classes"):
        load_dataset(str(root), "val", classes=["cat", "dog"])


def test_a_single_class_folder_is_refused(tmp_path):
    make_image_folder(tmp_path / "one", n_per_class=4, classes=("val",))
    with pytest.raises(MobilenetsError, match=r"one class folder \(val\).*at least two.*single split"):
        load_dataset(str(tmp_path / "one"), "train")


def test_images_too_small_for_the_networks_are_refused(tmp_path):
    make_image_folder(tmp_path / "dots", n_per_class=4, size=1)
    with pytest.raises(MobilenetsError, match=r"about 1 px.*at least 8.*--image-size"):
        load_dataset(str(tmp_path / "dots"), "train")
    assert load_dataset(str(tmp_path / "dots"), "train", image_size=8).image_size == 8


def test_in_memory_datasets_are_resized_like_predict(tmp_path):
    from mobilenets.data.datasets import resize_center_crop, to_uint8_tensor

    root = make_idx_dir(tmp_path / "idx", n_train=8, n_test=8)
    ds28 = load_dataset(str(root), "val")
    ds36 = load_dataset(str(root), "val", image_size=36)
    assert ds36.images.shape == (8, 1, 36, 36) and torch.equal(ds36.labels, ds28.labels)
    one = to_uint8_tensor(resize_center_crop(Image.fromarray(ds28.images[3, 0].numpy(), "L"), 36))
    assert torch.equal(ds36.images[3], one)
    assert torch.equal(load_dataset(str(root), "val", image_size=28).images, ds28.images)


def test_extreme_aspect_ratios_are_cropped_before_resizing():
    """A 1×30000 image (200 bytes as PNG) must not be scaled to 224×6.7M pixels first."""
    import tracemalloc

    from mobilenets.data.datasets import resize_center_crop

    tall = Image.fromarray(np.full((30000, 1, 3), 77, np.uint8))
    tracemalloc.start()
    out = resize_center_crop(tall, 224)
    tracemalloc.stop()
    assert out.size == (224, 224) and np.asarray(out).max() == 77 == np.asarray(out).min()
    # The same as shorter side to the size then a central crop, on an ordinary image.
    wide = Image.fromarray(np.tile(np.arange(60, dtype=np.uint8)[None, :, None] * 4, (20, 1, 3)))
    got = np.asarray(resize_center_crop(wide, 10), dtype=int)
    ref = np.asarray(wide.resize((30, 10), Image.BILINEAR).crop((10, 0, 20, 10)), dtype=int)
    assert np.abs(got - ref).max() <= 2


def test_photo_folders_can_be_read_without_augmentation(tmp_path):
    """`eval --split train` scores centre crops, not the training split's random crops."""
    root = make_image_folder(tmp_path / "p", n_per_class=2, size=80, splits=True, modes=("RGB",))
    aug = load_dataset(str(root), "train")
    plain = load_dataset(str(root), "train", augment=False)
    aug.set_epoch(1)
    centre = load_dataset(str(root), "val")  # the same kind of files, read for evaluation
    assert not torch.equal(aug[0][0], plain[0][0])
    assert not plain.train and not centre.train and plain[0][0].shape == (3, 80, 80)


def test_sixteen_bit_float_and_colour_key_images(tmp_path):
    """16-bit as I;16 (PNG) and as I (PGM) both keep their top 8 bits; float images in
    [0, 1] are scaled; colour-key transparency is composited on white."""
    arr16 = np.array([[0, 256, 4000, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(arr16).save(tmp_path / "a.png")
    Image.fromarray(arr16).save(tmp_path / "a.pgm")
    for name in ("a.png", "a.pgm"):
        got = np.asarray(load_image(tmp_path / name, 1))
        assert got[0].tolist() == [0, 1, 15, 255], name
    Image.fromarray(np.array([[0, 100, 255]] * 3, dtype=np.int32), "I").save(tmp_path / "i32.tif")
    assert np.asarray(load_image(tmp_path / "i32.tif", 1))[0].tolist() == [0, 100, 255]  # not >> 8
    Image.fromarray(np.array([[0.0, 0.5, 1.0]] * 3, dtype=np.float32), "F").save(tmp_path / "f.tif")
    assert np.asarray(load_image(tmp_path / "f.tif", 1))[0].tolist() == [0, 128, 255]
    key = Image.fromarray(np.array([[0, 100]] * 2, dtype=np.uint8), "L")
    key.save(tmp_path / "k.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "k.png", 1))[0].tolist() == [255, 100]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((40, 80, 3), np.uint8))  # 80 wide, 40 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg", 3).size == (40, 80)


def test_hidden_files_are_ignored_and_channels_probed_across_classes(tmp_path):
    """macOS `._name` twins are not images; colour in later classes is not missed."""
    root = make_image_folder(tmp_path / "m", n_per_class=40, classes=("a_gray",))
    make_image_folder(root, n_per_class=4, classes=("b_red", "c_blue"), modes=("RGB",))
    for p in list((root / "a_gray").glob("*.png")):
        (p.parent / f"._{p.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "b_red" / ".ipynb_checkpoints").mkdir()
    (root / "b_red" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(b"stale copy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipped unreadable" warning
        ds = load_dataset(str(root), "train")
    assert ds.channels == 3 and len(ds) + len(load_dataset(str(root), "val")) == 48


def test_cifar_as_unpacked_and_as_pickled_by_python3_protocol_2(tmp_path):
    """The official archive unpacks into cifar-10-batches-py/: its parent works too. Python 3
    pickles of protocol 2 rebuild bytes with _codecs.encode, which is plain data."""
    root = make_cifar10_dir(tmp_path / "dl" / "cifar-10-batches-py", n=8)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        d = pickle.loads((root / name).read_bytes())
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    assert b"_codecs" in (root / "test_batch").read_bytes()
    ds = load_dataset(str(tmp_path / "dl"), "val")
    assert len(ds) == 8 and ds.classes == ["a", "b", "c", "d"]
