"""Issue 7: every user error is one clear line with exit status 2, training never loses work
(atomic writes, exact resume after SIGKILL/SIGTERM/Ctrl-C, full disks), and files from
elsewhere (checkpoints, metadata) are data that is checked, never trusted."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from datagen import make_idx_dir, make_image_folder, write_idx
from mobilenets import MobilenetsError
from mobilenets.io.checkpoint import atomic_write_bytes, load_model, read_checkpoint
from mobilenets.cli.main import main
from mobilenets.data.datasets import ImageFolder, TensorImages, load_dataset
from mobilenets.training import TrainConfig, Trainer, TrainingInterrupted, train

TINY = dict(model="mobilenet_v3_small", model_kwargs={"width_mult": 0.25}, batch_size=16, lr=0.05,
            warmup=0.0, precision="fp32", progress=False, erasing=0.25)


# --------------------------------------------------------------------------- helpers

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("data") / "tiny", n_train=64, n_test=16)


@pytest.fixture(scope="module")
def run_dir(idx_dir, tmp_path_factory) -> Path:
    """One tiny finished run (1 epoch of 2 steps): best.safetensors, last.safetensors."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(**{**TINY, "data": str(idx_dir), "out": str(out), "epochs": 1, "max_steps": 2}))
    return out


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI, assert the contract for user errors (status 2, one ``error:`` line, no
    traceback) and return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def rewrite_checkpoint(src: Path, dst: Path, change_meta: Callable[[dict], None] | None = None,
                       change_tensors: Callable[[dict], None] | None = None) -> Path:
    """Copy a checkpoint, editing its metadata or tensors as a corrupt or hostile file might."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["mobilenets"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if change_meta:
        change_meta(meta)
    if change_tensors:
        change_tensors(tensors)
    save_file(tensors, str(dst), metadata={"mobilenets": json.dumps(meta)})
    return dst


def png(path: Path, size: int = 28, seed: int = 0, mode: str = "L") -> Path:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def truncated_png(path: Path, size: int = 96) -> Path:
    """A PNG whose header is fine and whose pixel data stops halfway: it opens, it does not
    decode (noise compresses badly, so half the file is half the pixels)."""
    png(path, size=size, mode="RGB")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def no_temp_files(directory: Path) -> bool:
    return not list(directory.glob(".*.tmp"))


# --------------------------------------------------------------------------- data errors

@pytest.mark.parametrize("command", ["train", "eval"])
def test_missing_and_empty_data_directories(command: str, run_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The first thing a new user gets wrong; both commands that read data say where and why."""
    head = ["train", "--out", str(tmp_path / "r")] if command == "train" else \
        ["eval", str(run_dir / "best.safetensors")]
    line = cli_error(capsys, head + ["--data", str(tmp_path / "missing")])
    assert "data not found" in line and "missing" in line and "existing path" in line
    (tmp_path / "empty").mkdir()
    line = cli_error(capsys, head + ["--data", str(tmp_path / "empty")])
    assert "is empty" in line and str(tmp_path / "empty") in line
    (tmp_path / "afile").write_text("x")
    assert "must be a directory" in cli_error(capsys, head + ["--data", str(tmp_path / "afile")])


def test_class_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty class would train a classifier for a class it never sees: refused, naming the folder."""
    root = make_image_folder(tmp_path / "imgs", n_per_class=2)
    (root / "zebra").mkdir()
    (root / "zebra" / "README.txt").write_text("no images here")
    line = cli_error(capsys, ["train", "--data", str(root), "--out", str(tmp_path / "r")])
    assert f"class folder {root / 'zebra'} has no images" in line and ".png" in line


def test_folder_without_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Loose images without <class>/ folders have no labels: the message shows the layout."""
    (tmp_path / "flat").mkdir()
    png(tmp_path / "flat" / "a.png")
    line = cli_error(capsys, ["train", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "r")])
    assert "no class folders" in line and "<class>" in line


def _small_folder_with_bad_files(root: Path) -> Path:
    """train/ and val/ of 28 px images; train/ also holds a text file and a cut-off PNG."""
    make_image_folder(root, n_per_class=4, size=28, splits=True)
    (root / "train" / "cat" / "notes.png").write_text("not an image at all")
    truncated_png(root / "train" / "dog" / "cut.png", size=28)
    return root


def test_unreadable_images_in_a_small_folder_are_skipped_with_a_count(tmp_path: Path) -> None:
    """Default: a few bad files in a big folder should not stop a run, but must not go unnoticed."""
    root = _small_folder_with_bad_files(tmp_path / "imgs")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\).*--strict") as caught:
        ds = load_dataset(str(root), "train")
    assert isinstance(ds, TensorImages) and len(ds) == 12  # 14 files, 2 unreadable
    assert any("notes.png" in str(w.message) or "cut.png" in str(w.message) for w in caught)


