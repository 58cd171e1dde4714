"""Issue 31: hostile input and faults, round two. One test per class of bad input: each is
refused at its root (the shared loader or validator) with one ``error:`` line and status 2,
never a traceback, a hang or a silently wrong model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from mobilenets import MobilenetsError, create_model, save_model
from mobilenets.cli.main import main
from mobilenets.io import convert
from mobilenets.io.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

PRE = {"input_size": 32, "mean": [0.5], "std": [0.25], "channels": 1}
CLASSES = ["zero", "one", "two"]


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in-process; assert the user-error contract (status 2, exactly one line on
    stderr, an ``error:`` one, no usage block, no traceback) and return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny grayscale 3-class checkpoint, as `train` writes one."""
    model = create_model("mobilenet_v3_small", width_mult=0.25, num_classes=3, in_chans=1, small_input=True)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "m.safetensors", preprocessing=PRE,
                      classes=CLASSES)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    return path


def rewrite(src: Path, dst: Path, meta_change=None, tensor_change=None) -> Path:
    """A copy of a checkpoint with its metadata or tensors edited, as a hostile file would be."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["mobilenets"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, str(dst), metadata={"mobilenets": json.dumps(meta)})
    return dst


# --------------------------------------------------------------------------- command lines

@pytest.mark.parametrize("argv, expected", [
    (["train", "--widht-mult", "2"], "unrecognized arguments: --widht-mult 2 (did you mean '--width-mult'?)"),
    (["bench", "m", "--sedonds=3"], "unrecognized argument: --sedonds=3 (did you mean '--seconds'?)"),
    (["train", "--recipe", "small-image"], "invalid choice: 'small-image' (did you mean 'small-images'?)"),
    (["trian"], "invalid command: 'trian' (did you mean 'train'?)"),
    (["convert", "x", "--from", "torchvison", "--model", "m", "-o", "o"], "did you mean 'torchvision'?"),
    (["train", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["convert", "x"], "the following arguments are required"),
])
def test_command_line_mistakes_are_one_line_with_the_closest_choice(
        argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = cli_error(capsys, argv)
    assert expected in line and "usage:" not in line


# --------------------------------------------------------------------------- weights

def test_non_finite_weights_are_refused_at_load_naming_the_tensor(ckpt: Path, tmp_path: Path, image: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for value in (float("nan"), float("inf")):
        bad = rewrite(ckpt, tmp_path / "bad.safetensors",
                      tensor_change=lambda t: t["classifier.bias"].__setitem__(1, value))
        with pytest.raises(MobilenetsError, match=r"tensor classifier.bias holds 1 non-finite value"):
            load_model(bad)
        assert "classifier.bias" in cli_error(capsys, ["predict", str(bad), str(image), "--json"])


def test_non_finite_source_weights_are_refused_at_convert(tmp_path: Path) -> None:
    state = create_model("mobilenet_v3_small").state_dict()
    name = "features.0.conv.weight" if "features.0.conv.weight" in state else next(iter(state))
    state[name].view(-1)[0] = float("-inf")
    with pytest.raises(MobilenetsError, match=rf"torchvision weights: tensor {name} holds 1 non-finite"):
        convert.from_torchvision(state, "mobilenet_v3_small")


def test_integer_tensors_for_float_weights_are_refused(ckpt: Path, tmp_path: Path) -> None:
    bad = rewrite(ckpt, tmp_path / "int.safetensors",
                  tensor_change=lambda t: t.update({"classifier.weight": t["classifier.weight"].to(torch.int32)}))
    with pytest.raises(MobilenetsError, match=r"wrong kind.*classifier.weight \(torch.int32 for torch.float32\)"):
        load_model(bad)
    state = create_model("mobilenet_v3_small").state_dict()
    state["classifier.weight"] = state["classifier.weight"].to(torch.int64)
    with pytest.raises(MobilenetsError, match=r"'classifier.weight' holds torch.int64 values"):
        convert.from_torchvision(state, "mobilenet_v3_small")


def test_predict_json_never_writes_nan(ckpt: Path, tmp_path: Path, image: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Finite weights can still overflow to inf logits (softmax: NaN): those are ``null``."""
    huge = rewrite(ckpt, tmp_path / "huge.safetensors",
                   tensor_change=lambda t: (t["head.fc.bias"].fill_(10), t["classifier.weight"].fill_(3e38)))
    assert main(["predict", str(huge), str(image), "--json"]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    out = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert [t["probability"] for t in out[0]["top"]] == [None, None, None]


# --------------------------------------------------------------------------- metadata

def test_metadata_channels_must_match_the_weights(ckpt: Path, tmp_path: Path, image: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(ckpt, tmp_path / "ch.safetensors", meta_change=lambda m: m["preprocessing"].update(
        channels=3, mean=[0.5] * 3, std=[0.25] * 3))
    line = cli_error(capsys, ["predict", str(bad), str(image)])
    assert "metadata preprocessing says 3 input channels but the weights' first convolution takes 1" in line


@pytest.mark.parametrize("size", [16384, 4, 1025])
def test_metadata_input_size_is_bounded_like_training(size: int, ckpt: Path, tmp_path: Path, image: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(ckpt, tmp_path / "size.safetensors",
                  meta_change=lambda m: m["preprocessing"].update(input_size=size))
    assert f"input_size must be an integer in 8..1024, got {size}" in cli_error(
        capsys, ["predict", str(bad), str(image)])


def test_an_unreadable_checkpoint_says_permission_denied(ckpt: Path, tmp_path: Path, image: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(ckpt.read_bytes())
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make this one file unreadable to it
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != locked and real(p, mode, **k))
    line = cli_error(capsys, ["predict", str(locked), str(image)])
    assert line == f"error: permission denied: cannot read checkpoint {locked}"


def test_class_names_are_escaped_on_a_terminal(ckpt: Path, tmp_path: Path, image: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    hostile = ["\x1b[2J\x1b[31mred", "two\nerror: forged line", "ok"]
    bad = rewrite(ckpt, tmp_path / "esc.safetensors", meta_change=lambda m: m.update(classes=hostile))
    assert main(["predict", str(bad), str(image), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == 1
    assert "\\x1b[2J\\x1b[31mred" in out and "two\\nerror: forged line" in out
    assert main(["predict", str(bad), str(image), "--json"]) == 0
    names = {t["class"] for t in json.loads(capsys.readouterr().out)[0]["top"]}
    assert names == set(hostile)  # JSON escapes them itself and keeps them exact
