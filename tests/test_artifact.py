"""One artifact loader (issue 27 item 5, issue 31's FIFO hang): ``artifact_kind`` decides what a
file is once, ``load`` gives every kind one interface, and a FIFO is refused at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenets
from mobilenets.cli.main import main
from mobilenets.deploy.export import export_checkpoint, export_model
from mobilenets.errors import MobilenetsError
from mobilenets.io.artifact import Artifact, artifact_kind, load, load_artifact, require_checkpoint

pytest.importorskip("onnxruntime")

PRE = {"input_size": 32, "channels": 1, "mean": [0.3], "std": [0.35]}
CLASSES = [f"class{i}" for i in range(10)]
SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small model as a checkpoint (in a run directory) and as each export."""
    d = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v3_small_minimal", width_mult=0.25, num_classes=10,
                                    in_chans=1, small_input=True)
    ckpt = mobilenets.save_model(model, d / "run" / "best.safetensors", preprocessing=PRE, classes=CLASSES)
    out = {"checkpoint": ckpt, "run": d / "run"}
    for fmt in ("onnx", "pt2", "torchscript"):
        out[fmt] = export_checkpoint(ckpt, fmt).path
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out["onnx-int8"] = export_model(model, "onnx", d / "m.int8.onnx", preprocessing=PRE, classes=CLASSES,
                                    int8=True, calibration_images=images).path
    return out


@pytest.mark.parametrize("name,kind", [("checkpoint", "checkpoint"), ("run", "checkpoint"), ("onnx", "onnx"),
                                       ("onnx-int8", "onnx-int8"), ("pt2", "pt2"),
                                       ("torchscript", "torchscript")])
def test_the_kind_of_each_file_is_decided_once(files: dict[str, Path], name: str, kind: str) -> None:
    assert artifact_kind(files[name]) == kind
    artifact = load(files[name], trust_code=True)
    assert artifact.format == kind and isinstance(artifact, Artifact)
    assert artifact.preprocessing.record() == PRE and artifact.classes == CLASSES
    assert (artifact.model is not None) == (kind == "checkpoint")
    if kind == "checkpoint":
        assert not artifact.model.training  # loaded in eval mode
        assert require_checkpoint(files[name], "export") == files["checkpoint"]
    else:
        with pytest.raises(MobilenetsError, match="is an exported model; export takes the .safetensors"):
            require_checkpoint(files[name], "export")


def test_kind_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(MobilenetsError, match="not found"):
        artifact_kind(tmp_path / "nope.onnx")
    (tmp_path / "photo.png").write_bytes(b"x")
    with pytest.raises(MobilenetsError, match="is not a checkpoint or an exported model"):
        artifact_kind(tmp_path / "photo.png")
    with pytest.raises(MobilenetsError, match="without best/model/last.safetensors"):
        artifact_kind(tmp_path)
    with pytest.raises(MobilenetsError, match="is a checkpoint, not an exported model"):
        load_artifact(files["checkpoint"])
    with pytest.raises(MobilenetsError, match="TorchScript and was not loaded"):
        load(files["torchscript"])  # the security policy holds through load()
    with pytest.raises(MobilenetsError, match="checkpoint not found"):
        require_checkpoint(tmp_path / "gone.safetensors", "--init")


def _png(path: Path, seed: int, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_predict_is_the_same_for_a_checkpoint_and_its_exports(files: dict[str, Path], fmt: str,
                                                              tmp_path: Path) -> None:
    paths = [_png(tmp_path / f"{i}.png", i, size) for i, size in enumerate([(32, 32), (50, 31), (20, 70)])]
    reference, export = load(files["checkpoint"]), load(files[fmt])
    assert export.preprocessing == reference.preprocessing
    for images in (paths, torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)):
        want, got = reference.predict(images, top_k=3), export.predict(images, top_k=3)
        assert [p.path for p in got] == [p.path for p in want]
        for a, b in zip(got, want):
            assert [c for c, _ in a.top] == [c for c, _ in b.top]
            np.testing.assert_allclose([v for _, v in a.top], [v for _, v in b.top], atol=1e-4)
    x = reference.preprocessing.apply(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8))
    np.testing.assert_allclose(export(x), reference(x), rtol=1e-3, atol=1e-4)


def test_predict_matches_the_command_line(files: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    img = _png(tmp_path / "a.png", 0, (40, 40))
    for name in ("run", "onnx", "pt2"):
        capsys.readouterr()
        assert main(["predict", str(files[name]), str(img), "--top-k", "1"]) == 0
        c, p = load(files[name]).predict([img], top_k=1)[0].top[0]
        assert capsys.readouterr().out.strip() == f"{img}: {c} {p:.3f}"
    assert main(["predict", str(files["run"]), str(img), "--backend", "onnxruntime"]) == 2
    assert "--backend onnxruntime cannot run" in capsys.readouterr().err


_PROBE = """
import sys
from mobilenets.cli.main import main
from mobilenets.errors import MobilenetsError
from mobilenets.io.artifact import load
from mobilenets.io.checkpoint import load_model
path, image = sys.argv[1], sys.argv[2]
for call in (lambda: load(path), lambda: load_model(path)):
    try:
        call()
        print("loaded")
    except MobilenetsError as e:
        print("refused:", e)
for argv in (["predict", path, image], ["eval", path, "--data", image], ["bench", path],
             ["export", path], ["train", "--init", path, "--data", image, "--out", image + ".out"]):
    print("rc", main(argv))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("name", ["model.safetensors", "model.onnx", "model.pt2", "run/best.safetensors"])
def test_a_fifo_is_refused_without_hanging(tmp_path: Path, name: str) -> None:
    """Opening a FIFO for reading blocks until a writer comes: every loader must refuse it
    before opening it. The probe runs in a subprocess with a timeout, so a hang fails the test
    instead of stopping the suite."""
    fifo = tmp_path / name
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)
    target = fifo.parent if name.startswith("run/") else fifo
    image = _png(tmp_path / "x.png", 0, (32, 32))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(target), str(image)], capture_output=True,
                          text=True, timeout=120, env=env)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded" not in out and out.count("refused:") == 2, out
    assert out.count("rc 2") == 5, out
    if target == fifo:
        assert "is not a regular file" in out, out
    else:  # a run directory whose checkpoint is a FIFO has no checkpoint
        assert "without best/model/last.safetensors" in out, out
