"""Core ML export (:mod:`mobilenets.deploy.coreml`): converted on Linux, never run here.

What can be proven without an Apple device is proven: the package reads back with the
model's image input (RGB or grayscale, its size), a normalization equal to the
preprocessing's, every class label, and our metadata; the wrapped network computes
exactly the checkpoint's probabilities from what Core ML's image input gives it; a failed
conversion leaves the package that was there; every command that would run a package
refuses it in one line; a missing extra is named. Outside CI a missing coremltools skips."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets import create_model
from mobilenets.cli import main
from mobilenets.deploy import coreml
from mobilenets.deploy import export as deploy
from mobilenets.errors import MobilenetsError

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "fmnist_v3s_minimal_025.safetensors"
IMAGENET = {"input_size": 32, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(autouse=True)
def _coremltools() -> None:
    try:
        coreml.require_coremltools()
    except MobilenetsError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(CHECKPOINT.read_bytes())
    return ckpt


def test_a_grayscale_checkpoint_exports_as_an_image_classifier(checkpoint: Path, capfd) -> None:
    assert main(["export", str(checkpoint), "--format", "coreml"]) == 0
    out, err = capfd.readouterr()
    assert err == ""  # coremltools' progress bars and warnings go to the debug log
    package = checkpoint.with_suffix(".mlpackage")
    assert f"exported Core ML -> {package}" in out and "not checked: Core ML runs only on Apple" in out
    found = coreml.describe(package)
    _, meta = deploy.load_model(checkpoint)
    assert (found["input"], found["color"], found["size"]) == ("image", "GRAYSCALE", (28, 28))
    assert found["outputs"] == ["classLabel", "classLabel_probs"]
    assert found["classes"] == list(meta["classes"])
    assert found["meta"]["preprocessing"]["mean"] == meta["preprocessing"]["mean"]
    assert found["meta"]["model"] == "mobilenet_v3_small_minimal"


def test_an_rgb_package_normalizes_as_the_preprocessing_does(tmp_path: Path) -> None:
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.25).eval()
    result = deploy.export_model(model, "coreml", tmp_path / "m.mlpackage", preprocessing=IMAGENET,
                                 classes=["a", "b", "c", "d"])
    assert result.parity is None and result.files == [tmp_path / "m.mlpackage"]
    found = coreml.describe(result.path)
    assert (found["color"], found["size"], found["classes"]) == ("RGB", (32, 32), ["a", "b", "c", "d"])
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32)).astype(np.float32)
    core_ml = (pixels * found["scale"][0] + np.reshape(found["bias"], (1, 3, 1, 1))) \
        * np.reshape(found["inv_std"], (1, 3, 1, 1))
    ours = deploy.preprocess(torch.from_numpy(pixels).to(torch.uint8), IMAGENET)
    assert np.allclose(core_ml, ours, rtol=1e-3, atol=1e-3)  # 1/std is float16 in the package


def test_the_converted_network_gives_the_checkpoints_probabilities() -> None:
    """:class:`coreml.ImageInput` on ``pixel / 255 - mean`` (Core ML's image input) equals the
    model's softmax on the preprocessed image."""
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.25).eval()
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)
    with torch.no_grad():
        wrapped = coreml.ImageInput(model, IMAGENET["std"])(pixels / 255 - mean)
        direct = torch.softmax(model(torch.from_numpy(deploy.preprocess(pixels, IMAGENET))), 1)
    torch.testing.assert_close(wrapped, direct, rtol=1e-5, atol=1e-6)


def test_a_wrong_normalization_or_label_count_is_refused(tmp_path: Path, monkeypatch) -> None:
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.25).eval()
    package = tmp_path / "m.mlpackage"
    deploy.export_model(model, "coreml", package, preprocessing=IMAGENET)
    assert coreml.describe(package)["classes"] == ["0", "1", "2", "3"]
    with pytest.raises(MobilenetsError, match="input normalization"):
        coreml.check(package, {**IMAGENET, "std": [0.5, 0.5, 0.5]}, None, 4)
    with pytest.raises(MobilenetsError, match="4 class labels for 5 outputs"):
        coreml.check(package, IMAGENET, None, 5)


def test_reexport_replaces_the_package_and_a_failed_one_keeps_it(checkpoint: Path, monkeypatch) -> None:
    package = checkpoint.with_suffix(".mlpackage")
    assert main(["export", str(checkpoint), "--format", "coreml", "-o", str(package)]) == 0
    (package / "stale").write_text("from the old package")
    assert main(["export", str(checkpoint), "--format", "coreml", "-o", str(package)]) == 0
    assert not (package / "stale").exists()
    (package / "stale").write_text("from the old package")

    def broken(*args, **kwargs):
        raise MobilenetsError("the Core ML export is not right: simulated")

    monkeypatch.setattr(coreml, "check", broken)
    assert main(["export", str(checkpoint), "--format", "coreml", "-o", str(package)]) == 2
    assert (package / "stale").exists()
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.mlpackage", "best.safetensors"]


@pytest.mark.parametrize("argv", [["predict", "{p}", "{img}"], ["eval", "{p}", "--data", "fashion-mnist"],
                                  ["bench", "{p}"], ["export", "{p}", "--format", "onnx"],
                                  ["serve", "{p}", "--port", "8799"],
                                  ["train", "--init", "{p}", "--data", "fashion-mnist", "--out", "{run}"]])
def test_commands_that_would_run_a_package_refuse_it(argv, checkpoint: Path, tmp_path: Path, capsys) -> None:
    package = tmp_path / "m.mlpackage"
    (package / "Data").mkdir(parents=True)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    assert main([a.format(p=package, img=image, run=tmp_path / "run") for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Core ML package" in err and "Apple devices" in err


def test_int8_and_a_wrong_suffix_are_refused_before_any_work(checkpoint: Path, capsys) -> None:
    assert main(["export", str(checkpoint), "--format", "coreml", "--int8",
                 "--calibration-data", "fashion-mnist"]) == 2
    assert "coremltools.optimize" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--format", "coreml", "-o", str(checkpoint.with_suffix(".onnx"))]) == 2
    assert "a coreml export is a .mlpackage" in capsys.readouterr().err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.safetensors"]


def test_a_missing_coremltools_names_the_extra(checkpoint: Path, monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] == "coremltools":
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert main(["export", str(checkpoint), "--format", "coreml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mobilenets[coreml]'" in err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.safetensors"]


def test_a_model_that_is_not_rgb_or_grayscale_is_refused(tmp_path: Path) -> None:
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.25, in_chans=2).eval()
    pre = {"input_size": 32, "channels": 2, "mean": [0.5, 0.5], "std": [0.5, 0.5]}
    with pytest.raises(MobilenetsError, match="RGB or grayscale; this model takes 2 channels"):
        deploy.export_model(model, "coreml", tmp_path / "m.mlpackage", preprocessing=pre)
    assert list(tmp_path.iterdir()) == []
