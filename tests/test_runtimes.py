"""The mobile and edge runtimes (:mod:`mobilenets.deploy.runtimes`): every format exports
the trained fixture model with parity, quantizes it to int8 that agrees with the float
model on real images, carries its preprocessing and classes, reloads through the one
artifact loader, runs in ``eval``/``predict``/``bench``, and says which extra is missing.

Outside CI a runtime whose extra is not installed is skipped, saying so; in CI (``CI`` set,
as ``.ci/run`` runs) every extra is installed and a missing one fails."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets.cli import main
from mobilenets.deploy import export as deploy
from mobilenets.deploy.bench import benchmark
from mobilenets.deploy.runtimes import RUNTIMES, require
from mobilenets.errors import MobilenetsError
from mobilenets.io import artifact as artifacts
from mobilenets.io.checkpoint import load_model

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "fmnist_v3s_minimal_025.safetensors"
RUNNABLE = list(RUNTIMES)


def runtime(fmt: str) -> None:
    """Skip (outside CI) or fail (in CI) when ``fmt``'s extra is not installed."""
    try:
        require(fmt)
    except MobilenetsError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))


def rehash_sidecar(path: Path) -> None:
    """What an attacker who edited ``path`` does next: write its new hash into the sidecar."""
    import hashlib

    side = artifacts.sidecar_path(path)
    meta = json.loads(side.read_text())
    meta["artifact_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def fmnist():
    """The trained fixture model, 64 training images to calibrate on, 200 test images."""
    sample = np.load(FIXTURES / "fmnist_sample.npz")
    model, meta = load_model(CHECKPOINT)
    images = {k: torch.from_numpy(sample[k]).unsqueeze(1) for k in ("calibration_images", "test_images")}
    return model.eval(), deploy.resolve_preprocessing(model, meta), images, sample["test_labels"]


def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_float_export_reproduces_the_model_and_carries_its_preprocessing(fmt, fmnist, tmp_path):
    runtime(fmt)
    model, pre, images, _ = fmnist
    out = tmp_path / f"m{artifacts.EXTENSIONS[fmt]}"
    result = deploy.export_model(model, fmt, out, preprocessing=pre)
    assert result.path == out and result.parity.relative <= 1e-4
    assert all(p.is_file() for p in result.files) and artifacts.sidecar_path(out) in result.files
    loaded = artifacts.load(out)
    assert loaded.format == fmt and not loaded.int8
    assert loaded.preprocessing.record() == pre.record() and loaded.classes == list(pre.classes)
    x = deploy.preprocess(images["test_images"], pre)
    ref = logits(model, x)
    for batch in (1, 7, 200):  # any batch size, whatever the runtime's own shapes
        got = loaded(x[:batch])
        assert got.shape == (batch, 10)
        assert np.abs(got - ref[:batch]).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_int8_export_agrees_with_the_float_model_on_real_images(fmt, fmnist, tmp_path):
    """Calibrated on 64 training images, scored on 200 test images; the bound is the one the
    onnxruntime int8 test uses for this one-epoch model, which hesitates on more images than a
    finished one (``benchmarks/quant_accuracy.py`` measures the whole test set)."""
    runtime(fmt)
    model, pre, images, labels = fmnist
    out = tmp_path / f"m.int8{artifacts.EXTENSIONS[fmt]}"
    result = deploy.export_model(model, fmt, out, preprocessing=pre, int8=True,
                                 calibration_images=images["calibration_images"])
    assert result.int8 and result.agreement is not None and result.agreement >= 0.9
    assert "int8 top-1 agreement" in result.summary()
    loaded = artifacts.load(out)
    assert loaded.int8 and loaded.meta["int8"]["calibration_images"] == 64
    x = deploy.preprocess(images["test_images"], pre)
    got, ref = loaded(x).argmax(1), logits(model, x).argmax(1)
    assert (got == ref).mean() >= 0.97
    assert abs((got == labels).mean() - (ref == labels).mean()) <= 0.02


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_cli_export_eval_predict_bench(fmt, tmp_path, capsys):
    runtime(fmt)
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(CHECKPOINT.read_bytes())
    assert main(["export", str(ckpt), "--format", fmt]) == 0
    out = tmp_path / f"best{artifacts.EXTENSIONS[fmt]}"
    assert f"-> {out}" in capsys.readouterr().out
    sample = np.load(FIXTURES / "fmnist_sample.npz")
    from PIL import Image
    Image.fromarray(sample["test_images"][0]).save(tmp_path / "shoe.png")
    assert main(["predict", str(out), str(tmp_path / "shoe.png"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["predict", str(ckpt), str(tmp_path / "shoe.png"), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert [p["class"] for p in got[0]["top"]] == [p["class"] for p in want[0]["top"]]
    # int8 in bench is the same code path for every runtime; once (the cheapest) is enough.
    backends = [fmt, f"{fmt}-int8"] if fmt == "openvino" else [fmt]
    report = benchmark(load_model(ckpt)[0], batches=[1, 3], resolution=28, backends=backends,
                       threads=1, seconds=0.05, peak_size=64)
    assert all(r.median_ms and r.median_ms > 0 for r in report.results), report.table()


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_a_companion_or_sidecar_that_does_not_belong_is_refused(fmt, fmnist, tmp_path):
    runtime(fmt)
    model, pre, _, _ = fmnist
    a = deploy.export_model(model, fmt, tmp_path / f"a{artifacts.EXTENSIONS[fmt]}", preprocessing=pre)
    side = artifacts.sidecar_path(a.path)
    meta = json.loads(side.read_text())
    meta["artifact_sha256"] = "0" * 64
    side.write_text(json.dumps(meta))
    with pytest.raises(MobilenetsError, match="SHA-256 differs"):
        artifacts.load(a.path)
    side.unlink()
    with pytest.raises(MobilenetsError, match="not found"):
        artifacts.load(a.path)


@pytest.mark.parametrize("fmt", list(RUNTIMES))
def test_a_missing_extra_is_named(fmt, monkeypatch, tmp_path, capsys):
    """Without the runtime's packages: one error naming the extra, before any work."""
    real_import = builtins.__import__
    blocked = RUNTIMES[fmt].packages

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in blocked:
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda name, package=None: fake_import(name))
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(CHECKPOINT.read_bytes())
    assert main(["export", str(ckpt), "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pip install 'mobilenets[{RUNTIMES[fmt].extra}]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]


@pytest.mark.parametrize("fmt", RUNNABLE)
def test_int8_with_a_bad_calibration_folder_is_one_error(fmt, tmp_path, capsys):
    runtime(fmt)
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(CHECKPOINT.read_bytes())
    (tmp_path / "empty").mkdir()
    for data in (tmp_path / "missing", tmp_path / "empty"):
        assert main(["export", str(ckpt), "--format", fmt, "--int8", "--calibration-data", str(data)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "empty"]


def test_an_openvino_graph_with_a_foreign_operation_is_refused(fmnist, tmp_path):
    """An attacker writes the IR and its sidecar (hash recomputed): an operation outside
    OpenVINO's opsets (where a custom extension would hook in) is one error, not a load."""
    runtime("openvino")
    model, pre, _, _ = fmnist
    a = deploy.export_model(model, "openvino", tmp_path / "a.xml", preprocessing=pre)
    text = a.path.read_text()
    a.path.write_text(text.replace('type="ReLU" version="opset1"', 'type="EvilOp" version="extension"', 1))
    assert a.path.read_text() != text
    rehash_sidecar(a.path)
    with pytest.raises(MobilenetsError, match="not a loadable openvino file"):
        artifacts.load(a.path)


def _with_custom_operation(path: Path, name: str) -> None:
    """Rewrite a ``.tflite`` so that its first operation is the custom operation ``name``
    (``Flex...``: a TensorFlow kernel), and re-hash its sidecar as an attacker would."""

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    code = model.operatorCodes[0]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = name
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    rehash_sidecar(path)


@pytest.fixture(scope="module")
def litert_file(fmnist, tmp_path_factory):
    runtime("litert")
    model, pre, _, _ = fmnist
    return deploy.export_model(model, "litert", tmp_path_factory.mktemp("litert") / "a.tflite",
                               preprocessing=pre).path


@pytest.mark.parametrize("int8", [False, True])
def test_the_docs_litert_snippet_classifies_like_mobilenets(int8, litert_file, fmnist, tmp_path,
                                                            monkeypatch, capsys):
    """docs/deployment.md's LiteRT snippet (the interpreter alone, int8 I/O by hand) names the
    class that mobilenets' loader predicts, for the float and the int8 file."""
    model, pre, images, _ = fmnist
    (tmp_path / "run").mkdir()
    target = tmp_path / "run" / "best.tflite"
    if int8:
        deploy.export_model(model, "litert", target, preprocessing=pre, int8=True,
                            calibration_images=images["calibration_images"])
    else:
        target.write_bytes(litert_file.read_bytes())
        artifacts.sidecar_path(target).write_bytes(artifacts.sidecar_path(litert_file).read_bytes())
    from PIL import Image
    sample = np.load(FIXTURES / "fmnist_sample.npz")
    Image.fromarray(sample["test_images"][0]).save(tmp_path / "shoe.png")
    docs = (Path(__file__).parents[1] / "docs" / "deployment.md").read_text()
    snippet = docs.split("## LiteRT (TFLite)", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    want = artifacts.load(target).predict([str(tmp_path / "shoe.png")], top_k=1)[0]
    capsys.readouterr()
    exec(compile(snippet, "deployment.md", "exec"), {})
    assert capsys.readouterr().out.strip() == want.top[0][0]


@pytest.mark.parametrize("name", ["FlexAddV2", "EvilOp"])
def test_a_litert_file_with_a_custom_operation_is_refused(name, litert_file, tmp_path, monkeypatch):
    """An attacker writes the .tflite and its sidecar: a custom or Flex operation (where a
    registerer from a shared library or TensorFlow's kernels would hook in) is one error,
    raised before the interpreter reads the file."""
    import ai_edge_litert.interpreter

    path = tmp_path / "a.tflite"
    path.write_bytes(litert_file.read_bytes())
    artifacts.sidecar_path(path).write_bytes(artifacts.sidecar_path(litert_file).read_bytes())
    _with_custom_operation(path, name)
    monkeypatch.setattr(ai_edge_litert.interpreter, "Interpreter", lambda *a, **k: pytest.fail("interpreter built"))
    with pytest.raises(MobilenetsError, match=f"not a loadable litert file: it names custom operations \\({name}\\)"):
        artifacts.load(path)
    path.write_bytes(b"not a flatbuffer" * 8)
    side = artifacts.sidecar_path(path)
    side.write_text(json.dumps({**json.loads(side.read_text()), "artifact_sha256": None}))
    with pytest.raises(MobilenetsError, match="not a loadable litert file"):
        artifacts.load(path)


def test_litert_runs_on_the_threads_asked_for(litert_file, monkeypatch):
    import ai_edge_litert.interpreter

    seen = []
    real = ai_edge_litert.interpreter.Interpreter

    def spy(*args, **kwargs):
        seen.append(kwargs.get("num_threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ai_edge_litert.interpreter, "Interpreter", spy)
    artifacts.load(litert_file, threads=3)
    artifacts.load(litert_file)
    assert seen == [3, torch.get_num_threads()]


def test_litert_export_keeps_third_party_output_off_the_terminal(tmp_path):
    """litert-torch, torchao, absl and XNNPACK print on import, conversion and load (C++
    logs, warnings, a progress display); a fresh process shows none of it, only our lines."""
    import subprocess
    import sys

    runtime("litert")
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(CHECKPOINT.read_bytes())
    sample = np.load(FIXTURES / "fmnist_sample.npz")
    from PIL import Image
    (tmp_path / "calib").mkdir()
    for i in range(8):
        Image.fromarray(sample["calibration_images"][i]).save(tmp_path / "calib" / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "mobilenets", "export", str(ckpt), "--format", "litert",
                           "--int8", "--calibration-data", str(tmp_path / "calib"), "--calibration-size", "8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[0] == f"exported int8 litert -> {tmp_path / 'best.int8.tflite'}"
    assert all(line.split(" ", 1)[0] in ("exported", "parity:", "int8", "metadata") for line in done.stdout.splitlines())


@pytest.mark.parametrize("name, foreign", [
    (b"XnnpackBackend", b"ForeignBackend"),  # a delegate blob for a backend not compiled in
    (b"executorch_prim::et_view", b"executorch_prim::et_evil"),  # an operator not in the registry
])
def test_an_executorch_program_with_a_foreign_backend_or_operator_is_refused(name, foreign, fmnist, tmp_path):
    """An attacker writes the ``.pte`` and its sidecar (hash recomputed): a delegate that is
    not one the ExecuTorch runtime was built with, or an operator outside its kernel
    registry, is one error (ExecuTorch never loads a library named by the file)."""
    runtime("executorch")

    model, pre, _, _ = fmnist
    a = deploy.export_model(model, "executorch", tmp_path / "a.pte", preprocessing=pre)
    data = a.path.read_bytes()
    assert name in data
    a.path.write_bytes(data.replace(name, foreign))
    rehash_sidecar(a.path)
    with pytest.raises(MobilenetsError, match="not a loadable executorch file"):
        artifacts.load(a.path)


def test_executorch_runs_batches_beyond_its_planned_bound(fmnist, tmp_path):
    """The program is planned for at most ``MAX_BATCH`` images: a larger batch is cut into
    runs whose logits are joined in order."""
    runtime("executorch")
    from mobilenets.deploy.runtimes import executorch as et

    model, pre, images, _ = fmnist
    a = deploy.export_model(model, "executorch", tmp_path / "a.pte", preprocessing=pre)
    x = deploy.preprocess(images["test_images"], pre)[: et.MAX_BATCH * 2 + 3]
    run = et.load(a.path, threads=1)
    got, ref = run(x), logits(model, x)
    assert got.shape == (len(x), 10)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_executorch_export_prints_nothing_of_its_libraries(tmp_path, capfd):
    """torchao's CUDA warnings, torch's deprecations, XNNPACK's ``basicConfig`` and
    ExecuTorch's C++ cpuinfo lines stay out of the terminal (``--verbose`` shows them)."""
    runtime("executorch")
    import logging

    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(CHECKPOINT.read_bytes())
    root = logging.getLogger().handlers[:]
    assert main(["export", str(ckpt), "--format", "executorch"]) == 0
    out, err = capfd.readouterr()
    assert err == "" and "exported executorch ->" in out and "cpuinfo" not in out
    assert logging.getLogger().handlers == root


def test_the_docs_executorch_snippet_runs_an_export_outside_mobilenets(fmnist, tmp_path, capsys):
    """docs/deployment.md shows how to run the ``.pte`` with ExecuTorch's own API and the
    sidecar's preprocessing: that snippet, on a real export, names the model's class."""
    runtime("executorch")
    import re

    model, pre, images, _ = fmnist
    a = deploy.export_model(model, "executorch", tmp_path / "best.pte", preprocessing=pre)
    text = (Path(__file__).parents[1] / "docs" / "deployment.md").read_text()
    section = text[text.index("## ExecuTorch (XNNPACK)"):]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    code = code.replace("run/best.pte", str(a.path)).replace(
        "np.zeros((1, p[\"channels\"], p[\"input_size\"], p[\"input_size\"]), np.uint8)", "pixels_in")
    assert "pixels_in" in code and str(a.path) in code
    pixels = images["test_images"][:1].numpy()
    exec(compile(code, "deployment.md", "exec"), {"pixels_in": pixels})
    with torch.no_grad():
        want = model(torch.from_numpy(deploy.preprocess(images["test_images"][:1], pre))).argmax(1)
    assert capsys.readouterr().out.strip() == pre.classes[int(want[0])]


def test_backend_names_the_files_runtime(tmp_path, capsys):
    """``--backend`` of predict runs a file on its own runtime; another is one error naming the way."""
    from mobilenets.io.artifact import RUNNERS, check_runner, runner_of

    assert set(RUNTIMES) <= set(RUNNERS)
    assert [runner_of(k) for k in ("checkpoint", "pt2", "onnx-int8", "openvino", "litert")] == \
        ["torch", "torch", "onnxruntime", "openvino", "litert"]
    check_runner("m.xml", "openvino", "openvino")
    with pytest.raises(MobilenetsError, match="export --format executorch"):
        check_runner("m.xml", "openvino", "executorch")
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(CHECKPOINT.read_bytes())
    assert main(["predict", str(ckpt), str(ckpt), "--backend", "litert"]) == 2
    assert "--backend litert cannot run" in capsys.readouterr().err