def test_strict_makes_unreadable_images_an_error(tmp_path: Path, run_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--strict, for curated data where any bad file is a bug, on train and on eval."""
    root = _small_folder_with_bad_files(tmp_path / "imgs")
    with pytest.raises(MobilenetsError, match=r"2 unreadable image file\(s\).*remove them"):
        load_dataset(str(root), "train", strict=True)
    line = cli_error(capsys, ["train", "--data", str(root), "--out", str(tmp_path / "r"), "--strict"])
    assert "2 unreadable image file(s)" in line and str(root / "train") in line
    # eval reads the folder at the checkpoint's 28 px, 1 channel, and its class names
    # (0..3, matched by folder name): the same check applies.
    for i, name in enumerate(("cat", "dog", "fox")):
        (root / "train" / name).rename(root / "train" / str(i))
    line = cli_error(capsys, ["eval", str(run_dir / "best.safetensors"), "--data", str(root),
                              "--split", "train", "--strict"])
    assert "2 unreadable image file(s)" in line


def _photo_folder(root: Path) -> Path:
    """train/ and val/ of 80 px photos (decoded lazily) plus one non-image in train/cat."""
    make_image_folder(root, n_per_class=2, size=80, splits=True, modes=("RGB",))
    (root / "train" / "cat" / "fake.jpg").write_bytes(b"GIF89a but not really" * 3)
    return root


def test_large_folders_check_headers_at_scan_time(tmp_path: Path) -> None:
    """Lazy folders are not decoded up front; their headers are, so non-images go before training."""
    root = _photo_folder(tmp_path / "photos")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\).*fake\.jpg"):
        ds = load_dataset(str(root), "train", image_size=72)
    assert isinstance(ds, ImageFolder) and len(ds) == 6
    assert all(p.name != "fake.jpg" for p in ds.files)
    with pytest.raises(MobilenetsError, match=r"1 unreadable image file\(s\).*fake\.jpg"):
        load_dataset(str(root), "train", image_size=72, strict=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_decode_failure_during_training_names_the_file(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       workers: int) -> None:
    """A file whose header is fine but whose data is cut off passes the scan; decoding it in
    an epoch (in a DataLoader worker or not) is, with --strict, one clear error naming it
    (without, it is skipped: tests/test_hostile.py)."""
    root = make_image_folder(tmp_path / "photos", n_per_class=2, size=80, splits=True, modes=("RGB",))
    bad = truncated_png(root / "train" / "dog" / "cut.png", size=96)
    ds = load_dataset(str(root), "train", image_size=72)
    assert bad in ds.files  # the header is readable
    line = cli_error(capsys, ["train", "--data", str(root), "--out", str(tmp_path / "r"), "--image-size", "72",
                              "--epochs", "1", "--batch-size", "7", "--width-mult", "0.25",
                              "--precision", "fp32", "--workers", str(workers), "--strict"])
    assert line.startswith(f"error: cannot read image {bad}") and "truncated" in line
    assert "remove or replace the file" in line


def test_images_smaller_than_the_crop_are_upscaled_with_a_warning(tmp_path: Path) -> None:
    """Decided: upscale (as predict does) and count them, for in-memory and lazy folders."""
    root = make_image_folder(tmp_path / "small", n_per_class=3, size=28)
    with pytest.warns(UserWarning, match=r"6 image\(s\) in .* are smaller than 48 px and are upscaled"):
        ds = load_dataset(str(root), "train", image_size=48, val_fraction=0.3)
    assert ds.images.shape[-2:] == (48, 48)
    photos = make_image_folder(tmp_path / "photos", n_per_class=2, size=70, splits=True, modes=("RGB",))
    with pytest.warns(UserWarning, match=r"6 image\(s\) .* smaller than 80 px"):
        lazy = load_dataset(str(photos), "train", image_size=80)
    assert lazy[0][0].shape == (3, 80, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # large enough: no warning
        load_dataset(str(photos), "val", image_size=64)


def test_corrupt_idx_files_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cut-off download (truncated IDX, broken gzip) names the file and what is wrong."""
    root = make_idx_dir(tmp_path / "idx", n_train=8, n_test=8, gz=False)
    labels = root / "train-labels-idx1-ubyte"
    write_idx(labels, np.full(8, 250, np.uint8), gz=False)  # fine: 251 classes
    labels.write_bytes(labels.read_bytes()[:-3])
    line = cli_error(capsys, ["train", "--data", str(root), "--out", str(tmp_path / "r")])
    assert str(labels) in line and "truncated or corrupt" in line
    (root / "train-images-idx3-ubyte").write_bytes(b"\x1f\x8b" + b"garbage")
    line = cli_error(capsys, ["train", "--data", str(root), "--out", str(tmp_path / "r")])
    assert "cannot read IDX file" in line


# --------------------------------------------------------------------------- names and options

def test_unknown_model_names_and_options(idx_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Typos get the closest valid name; wrong options name the model's options."""
    line = cli_error(capsys, ["summary", "mobilenet_v3_smal"])
    assert "unknown model 'mobilenet_v3_smal'" in line and "did you mean 'mobilenet_v3_small'" in line
    line = cli_error(capsys, ["train", "--model", "mobilenetv2", "--data", str(idx_dir),
                              "--out", str(tmp_path / "r")])
    assert "did you mean 'mobilenet_v2'" in line and "available:" in line
    line = cli_error(capsys, ["summary", "mobilenet_v2", "--depth-multiplier", "2"])
    assert "mobilenet_v2 has no option 'depth_multiplier'" in line and "options:" in line
    line = cli_error(capsys, ["summary", "mobilenet_v1", "--width-mult", "-1"])
    assert "width_mult must be in (0, 16], got -1.0" in line
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    line = cli_error(capsys, ["convert", "--from", "timm", str(tmp_path / "w.pth"), "--model", "resnet50",
                              "-o", str(tmp_path / "o.safetensors")])
    assert "unknown model 'resnet50'" in line


@pytest.mark.parametrize("argv,message", [
    (["summary", "mobilenet_v2", "--resolution", "0"], "resolution must be >= 1 px"),
    (["models", "--resolution", "-5"], "resolution must be >= 1 px"),
    (["summary", "mobilenet_v3_small", "--in-chans", "0"], "in_chans must be in [1, 4096], got 0"),
    (["summary", "mobilenet_v3_small", "--num-classes", "-3"], "num_classes must be in [0, 1000000], got -3"),
    (["summary", "mobilenet_v3_small", "--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["train", "--epochs", "0"], "epochs must be in [1, 100000]"),
    (["train", "--epochs", "1000000000000"], "epochs must be in [1, 100000]"),
    (["train", "--batch-size", "0"], "batch size must be >= 1"),
    (["train", "--lr", "-1"], "learning rate must be positive"),
    (["train", "--image-size", "-5"], "image size must be in [8, 1024]"),
    (["train", "--max-steps", "0"], "max steps must be >= 1"),
    (["train", "--stop-after-epoch", "0"], "stop after epoch must be >= 1"),
    (["train", "--weight-decay", "-1"], "weight decay must be >= 0"),
    (["train", "--erasing", "2"], "random-erasing probability must be in [0, 1]"),
    (["train", "--epochs", "3", "--no-aug-epochs", "4"], "no-augmentation epochs must be in [0, epochs = 3]"),
    (["train", "--no-aug-epochs", "-1"], "no-augmentation epochs must be in [0, epochs"),
    (["train", "--warmup", "-1"], "warm-up must be >= 0"),
    (["train", "--nproc-per-node", "0"], "--nproc-per-node must be >= 1"),
    (["train", "--image-size", "5000"], "image size must be in [8, 1024]"),
    (["train", "--val-fraction", "0"], "validation fraction must be in (0, 1)"),
    (["train", "--seed", "-1"], "seed must be in [0, 2**63)"),
    (["train", "--lr", "inf"], "lr must be a finite number"),
    (["train", "--weight-decay", "nan"], "weight decay must be a finite number"),
    (["train", "--warmup", "inf"], "warmup must be a finite number"),
    (["eval", "RUN", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_option_values(argv: list[str], message: str, idx_dir: Path, run_dir: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """Values argparse cannot judge: each is one clear error naming the option."""
    if argv[0] == "train":
        argv = argv + ["--data", str(idx_dir), "--out", str(tmp_path / "r")]
    if argv[0] == "eval":
        argv = [a.replace("RUN", str(run_dir)) for a in argv] + ["--data", str(idx_dir)]
    assert message in cli_error(capsys, argv)


def test_invalid_choices_are_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's fixed choices: one line with the closest choice and all of them, status 2
    (no usage block; issue 31)."""
    line = cli_error(capsys, ["train", "--recipe", "small-image"])
    assert "invalid choice: 'small-image' (did you mean 'small-images'?)" in line and "v2-paper" in line


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--debug is the way to report a bug: the traceback, then the same error line."""
    assert main(["--debug", "train", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "MobilenetsError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: data not found")


# --------------------------------------------------------------------------- checkpoints

def test_eval_with_other_classes_or_channels(run_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Evaluating on a dataset the checkpoint was not made for is refused, not silently wrong."""
    three = make_idx_dir(tmp_path / "three", n_train=9, n_test=9, classes=3)
    line = cli_error(capsys, ["eval", str(run_dir / "best.safetensors"), "--data", str(three)])
    assert "was trained on 4 classes" in line and "has 3" in line
    nameless = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "nameless.safetensors",
                                  lambda m: m.pop("classes"))
    line = cli_error(capsys, ["eval", str(nameless), "--data", str(three)])
    assert "predicts 4 classes" in line


def test_tensors_that_do_not_fit_their_metadata(run_dir: Path, idx_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Tensors and metadata that disagree (edited, mixed up) fail naming the tensors."""
    wider = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "wider.safetensors",
                               lambda m: m["model_kwargs"].update(width_mult=0.5))
    with pytest.raises(MobilenetsError, match=r"does not fit mobilenet_v3_small: wrong shapes"):
        load_model(wider)
    img = png(tmp_path / "x.png")
    assert "wrong shapes (file vs model)" in cli_error(capsys, ["predict", str(wider), str(img)])
    other = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "other.safetensors",
                               lambda m: m.update(model="mobilenet_v2"))
    line = cli_error(capsys, ["eval", str(other), "--data", str(idx_dir)])
    assert "does not fit mobilenet_v2" in line and "missing" in line
    dropped = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "dropped.safetensors",
                                 change_tensors=lambda t: t.pop("classifier.weight"))
    assert "missing ['classifier.weight']" in cli_error(capsys, ["predict", str(dropped), str(img)])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad-json", "no-metadata"])
def test_corrupt_checkpoints(damage: str, run_dir: Path, idx_dir: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """Damaged or foreign files: one error naming the file, for predict and eval alike."""
    path = tmp_path / "bad.safetensors"
    good = (run_dir / "best.safetensors").read_bytes()
    if damage == "truncated":
        path.write_bytes(good[:len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bad-json":
        with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(path), metadata={"mobilenets": '{"model": "mobilenet_v3_small", '})
    else:
        save_file({"x": torch.zeros(2)}, str(path))
    expected = {"truncated": "truncated or corrupt", "garbage": "truncated or corrupt",
                "empty": "truncated or corrupt", "bad-json": "corrupt metadata",
                "no-metadata": "no mobilenets metadata"}[damage]
    img = png(tmp_path / "x.png")
    assert expected in cli_error(capsys, ["predict", str(path), str(img)])
    assert str(path) in cli_error(capsys, ["eval", str(path), "--data", str(idx_dir)])


def test_resume_from_a_corrupt_run(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged run directory tells the user to start over instead of crashing in the optimizer."""
    copy = shutil.copytree(run_dir, tmp_path / "run")
    last = copy / "last.safetensors"
    rewrite_checkpoint(run_dir / "last.safetensors", last,
                       lambda m: m["train_state"].pop("optimizer"))
    line = cli_error(capsys, ["train", "--out", str(copy), "--resume"])
    assert "training state is corrupt" in line and "without --resume" in line
    last.write_bytes(last.read_bytes()[:1000])
    assert "truncated or corrupt" in cli_error(capsys, ["train", "--out", str(copy), "--resume"])
    (copy / "config.json").write_text("{not json")
    assert "config.json is corrupt" in cli_error(capsys, ["train", "--out", str(copy), "--resume"])


def _odd(field: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        if field == "model":
            meta["model"] = value
        elif field in ("classes", "preprocessing", "model_kwargs"):
            meta[field] = value
        else:
            meta["model_kwargs"][field] = value
    return change


@pytest.mark.parametrize("field,value,message", [
    ("model", "../../etc/passwd", "unknown model '../../etc/passwd'"),
    ("model", "/tmp/evil.py", "unknown model"),
    ("model", 42, "lacks a model name"),
    ("model_kwargs", ["width_mult"], "lacks a model name"),
    ("width_mult", 1e9, "width_mult must be in (0, 16], got 1000000000.0"),
    ("width_mult", -0.25, "width_mult must be in (0, 16], got -0.25"),
    ("width_mult", "0.25", "width_mult must be a number, got '0.25'"),
    ("num_classes", 10 ** 12, "num_classes must be in [0, 1000000], got 1000000000000"),
    ("num_classes", -4, "num_classes must be in [0, 1000000], got -4"),
    ("num_classes", 1000, "wrong shapes"),  # plausible but not what the tensors hold
    ("in_chans", 0, "in_chans must be in [1, 4096], got 0"),
    ("small_input", "yes", "small_input must be true or false, got 'yes'"),
    ("padding", "../x", "padding must be one of"),
    ("stem_channels", -8, "stem_channels must be in [1, 16384], got -8"),
    ("__class__", "os.system", "has no option '__class__'"),
    ("classes", "abc", "'classes' must be a list"),
    ("preprocessing", {"input_size": -5}, "input_size must be an integer"),
    ("preprocessing", {"input_size": 28, "channels": 1, "mean": [0.5], "std": [0]}, "std non-zero"),
    ("preprocessing", "/etc/passwd", "must be a mapping"),
])
def test_odd_metadata_is_rejected(field: str, value: Any, message: str, run_dir: Path,
                                  tmp_path: Path) -> None:
    """Metadata is untrusted: names, option types and ranges are checked, and the model is
    compared shape by shape on the meta device before any real allocation."""
    path = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "odd.safetensors", _odd(field, value))
    t0 = time.perf_counter()
    with pytest.raises(MobilenetsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_model(path)
    assert time.perf_counter() - t0 < 10  # no giant model was built


_TRAPS: list[str] = []  # paths that must never be opened
_TRIPPED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    """An audit hook (it cannot be removed, so it stays cheap): records any open or listing
    of a trap path."""
    if _TRAPS and event in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.remove") and args:
        name = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
        if any(t in name for t in _TRAPS):
            _TRIPPED.append(f"{event} {name}")


sys.addaudithook(_audit)


def test_no_metadata_field_is_used_as_a_path(run_dir: Path, idx_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Loading, evaluating and predicting open only the paths the user gave: every string in
    the metadata is set to a trap path, and an audit hook watches every file opened."""
    monkeypatch.chdir(tmp_path)
    trap = tmp_path / "trap-metadata-path"

    def poison(meta: dict) -> None:
        for key in ("converted_from", "source", "path", "out", "data", "recipe"):
            meta[key] = str(trap)
        meta["classes"] = [f"{trap}-{i}" for i in range(4)]  # class names must be distinct
        meta["train_state"] = {"history": [], "out": str(trap)}

    path = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "p.safetensors", poison)
    img = png(tmp_path / "x.png")
    _TRAPS.append(trap.name)
    try:
        load_model(path)
        assert main(["predict", str(path), str(img)]) == 0
        assert main(["eval", str(path), "--data", str(idx_dir), "--out", str(tmp_path / "ev")]) == 0
    finally:
        _TRAPS.clear()
    assert str(trap) in capsys.readouterr().out  # the class names were used, as names
    assert not _TRIPPED and not trap.exists()


# --------------------------------------------------------------------------- output and disks

def test_unwritable_output_directories(idx_dir: Path, run_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Tests run as root, where permissions stop nothing: a path under a regular file is
    unwritable for everyone."""
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    line = cli_error(capsys, ["train", "--data", str(idx_dir), "--out", str(blocker / "run"), "--epochs", "1",
                              "--batch-size", "16", "--width-mult", "0.25"])
    assert f"cannot create the output directory {blocker / 'run'}" in line and "choose another --out" in line
    line = cli_error(capsys, ["eval", str(run_dir / "best.safetensors"), "--data", str(idx_dir),
                              "--out", str(blocker / "ev")])
    assert "cannot write to" in line and "writable output directory" in line
    with pytest.raises(MobilenetsError, match="not writable"):
        from mobilenets.training.rundir import check_writable as _check_writable

        class ReadOnly(type(tmp_path)):
            def write_bytes(self, data):  # what a read-only mount answers
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        _check_writable(ReadOnly(tmp_path))


class _FullDiskFile:
    """A file whose writes stop after 100 bytes with ENOSPC, as on a full disk."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self) -> "_FullDiskFile":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self.f, name)


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_full_disk_keeps_the_previous_file(failing: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever step of the atomic write fails (the data, the flush to disk, the rename):
    a clear error, the old file intact, no temporary file left."""
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"old contents")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDiskFile(real_fdopen(fd, *a, **k)))
    else:
        monkeypatch.setattr(os, failing, full)
    with pytest.raises(MobilenetsError, match=r"could not save .*No space left on device.*previous file.*"
                                              r"unchanged.*free some disk space"):
        atomic_write_bytes(target, b"new contents" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert no_temp_files(tmp_path)


def test_full_disk_while_training_keeps_the_last_checkpoint(run_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while saving the epoch-2 checkpoint: a clear error, the epoch-1
    checkpoint unchanged and resumable, no temporary files."""
    copy = shutil.copytree(run_dir, tmp_path / "run")
    before = (copy / "last.safetensors").read_bytes()
    real_fsync = os.fsync

    def fsync(fd):
        if os.fstat(fd).st_size > 16384:  # checkpoints; small metadata files still save
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    best = (copy / "best.safetensors").read_bytes()
    line = cli_error(capsys, ["train", "--out", str(copy), "--resume", "--epochs", "2"])
    assert "No space left on device" in line and "free some disk space" in line
    assert "best.safetensors" in line or "last.safetensors" in line  # best first if it improved
    monkeypatch.undo()
    assert (copy / "last.safetensors").read_bytes() == before and no_temp_files(copy)
    assert (copy / "best.safetensors").read_bytes() == best
    assert read_checkpoint(copy / "last.safetensors")[1]["train_state"]["epoch"] == 1


# --------------------------------------------------------------------------- interruption

INTERRUPTED = dict(TINY, epochs=2, ema=0.9, optimizer="rmsprop")


@pytest.fixture(scope="module")
def uninterrupted(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The in-process run that the interrupted ones are compared with."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(TrainConfig(**INTERRUPTED, data=str(idx_dir), out=str(out)))
    return out


@pytest.mark.parametrize("when", ["before the forward pass", "right after the optimizer update"])
def test_sigterm_mid_epoch_stops_on_a_step_and_resumes_exactly(when: str, idx_dir: Path, uninterrupted: Path,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM during step 2 of epoch 2 (in-process, so the step is known): the trainer
    finishes that step, saves, raises TrainingInterrupted; the resumed run equals an
    uninterrupted one in every tensor and every logged loss and accuracy. Right after the
    optimizer update is where raising at once (Python's default for Ctrl-C) would save
    updated weights with a step counter that says the step is still to do."""
    handler_before = signal.getsignal(signal.SIGTERM)
    calls = []

    def signal_at_step_6(real: Callable) -> Callable:
        def wrapper(self, *args, **kwargs):
            if when.startswith("before"):
                calls.append(1)
                if len(calls) == 4 + 2:  # 4 steps per epoch: the 2nd step of epoch 2
                    os.kill(os.getpid(), signal.SIGTERM)
            result = real(self, *args, **kwargs)
            if when.startswith("right after"):
                calls.append(1)
                if len(calls) == 4 + 2:
                    os.kill(os.getpid(), signal.SIGTERM)
            return result
        return wrapper

    if when.startswith("before"):
        monkeypatch.setattr(Trainer, "_augment", signal_at_step_6(Trainer._augment))
    else:
        monkeypatch.setattr(torch.amp.GradScaler, "step", signal_at_step_6(torch.amp.GradScaler.step))
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 2 step 2; saved .*Resume with: "
                                                  r"mobilenets train --out .* --resume"):
        train(TrainConfig(**INTERRUPTED, data=str(idx_dir), out=str(cut)))
    monkeypatch.undo()
    assert len(calls) == 6
    state = read_checkpoint(cut / "last.safetensors")[1]["train_state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2) and state["epoch_partial"]["seen"] == 32
    train(TrainConfig(out=str(cut), resume=True, progress=False))
    _assert_same_runs(uninterrupted, cut)
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the guard restored it


def test_second_interrupt_aborts_without_saving(idx_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C twice means now: no save of a possibly half-updated state; the last good file stays."""
    kw = dict(TINY, data=str(idx_dir), epochs=2, out=str(tmp_path / "r"))
    train(TrainConfig(**kw, stop_after_epoch=1))
    before = (tmp_path / "r" / "last.safetensors").read_bytes()
    real_augment = Trainer._augment

    def augment(self, *args):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C twice within one step
        os.kill(os.getpid(), signal.SIGINT)
        return real_augment(self, *args)

    monkeypatch.setattr(Trainer, "_augment", augment)
    with pytest.raises(TrainingInterrupted, match=r"without saving .*last checkpoint .* is kept"):
        train(TrainConfig(out=kw["out"], resume=True, progress=False))
    assert (tmp_path / "r" / "last.safetensors").read_bytes() == before


def _assert_same_runs(a: Path, b: Path) -> None:
    """Every tensor of last.safetensors (weights, optimizer, EMA) bit-identical, and the same
    per-epoch losses and accuracies; metrics.jsonl lists each epoch once."""
    ta, ma = read_checkpoint(a / "last.safetensors")
    tb, mb = read_checkpoint(b / "last.safetensors")
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    ha, hb = ma["train_state"]["history"], mb["train_state"]["history"]
    assert [[h[k] for k in keys] for h in ha] == [[h[k] for k in keys] for h in hb]
    logged = [json.loads(line)["epoch"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, len(ha) + 1))


# The subprocess test: real signals on a real `python -m mobilenets train`, single-threaded
# (OMP_NUM_THREADS=1) so every process runs identical kernels.
EPOCHS = 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 300


def _train_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mobilenets", "train", "--data", str(data), "--out", str(out),
            "--epochs", str(EPOCHS), "--batch-size", "16", "--width-mult", "0.25", "--precision", "fp32",
            "--lr", "0.05", "--warmup", "0", "--ema", "0.9", "--optimizer", "rmsprop", "--seed", "3"]


def _resume_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "mobilenets", "train", "--out", str(out), "--resume"]


@contextmanager
def _running(*cmds: list[str]) -> Iterator[list[subprocess.Popen]]:
    """Training processes, run side by side (each on one thread) and killed if the test
    fails before they end."""
    procs = [subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def _finish(proc: subprocess.Popen, status: int, what: str) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == status, f"{what}: status {proc.returncode}\n{out}\n{err}"
    return out, err


@pytest.mark.slow
def test_sigkill_and_sigterm_mid_run_then_resume_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    """Three runs of one configuration side by side: uninterrupted; killed with SIGKILL
    (uncatchable: only the atomic per-epoch checkpoint survives) after epoch 1; sent SIGTERM
    (what job schedulers send) during epoch 2, which must save mid-epoch, say how to resume
    and exit 130. Both resume with --resume to the end and must equal the uninterrupted run
    in every tensor (weights, optimizer, EMA) and every logged loss and accuracy."""
    data = make_idx_dir(tmp_path / "idx", n_train=192, n_test=16)
    ref, killed, termed = tmp_path / "ref", tmp_path / "killed", tmp_path / "termed"
    triggers = {1: killed / "last.safetensors", 2: termed / "curves.png"}  # epoch 1 saved (and plotted)
    signals = {1: signal.SIGKILL, 2: signal.SIGTERM}
    with _running(*(_train_cmd(data, out) for out in (ref, killed, termed))) as procs:
        seen: dict[int, float] = {}
        deadline = time.monotonic() + TIMEOUT
        while procs[1].returncode is None or procs[2].returncode is None:
            for i, trigger in triggers.items():
                if procs[i].returncode is not None:
                    continue
                if i not in seen and trigger.exists():
                    seen[i] = time.monotonic()
                if i in seen and time.monotonic() > seen[i] + 0.3:
                    procs[i].send_signal(signals[i])  # 0.3 s into epoch 2
                    procs[i].wait(timeout=TIMEOUT)
                elif i not in seen and procs[i].poll() is not None:
                    pytest.fail(f"run {i} ended before {trigger} appeared: {procs[i].communicate()}")
            assert time.monotonic() < deadline, "the runs did not reach epoch 2"
            time.sleep(0.02)
        _finish(procs[1], -signal.SIGKILL, "SIGKILL")
        _, err = _finish(procs[2], 130, "SIGTERM")
        assert "interrupted at epoch" in err and f"Resume with: mobilenets train --out {termed} --resume" in err
        assert "Traceback" not in err
        for out in (killed, termed):
            state = read_checkpoint(out / "last.safetensors")[1]["train_state"]
            assert 1 <= state["epoch"] < EPOCHS, (out, state["epoch"])
        with _running(_resume_cmd(killed), _resume_cmd(termed)) as resumes:
            for proc, what in zip(resumes, ("resume after SIGKILL", "resume after SIGTERM")):
                out, _ = _finish(proc, 0, what)
                assert "resuming at epoch" in out
        _finish(procs[0], 0, "uninterrupted run")
    _assert_same_runs(ref, killed)
    _assert_same_runs(ref, termed)


# --------------------------------------------------------------------------- found by using the tool

def test_a_nan_validation_loss_stops_training_and_is_never_the_best(idx_dir: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """The last step can overflow the weights with a finite training loss: the validation
    loss is checked too, before anything is saved as best."""
    import dataclasses

    import mobilenets.training.trainer as train_module

    real = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate",
                        lambda *a, **k: dataclasses.replace(real(*a, **k), loss=float("nan")))
    out = tmp_path / "nan"
    with pytest.raises(MobilenetsError, match=r"validation loss is nan after epoch 1.*no checkpoint"):
        train(TrainConfig(**{**TINY, "data": str(idx_dir), "out": str(out), "epochs": 1, "max_steps": 1}))
    assert not (out / "best.safetensors").exists()


def test_eval_json_is_strict_json_even_for_a_broken_model(run_dir: Path, idx_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # NaN weights are refused at load (issue 31); finite ones that overflow give a NaN loss.
    broken = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "nan.safetensors",
                                change_tensors=lambda t: (t["head.fc.bias"].fill_(10),
                                                          t["classifier.weight"].fill_(3e38)))
    assert main(["eval", str(broken), "--data", str(idx_dir), "--json", "--out", str(tmp_path)]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    res = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert res["loss"] is None and res["count"] == 16


def test_eval_plots_into_the_run_directory_and_a_failed_plot_keeps_the_results(
        run_dir: Path, idx_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    assert main(["eval", str(run_dir), "--data", str(idx_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion_png"] == str(run_dir / "confusion.png")
    import mobilenets.cli.train as train_cli

    def unwritable(*_args: Any) -> Path:
        raise MobilenetsError(f"cannot write to {run_dir}: Read-only file system")

    monkeypatch.setattr(train_cli, "plot_confusion", unwritable)
    assert main(["eval", str(run_dir), "--data", str(idx_dir), "--json"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert res["confusion_png"] is None and res["count"] == 16
    assert "warning: confusion matrix plot not written" in captured.err


def test_val_fraction_splits_a_folder_once_and_eval_scores_the_same_held_out_images(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_image_folder(tmp_path / "flat", n_per_class=10)
    cfg = TrainConfig(**{**TINY, "data": str(root), "out": str(tmp_path / "r"), "epochs": 1, "batch_size": 8,
                         "max_steps": 1, "val_fraction": 0.5, "seed": 3})
    trainer = Trainer(cfg)
    assert len(trainer.train_set) == len(trainer.val_set) == 15  # not 10 % first, then half of the rest
    trainer.fit()
    capsys.readouterr()  # the training log
    meta = read_checkpoint(tmp_path / "r" / "best.safetensors")[1]
    assert meta["holdout"] == {"seed": 3, "val_fraction": 0.5}
    assert main(["eval", str(tmp_path / "r"), "--data", str(root), "--split", "val", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    from mobilenets.training import evaluate

    model, meta = load_model(tmp_path / "r" / "best.safetensors")
    same = evaluate(model, trainer.val_set, meta["preprocessing"])  # the images training held out
    assert res["count"] == 15 and res["confusion"] == same.confusion and res["loss"] == pytest.approx(same.loss)
    other = load_dataset(str(root), "val", classes=meta["classes"])  # seed 0, 10 %: another split
    assert len(other) == 3
    # The export carries the split, so the artifact is scored on the same images.
    assert main(["export", str(tmp_path / "r"), "--format", "torchscript"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r" / "best.pt"), "--data", str(root), "--split", "val", "--json",
                 "--trust-code"]) == 0  # we made the TorchScript
    exported = json.loads(capsys.readouterr().out)
    assert exported["confusion"] == same.confusion
    bad = rewrite_checkpoint(tmp_path / "r" / "best.safetensors", tmp_path / "bad.safetensors",
                             lambda m: m.update(holdout={"seed": "x", "val_fraction": 2}))
    assert "metadata 'holdout' must be a seed and a fraction" in cli_error(
        capsys, ["eval", str(bad), "--data", str(root)])


def test_eval_refuses_class_folders_the_model_does_not_know(run_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = make_image_folder(tmp_path / "animals", n_per_class=2, splits=True)
    line = cli_error(capsys, ["eval", str(run_dir), "--data", str(root)])
    assert "['cat', 'dog', 'fox'] are not among the model's 4 classes (0, 1, 2, 3)" in line


def test_predict_argument_mistakes(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = png(tmp_path / "x.png")
    assert "--top-k must be >= 1, got 0" in cli_error(capsys, ["predict", str(run_dir), str(img), "--top-k", "0"])
    assert "is a directory; give image files" in cli_error(capsys, ["predict", str(run_dir), str(tmp_path)])
    line = cli_error(capsys, ["predict", str(img), str(img)])  # swapped: the image first
    assert "is not a checkpoint or an exported model" in line


def test_predict_works_in_batches(run_dir: Path, tmp_path: Path) -> None:
    from mobilenets.deploy.predict import predict_with

    model, meta = load_model(run_dir / "best.safetensors")
    model.eval()
    paths = [png(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    sizes: list[int] = []

    def logits(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return model(x)

    with torch.no_grad():
        batched = predict_with(logits, meta, paths, top_k=2, batch_size=2)
        whole = predict_with(model, meta, paths, top_k=2)
    assert sizes == [2, 2, 1]
    assert [p.path for p in batched] == [str(p) for p in paths]
    for a, b in zip(batched, whole):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        assert np.allclose([v for _, v in a.top], [v for _, v in b.top], atol=1e-5)


def test_eval_precision_bf16_scores_the_bf16_inference_path(run_dir: Path, idx_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``eval --precision bf16`` runs the model with bf16 weights and activations: the
    loss moves by rounding only, and the output says which precision was scored."""
    # Two training steps leave near-zero logits that bf16 cannot change; scaled up, they can.
    sharp = rewrite_checkpoint(run_dir / "best.safetensors", tmp_path / "sharp.safetensors",
                               change_tensors=lambda t: t["classifier.weight"].mul_(300))
    scores = {}
    for precision in ("fp32", "bf16"):
        assert main(["eval", str(sharp), "--data", str(idx_dir), "--json", "--out", str(tmp_path),
                     "--precision", precision]) == 0
        scores[precision] = json.loads(capsys.readouterr().out)
    assert scores["bf16"]["precision"] == "bf16" and scores["fp32"]["precision"] == "fp32"
    assert scores["bf16"]["loss"] != scores["fp32"]["loss"]  # it did run in another precision
    assert scores["bf16"]["loss"] == pytest.approx(scores["fp32"]["loss"], rel=0.05)
    assert main(["eval", str(run_dir), "--data", str(idx_dir), "--precision", "bf16",
                 "--out", str(tmp_path)]) == 0
    assert "bf16 weights and activations" in capsys.readouterr().out
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"not read")
    err = cli_error(capsys, ["eval", str(exported), "--data", str(idx_dir), "--precision", "bf16"])
    assert "applies to checkpoints" in err


@pytest.mark.parametrize("reuse", [True, False])
def test_inference_commands_keep_freed_memory_unless_told_not_to(run_dir, idx_dir, tmp_path, monkeypatch,
                                                                 capsys, reuse):
    """eval, predict and bench run with glibc keeping freed memory, as the trainer does:
    a plain process faults every batch's activations in again (eval 2.3x slower measured);
    ``--no-reuse-memory`` leaves the allocator alone."""
    import mobilenets.ops.cpu as cpu_module

    calls = []
    monkeypatch.setattr(cpu_module, "keep_freed_memory", lambda: calls.append(1) or True)
    off = [] if reuse else ["--no-reuse-memory"]
    img = png(tmp_path / "x.png")
    assert main(["predict", str(run_dir), str(img), *off]) == 0
    assert main(["eval", str(run_dir), "--data", str(idx_dir), "--out", str(tmp_path / "ev"), *off]) == 0
    assert main(["bench", "mobilenet_v3_small_minimal", "--width-mult", "0.25", "--resolution", "32",
                 "--batch", "1", "--backends", "eager", "--seconds", "0.05", "--threads", "1", *off]) == 0
    assert len(calls) == (3 if reuse else 0)
    capsys.readouterr()


def test_bench_records_which_allocator_behaviour_it_measured():
    """``freed_memory_kept`` says whether keep_freed_memory applied in this process, and the
    bench report's machine record carries it (the setting cannot be undone, so a later
    ``reuse_memory=False`` run in the same process still measures kept memory)."""
    code = ("import torch, mobilenets\nfrom mobilenets.deploy import bench\nfrom mobilenets.ops import cpu\n"
            "m = mobilenets.create_model('mobilenet_v3_small_minimal', width_mult=0.25, num_classes=4)\n"
            "kw = dict(batches=(1,), resolution=32, backends=('eager',), threads=1, seconds=0.02, peak_size=64)\n"
            "before = cpu.freed_memory_kept()\n"
            "plain = bench.benchmark(m, reuse_memory=False, **kw).machine['malloc']\n"
            "kept = bench.benchmark(m, **kw).machine['malloc']\n"
            "after = bench.benchmark(m, reuse_memory=False, **kw).machine['malloc']\n"
            "print(before, plain, '|', kept, '|', after, cpu.freed_memory_kept())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert out.split("|") == ["False default ", " freed memory kept ", " freed memory kept True\n"]
    else:
        assert out.split("|") == ["False default ", " default ", " default False\n"]
