"""Deployment: BN folding, checked exports of every model, int8, loading, bench, CLI errors.

Models are tiny (width 0.25, 1 channel, 28-32 px) so the whole file stays fast; BatchNorm
statistics are randomised so that folding and parity have something to get wrong.
"""

import json
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mobilenets
from datagen import randomize_batchnorm
from mobilenets.deploy import bench, timing
from mobilenets.deploy import export as deploy
from mobilenets.io.checkpoint import load_model, save_model
from mobilenets.cli.main import main
from mobilenets.ops.cpu import bf16_supported, reduce_range_default

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ALL_MODELS = mobilenets.list_models()
PRE = {"input_size": 32, "channels": 1, "mean": [0.3], "std": [0.35]}
CLASSES = [f"class{i}" for i in range(10)]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, **kw) -> nn.Module:
    """A width-0.25 grayscale model with random BN statistics and affine parameters; the
    same weights on every call, so a cached export and a fresh model can be compared."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = mobilenets.create_model(name, width_mult=0.25, num_classes=10, in_chans=1,
                                        small_input=True, **kw)
    return randomize_batchnorm(model, seed=0)


def random_images(n: int, size: int = 32, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def normal_inputs(n: int = 3, size: int = 32) -> np.ndarray:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(2)).numpy()


# ----------------------------------------------------------------------------- folding

@pytest.mark.parametrize("name,kw", [("mobilenet_v1", {"depth_multiplier": 2}),
                                     ("mobilenet_v2", {"padding": "same"}),
                                     ("mobilenet_v3_small", {})])
def test_fold_batchnorm_equals_unfolded_in_eval(name, kw):
    model = tiny(name, **kw)
    model.train()
    folded = deploy.prepare_for_inference(model)
    assert model.training, "folding must not change the original model"
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in folded.modules())
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_fold_conv_bn_matches_batchnorm_formula():
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6, eps=1e-3).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    x = torch.randn(2, 4, 8, 8)
    # The formula in float64, rounded once: what folding must store, to the bit.
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = (conv.weight.double() * scale.reshape(-1, 1, 1, 1)).float()
    bias = (bn.bias.double() + (conv.bias.double() - bn.running_mean.double()) * scale).float()
    with torch.no_grad():
        expected = bn(conv(x))
        deploy.fold_conv_bn_(conv, bn)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(conv.weight, weight) and torch.equal(conv.bias, bias)


# ----------------------------------------------------------------------------- exports

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name, fmt)``: the checked export of ``tiny(name)``, made once per module
    (exports dominate this file's run time, and the int8 tests start from the ONNX ones)."""
    directory = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(name: str, fmt: str) -> deploy.ExportResult:
        if (name, fmt) not in cache:
            path = directory / f"{name}{deploy.EXTENSIONS[fmt]}"
            cache[name, fmt] = deploy.export_model(tiny(name), fmt, path, preprocessing=PRE,
                                                   classes=CLASSES)
        return cache[name, fmt]
    return get


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_exports_and_quantizes(name, exported, tmp_path):
    for fmt in ("onnx", "torchscript"):
        result = exported(name, fmt)
        assert result.parity.ok and result.parity.relative < deploy.FLOAT_TOLERANCE
        assert result.parity.batch_sizes == (1, 3)  # traced at batch 2: the batch is dynamic
        assert result.parity.top1_agreement == 1.0
        artifact = deploy.load_artifact(result.path, trust_code=True)  # we made the TorchScript
        assert artifact.preprocessing.record() == PRE and artifact.classes == CLASSES
        assert artifact.format == fmt and not artifact.int8
    sidecar = exported(name, "torchscript").files[1]
    assert sidecar.name == f"{name}.pt.json"
    assert json.loads(sidecar.read_text())["preprocessing"] == PRE

    graph = onnx.load(exported(name, "onnx").path)
    ops = {n.op_type for n in graph.graph.node}
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not ops & {"BatchNormalization", "Dropout"}
    if name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        assert "HardSwish" in ops  # the native op, not a decomposition
        # squeeze-excite's gate: a Clip of its convolution, which OpenCV computes right
        assert "HardSigmoid" not in ops and "Clip" in ops
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value

    # int8 works for every model (V1/V2 ReLU6, V3 hard-swish and squeeze-excite).
    int8 = tmp_path / f"{name}.int8.onnx"
    images = random_images(16)
    deploy.quantize_onnx(exported(name, "onnx").path, int8, images, PRE)
    parity = deploy.check_parity(deploy.load_artifact(int8, trust_code=True), tiny(name),
                                 deploy.preprocess(images[:8], PRE), deploy.INT8_TOLERANCE)
    assert parity.ok, parity.summary()


def test_pt2_export_has_dynamic_batch_and_sidecar(tmp_path):
    path = tmp_path / "m.pt2"
    result = deploy.export_model(tiny("mobilenet_v3_small"), "pt2", path, preprocessing=PRE)
    assert result.parity.ok
    assert result.files == [path, tmp_path / "m.pt2.json"]
    artifact = deploy.load_artifact(path, trust_code=True)
    assert artifact.format == "pt2" and artifact(normal_inputs(7)).shape == (7, 10)


def test_parity_failure_is_an_error(tmp_path, monkeypatch):
    model = tiny("mobilenet_v3_small_minimal")
    ref = model(torch.from_numpy(normal_inputs(4))).detach().numpy()
    off = deploy.check_parity(lambda x: model(torch.from_numpy(x)).detach().numpy() * 1.01,
                              model, normal_inputs(4), deploy.FLOAT_TOLERANCE)
    assert not off.ok and off.relative == pytest.approx(0.01, rel=1e-3)
    assert off.max_abs_logit == pytest.approx(float(np.abs(ref).max()), rel=1e-6)

    real_load = deploy.load_artifact

    def broken(path, threads=None, **kw):
        artifact = real_load(path, threads, **kw)
        run = artifact.run
        artifact.run = lambda x: run(x) + 1.0
        return artifact

    good = deploy.export_model(model, "torchscript", tmp_path / "m.pt", preprocessing=PRE).path
    before = (good.read_bytes(), deploy.sidecar_path(good).read_bytes())
    monkeypatch.setattr(deploy, "load_artifact", broken)
    with pytest.raises(mobilenets.MobilenetsError,
                       match=r"does not reproduce.*random inputs.*kept for inspection as .*m\.rejected\.pt, "
                             r"and .*m\.pt is unchanged"):
        deploy.export_model(model, "torchscript", tmp_path / "m.pt", preprocessing=PRE)
    # The artifact that was there is untouched; the failed one lies beside it, with its sidecar.
    assert (good.read_bytes(), deploy.sidecar_path(good).read_bytes()) == before
    assert (tmp_path / "m.rejected.pt").is_file() and (tmp_path / "m.rejected.pt.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json", "m.rejected.pt",
                                                          "m.rejected.pt.json"]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_a_model_file_replaced_beside_its_sidecar_is_refused(fmt, tmp_path):
    """Classes and normalization live in the sidecar: another model file next to it would be
    served with them, silently wrong; the sidecar's SHA-256 of its file prevents that."""
    suffix = deploy.EXTENSIONS[fmt]
    a = deploy.export_model(tiny("mobilenet_v3_small_minimal"), fmt, tmp_path / f"a{suffix}",
                            preprocessing=PRE, classes=list("abcdefghij")).path
    b = deploy.export_model(tiny("mobilenet_v3_small"), fmt, tmp_path / f"b{suffix}",
                            preprocessing=PRE).path
    shutil.copyfile(b, a)
    with pytest.raises(mobilenets.MobilenetsError, match="describes another model file .*SHA-256"):
        deploy.load_artifact(a, trust_code=True)


def test_load_artifact_errors(tmp_path):
    with pytest.raises(mobilenets.MobilenetsError, match="not found"):
        deploy.load_artifact(tmp_path / "missing.onnx", trust_code=True)
    (tmp_path / "m.pt").write_bytes(b"not a model")
    with pytest.raises(mobilenets.MobilenetsError, match="m.pt.json not found"):
        deploy.load_artifact(tmp_path / "m.pt", trust_code=True)
    (tmp_path / "m.pt.json").write_text(json.dumps({"format": "torchscript"}))
    with pytest.raises(mobilenets.MobilenetsError, match="lacks its preprocessing"):
        deploy.load_artifact(tmp_path / "m.pt", trust_code=True)
    (tmp_path / "m.pt.json").write_text(json.dumps({"format": "torchscript", "preprocessing": PRE}))
    with pytest.raises(mobilenets.MobilenetsError, match="not a loadable torchscript file"):
        deploy.load_artifact(tmp_path / "m.pt", trust_code=True)
    (tmp_path / "m.pt2").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "m.pt2.json").write_text(json.dumps({"format": "pt2", "preprocessing": PRE}))
    with pytest.raises(mobilenets.MobilenetsError, match=r"not a pt2 file \(not a readable zip"):
        deploy.load_artifact(tmp_path / "m.pt2", trust_code=True)
    for bad, message in (([], "lacks its preprocessing"),
                         ({"format": "pt2", "preprocessing": {**PRE, "input_size": -5}}, "input_size must be"),
                         ({"format": "pt2", "preprocessing": {**PRE, "mean": "x"}}, "mean must be")):
        (tmp_path / "m.pt2.json").write_text(json.dumps(bad))
        with pytest.raises(mobilenets.MobilenetsError, match=message):
            deploy.load_artifact(tmp_path / "m.pt2", trust_code=True)
    with pytest.raises(mobilenets.MobilenetsError, match="is not a checkpoint or an exported model"):
        deploy.load_artifact(tmp_path / "m.pt2.json", trust_code=True)


def test_artifact_whose_metadata_does_not_fit_its_graph(exported, tmp_path):
    """A sidecar edited to the wrong channel count for its graph: one clear error when run."""
    result = exported("mobilenet_v3_small", "torchscript")
    copy = tmp_path / "m.pt"
    copy.write_bytes(result.path.read_bytes())
    meta = json.loads(deploy.sidecar_path(result.path).read_text())
    wrong = 3 if meta["preprocessing"]["channels"] == 1 else 1
    meta["preprocessing"] = {**meta["preprocessing"], "channels": wrong, "mean": [0.5] * wrong,
                             "std": [0.5] * wrong}
    deploy.sidecar_path(copy).write_text(json.dumps(meta))
    artifact = deploy.load_artifact(copy, trust_code=True)
    c = artifact.preprocessing.channels
    s = artifact.preprocessing.input_size
    with pytest.raises(mobilenets.MobilenetsError, match=rf"failed on inputs of shape \(1, {wrong}, "):
        artifact(np.zeros((1, c, s, s), np.float32))


# ----------------------------------------------------------------------------- int8

@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_int8_rewrite_is_exact_in_float(name, exported, tmp_path):
    """The ops swapped in for onnxruntime's int8 kernels compute the same function, with
    squeeze-excite's hard-sigmoid folded into its convolution (one ``Clip`` left) and
    hard-swish's ``/6`` into the layers reading it (two passes), except where a residual
    ``Add`` reads it (the stem, with the small-input stem: three passes)."""
    proto = onnx.load(exported(name, "onnx").path)
    before = Counter(n.op_type for n in proto.graph.node)
    rewritten = deploy.int8_friendly(proto)
    ops = Counter(n.op_type for n in rewritten.graph.node)
    assert not ops.keys() & {"HardSwish", "HardSigmoid", "ReduceMean"}
    assert ops["GlobalAveragePool"] == before["ReduceMean"] > 0
    # The export already made squeeze-excite's gate a Clip (onnx.fold_gates).
    assert before["HardSigmoid"] == 0 and ops["Clip"] == before["HardSwish"] + before["Clip"] > 0
    residual_inputs = {n.input[i] for n in proto.graph.node if n.op_type == "Add" for i in (0, 1)}
    unfolded = sum(n.output[0] in residual_inputs for n in proto.graph.node
                   if n.op_type == "HardSwish")
    assert unfolded < before["HardSwish"]
    inits = {t.name for t in rewritten.graph.initializer}
    constant_muls = [n for n in rewritten.graph.node
                     if n.op_type == "Mul" and any(i in inits for i in n.input)]
    assert len(constant_muls) == unfolded
    assert ops["Mul"] == before["Mul"] + before["HardSwish"] + unfolded
    assert ops["Add"] == before["Add"] + before["HardSwish"]
    onnx.save(rewritten, tmp_path / "b.onnx")
    x = {"input": normal_inputs(4)}
    a = deploy.onnx_session(exported(name, "onnx").path).run(None, x)[0]
    b = deploy.onnx_session(tmp_path / "b.onnx").run(None, x)[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_int8_rewrite_without_foldable_neighbours(tmp_path):
    """Hard-sigmoid not fed by a convolution, hard-swish read by a graph output: the
    unfolded forms, still the same function."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("HardSigmoid", ["x"], ["g"], alpha=0.25, beta=0.4),
         helper.make_node("Mul", ["x", "g"], ["m"]),
         helper.make_node("HardSwish", ["m"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten = deploy.int8_friendly(proto)
    assert Counter(n.op_type for n in rewritten.graph.node) == {"Mul": 4, "Add": 2, "Clip": 2}
    onnx.save(proto, tmp_path / "a.onnx")
    onnx.save(rewritten, tmp_path / "b.onnx")
    x = {"x": np.linspace(-7, 7, 6, dtype=np.float32).reshape(2, 3)}
    a = deploy.onnx_session(tmp_path / "a.onnx").run(None, x)[0]
    b = deploy.onnx_session(tmp_path / "b.onnx").run(None, x)[0]
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_int8_v3_quantizes_saves_and_reloads_identically(exported, tmp_path):
    """V3-Small has everything int8 must handle: hard-swish, squeeze-excite, residuals."""
    path = tmp_path / "v3.int8.onnx"
    images = random_images(24)
    deploy.quantize_onnx(exported("mobilenet_v3_small", "onnx").path, path, images, PRE)
    graph = onnx.load(path)
    ops = [n.op_type for n in graph.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Conv weights are stored as int8 with one scale per output channel.
    inits = {t.name: t for t in graph.graph.initializer}
    weight_dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0] in inits and len(inits[n.input[0]].dims) == 4]
    assert weight_dq
    for n in weight_dq:
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT8
        assert list(inits[n.input[1]].dims) == [inits[n.input[0]].dims[0]]

    first = deploy.load_artifact(path, trust_code=True)
    assert first.int8 and first.preprocessing.record() == PRE and first.classes == CLASSES
    assert first.meta["int8"]["calibration_images"] == 24
    parity = deploy.check_parity(first, tiny("mobilenet_v3_small"),
                                 deploy.preprocess(images[:8], PRE), deploy.INT8_TOLERANCE)
    assert parity.ok, parity.summary()
    copy_path = tmp_path / "copy.onnx"
    onnx.save(onnx.load(path), copy_path)
    x = normal_inputs(6)
    # A re-serialized copy and a second load of the file (a new session) give the same logits.
    np.testing.assert_array_equal(deploy.load_artifact(copy_path, trust_code=True)(x), first(x))
    np.testing.assert_array_equal(deploy.load_artifact(path, trust_code=True)(x), first(x))


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def fmnist():
    """The trained fixture model (``mobilenet_v3_small_minimal`` at width 0.25, one epoch of
    Fashion-MNIST) and real images: 64 training images to calibrate on, 200 test images
    (``tests/fixtures/make_fmnist_sample.py``)."""
    sample = np.load(FIXTURES / "fmnist_sample.npz")
    model, meta = load_model(FIXTURES / "fmnist_v3s_minimal_025.safetensors")
    images = {k: torch.from_numpy(sample[k]).unsqueeze(1) for k in ("calibration_images", "test_images")}
    return model.eval(), deploy.resolve_preprocessing(model, meta), images, sample["test_labels"]


@pytest.mark.parametrize("reduce_range", [False, True], ids=["8-bit", "7-bit"])
def test_int8_top1_agrees_with_float_on_real_images(fmnist, reduce_range, tmp_path):
    """int8 changes the class of a real image only where the float model hesitates.

    Measured on the 200 test images (calibrated on 64 training images): 97.5 % agreement
    with 8-bit weights, 98.5 % with 7-bit; every flip had the float model's top two logits
    within 0.2 (4 % of the largest logit; the median gap is 2.2). This model is trained for
    one epoch only (83.5 % on these images), so it has more near-ties than a finished one:
    ``benchmarks/quant_accuracy.py`` measures agreement on the whole test set."""
    model, pre, images, labels = fmnist
    result = deploy.export_model(model, "onnx", tmp_path / "m.int8.onnx", preprocessing=pre, int8=True,
                                 calibration_images=images["calibration_images"],
                                 reduce_range=reduce_range)
    x = deploy.preprocess(images["test_images"], pre)
    got = deploy.load_artifact(result.path, trust_code=True)(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert (ref.argmax(1) == labels).mean() >= 0.8  # a model whose decisions mean something
    flipped = got.argmax(1) != ref.argmax(1)
    assert 1 - flipped.mean() >= 0.97
    top2 = np.sort(ref, axis=1)[:, -2:]
    assert (top2[flipped, 1] - top2[flipped, 0]).max(initial=0) < 0.05 * np.abs(ref).max()
    assert abs((got.argmax(1) == labels).mean() - (ref.argmax(1) == labels).mean()) <= 0.02


def test_calibration_reader_feeds_normalised_batches():
    images = random_images(10)
    reader = deploy.ImageCalibrationReader(images, PRE, batch_size=4)
    from onnxruntime.quantization import CalibrationDataReader
    assert isinstance(reader, CalibrationDataReader)
    got = [reader.get_next() for _ in range(4)]
    assert got[3] is None and reader.count == 10
    assert [g["input"].shape[0] for g in got[:3]] == [4, 4, 2]
    expected = (images[:4].float() / 255 - 0.3) / 0.35
    np.testing.assert_allclose(got[0]["input"], expected.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(mobilenets.MobilenetsError, match="expects"):
        deploy.preprocess(random_images(2, size=28), PRE)


def write_idx_dataset(directory, n: int = 40, size: int = 28) -> None:
    """A tiny Fashion-MNIST-layout dataset of random images (IDX files)."""
    directory.mkdir()
    images = random_images(n, size).squeeze(1).numpy()
    labels = (np.arange(n) % 10).astype(np.uint8)
    (directory / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">4BIII", 0, 0, 8, 3, n, size, size) + images.tobytes())
    (directory / "train-labels-idx1-ubyte").write_bytes(
        struct.pack(">4BI", 0, 0, 8, 1, n) + labels.tobytes())


def test_export_int8_from_checkpoint_with_calibration_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    write_idx_dataset(data)
    ckpt = tmp_path / "run" / "best.safetensors"
    pre = {**PRE, "input_size": 28}
    save_model(tiny("mobilenet_v3_small_minimal"), ckpt, preprocessing=pre, classes=CLASSES)
    rc = main(["export", str(ckpt), "--int8", "--calibration-data", str(data),
               "--calibration-size", "16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    path = tmp_path / "run" / "best.int8.onnx"
    assert f"-> {path}" in out and "parity:" in out
    artifact = deploy.load_artifact(path, trust_code=True)
    assert artifact.meta["int8"]["calibration_images"] == 16 and artifact.preprocessing.to_meta() == {"preprocessing": pre, "classes": CLASSES}
    assert artifact.meta["int8"]["reduce_range"] is reduce_range_default()
    assert ("7-bit weights" in out) is reduce_range_default()
    for flag, bits in (("--reduce-range", 64), ("--no-reduce-range", 127)):
        assert main(["export", str(ckpt), "--int8", "--calibration-data", str(data),
                     "--calibration-size", "16", flag, "-o", str(tmp_path / "r.onnx")]) == 0
        assert deploy.load_artifact(tmp_path / "r.onnx", trust_code=True).meta["int8"]["weight_range"] == bits

    # `eval` scores exports as they will serve: the float ONNX file like the checkpoint.
    assert main(["export", str(ckpt), "--format", "onnx"]) == 0
    results = {}
    for name in ("best.safetensors", "best.onnx", "best.int8.onnx"):
        capsys.readouterr()
        assert main(["eval", str(tmp_path / "run" / name), "--data", str(data), "--split", "train",
                     "--json"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert results["best.onnx"]["confusion"] == results["best.safetensors"]["confusion"]
    assert results["best.onnx"]["loss"] == pytest.approx(results["best.safetensors"]["loss"], rel=1e-4)
    assert results["best.int8.onnx"]["count"] == 40
    assert [results[n]["precision"] for n in ("best.safetensors", "best.onnx", "best.int8.onnx")] == \
        ["fp32", "fp32", "int8"]  # what each file computes in


# ----------------------------------------------------------------------------- bench

def test_bench_tiny_model_gives_sane_numbers(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(timing, "WARMUP_SECONDS", 0.01)  # tiny model: settled after 3 calls
    report = bench.benchmark(tiny("mobilenet_v3_small_minimal"), batches=(1, 2), resolution=32,
                             backends=("eager", "channels_last", "compile", "onnxruntime"),
                             threads=1, seconds=0.06, peak_size=256)
    assert report.peak_gmadds_per_s > 0 and report.madds > 0 and report.threads == 1
    timed = [r for r in report.results if r.backend != "compile"]
    assert len(timed) == 6
    for r in timed:
        assert 0 < r.median_ms <= r.p90_ms and r.calls >= bench.ROUNDS * 2
        assert 0 <= r.contended_rounds <= bench.ROUNDS
        assert r.images_per_s == pytest.approx(r.batch * 1e3 / r.median_ms)
        assert 0 < r.peak_fraction and r.gmadds_per_s > 0
    skipped = report.result("compile", 1)
    assert skipped.median_ms is None
    assert skipped.note == "unavailable: RuntimeError: no C++ compiler"
    table = report.table()
    assert "onnxruntime" in table and "compile (batch 1): unavailable" in table
    assert json.loads(json.dumps(report.to_json()))["results"][0]["backend"] == "eager"


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_bench_compile_backend_computes_the_models_logits(tmp_path):
    """The ``compile`` backend (Inductor on the BN-folded channels-last model) is the
    same network: its logits equal eager PyTorch's."""
    backends = bench._Backends(tiny("mobilenet_v3_small"), 32, 1, tmp_path, PRE)
    got, expected = backends.runner("compile", 2)(), backends.runner("eager", 2)()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compile_model_freezing_really_freezes():
    """``options={"freezing": True}`` alone leaves the weights as graph inputs (Dynamo has
    traced before Inductor sees the option), so nothing is pre-packed; ``compile_model``
    sets the config while Dynamo traces, and the convolutions' weights are packed."""
    from torch._dynamo.utils import counters

    def packed(compile_fn) -> list[int]:
        """Packed convolutions after a call, a repeated call, and a call at a new batch size."""
        torch._dynamo.reset()
        counters.clear()
        model = tiny("mobilenet_v3_small_minimal")
        ready = deploy.prepare_for_inference(model).to(memory_format=torch.channels_last)
        fn, counts = compile_fn(ready), []
        with torch.inference_mode(), torch._inductor.config.patch(force_disable_caches=True):
            for batch in (1, 1, 2):
                x = torch.randn(batch, 1, 32, 32).contiguous(memory_format=torch.channels_last)
                torch.testing.assert_close(fn(x), model(x), rtol=1e-4, atol=1e-4)
                counts.append(counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"])
        return counts

    assert packed(lambda m: torch.compile(m, dynamic=False, options={"freezing": True})) == [0, 0, 0]
    first, again, new_shape = packed(lambda m: bench.compile_model(m, {"freezing": True}))
    assert 0 < first == again < new_shape  # a retrace at a new shape freezes too
    torch._dynamo.reset()


class _OneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compile_model_compiles_every_model_not_just_the_first_eight():
    """Dynamo counts the compilations of one ``forward`` across all models of a class (a
    frozen model is its own graph) and, past 8, silently runs the next ones uncompiled;
    ``compile_model`` compiles them all."""
    from torch._dynamo.utils import counters

    def frozen(m: nn.Module):
        compiled = torch.compile(m, dynamic=False)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch._inductor.config.patch(freezing=True):
                return compiled(x)
        return run

    x = torch.randn(1, 1, 6, 6)
    for compile_fn, expected in ((frozen, 8), (lambda m: bench.compile_model(m, {"freezing": True}), 10)):
        torch._dynamo.reset()
        counters.clear()
        models = [_OneConv().eval() for _ in range(10)]  # alive together, as a bench's backends are
        with torch.inference_mode(), torch._inductor.config.patch(force_disable_caches=True):
            for m in models:
                torch.testing.assert_close(compile_fn(m)(x), m(x))
        assert counters["stats"]["unique_graphs"] == expected
    torch._dynamo.reset()


def test_contended_rounds_are_repeated_then_reported(monkeypatch):
    assert timing.others_share((10.0, 100.0, 2.0), (12.0, 104.0, 3.0)) == 0.25
    assert timing.others_share(None, (1.0, 2.0, 0.0)) is None
    monkeypatch.setattr(timing, "others_share", lambda before, after: 0.5)
    calls = []
    samples, contended = bench.measure({"f": lambda: calls.append(1)}, seconds=0.0, rounds=2,
                                       max_retries=3)
    assert contended == {"f": 2}
    assert len(calls) == 2 * 4 * 2  # rounds × attempts × 2 calls per attempt
    assert len(samples["f"]) == 2 * 2  # each round keeps its last attempt only


def test_bench_cli_json(capsys, monkeypatch):
    monkeypatch.setattr(timing, "WARMUP_SECONDS", 0.01)
    rc = main(["bench", "mobilenet_v3_small_minimal", "--width-mult", "0.25", "--in-chans", "1",
               "--small-input", "--resolution", "32", "--batch", "1", "--backends", "eager",
               "--seconds", "0.05", "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert data["model"] == "mobilenet_v3_small_minimal" and data["resolution"] == 32
    assert [r["backend"] for r in data["results"]] == ["eager"]
    # Which fast paths the CPU has travels with the figures (bf16 autocast, VNNI int8).
    isa = set(data["machine"]["isa"])
    if isa:  # read from /proc/cpuinfo; torch asks the CPU itself
        assert ("avx512_bf16" in isa or "amx_bf16" in isa) == bf16_supported()
        assert ("avx512_vnni" in isa) == torch.cpu._is_vnni_supported()


# ----------------------------------------------------------------------------- CLI errors

@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny("mobilenet_v3_small_minimal"), path, preprocessing=PRE, classes=CLASSES)
    return path


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite"], "format must be one of 'onnx', 'torchscript', 'pt2', "),
    (["--format", "tflite"], "got 'tflite'"),
    (["--format", "onx"], "did you mean 'onnx'"),
    (["--format", "torchscript", "--int8", "--calibration-data", "x"], "int8 export is for onnx, "),
    (["--int8"], "--int8 needs --calibration-data"),
    (["--reduce-range"], "it needs --format onnx --int8"),
    (["--int8", "--calibration-data", "/nonexistent/data"], "data not found"),
    (["--tolerance", "-1"], "tolerance must be a positive number, got -1.0"),
    (["--tolerance", "nan"], "tolerance must be a positive number, got nan"),
    (["-o", "{ckpt}"], "a onnx export is a .onnx file"),  # the checkpoint itself
    (["-o", "{dir}/photo.png"], "give a name ending in .onnx"),
    (["--format", "torchscript", "-o", "{dir}/m.onnx"], "a torchscript export is a .pt file"),
])
def test_export_cli_errors(checkpoint, capsys, args, message):
    before = {p: p.read_bytes() for p in checkpoint.parent.iterdir()}
    (checkpoint.parent / "photo.png").write_bytes(b"PNG")
    before[checkpoint.parent / "photo.png"] = b"PNG"
    args = [a.format(ckpt=checkpoint, dir=checkpoint.parent) for a in args]
    assert main(["export", str(checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert {p: p.read_bytes() for p in checkpoint.parent.iterdir()} == before  # nothing written


def test_export_output_names(checkpoint, tmp_path, capsys):
    """A directory (or a name ending in /) gets the default name; a run directory exports
    the checkpoint it stands for, under that checkpoint's name."""
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.rename(run / "best.safetensors")
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    assert (run / "best.pt").is_file()
    assert main(["export", str(run / "best.safetensors"), "--format", "torchscript",
                 "-o", str(tmp_path / "out") + "/"]) == 0
    assert (tmp_path / "out" / "best.pt").is_file()
    assert main(["export", str(run / "best.pt"), "--format", "torchscript"]) == 2
    assert "is an exported model; export takes the .safetensors" in capsys.readouterr().err


def test_export_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.safetensors"), "--format", "onnx"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["mobilenet_v5"], "neither a model name (did you mean"),
    (["mobilenet_v2", "--backends", "eager,tensorrt"], "backend must be one of"),
    (["mobilenet_v2", "--batch", "1,x"], "--batch must be comma-separated integers"),
    (["mobilenet_v2", "--resolution", "0"], "resolution must be >= 8, got 0"),
    (["mobilenet_v2", "--seconds", "inf"], "--seconds must be in (0, 600], got inf"),
    (["mobilenet_v2", "--seconds", "0"], "--seconds must be in (0, 600]"),
    (["mobilenet_v2", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["mobilenet_v2", "--backends", ","], "--backends is empty"),
    (["mobilenet_v2", "--width-mult", "nan"], "width_mult must be in (0, 16], got nan"),
])
def test_bench_cli_errors(capsys, args, message):
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


def test_bench_cli_names_the_way_for_an_exported_file(exported, capsys):
    assert main(["bench", str(exported("mobilenet_v3_small", "onnx").path)]) == 2
    assert "is an exported model; bench takes the .safetensors checkpoint" in capsys.readouterr().err


def test_calibration_images_are_centre_crops_and_need_no_labels(tmp_path):
    """int8 ranges are chosen on images as they will be served; a folder of unlabelled
    images (one folder) is enough."""
    from datagen import make_image_folder

    root = make_image_folder(tmp_path / "calib", n_per_class=6, size=80, classes=("unlabelled",),
                             modes=("RGB",))
    pre = {"input_size": 64, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    first = deploy.load_calibration_images(root, 4, pre)
    assert first.shape == (4, 3, 64, 64) and torch.equal(first, deploy.load_calibration_images(root, 4, pre))
    # (the training split: a folder without train/ keeps its held-out image for validation)
    with pytest.warns(UserWarning, match="calibration uses all 5 images"):
        assert len(deploy.load_calibration_images(root, 100, pre)) == 5


def test_calibration_data_of_other_channels_is_named(tmp_path):
    from datagen import make_idx_dir

    idx = make_idx_dir(tmp_path / "idx", n_train=8, n_test=4)
    pre = {"input_size": 28, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(mobilenets.MobilenetsError, match="calibration data .* has 1-channel images but the "
                                                         "model takes 3"):
        deploy.load_calibration_images(idx, 4, pre)


def test_a_flat_folder_of_images_calibrates(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    pre = {"input_size": 32, "channels": 1, "mean": [0.5], "std": [0.5]}
    images = deploy.load_calibration_images(tmp_path, 2, pre)
    assert images.shape == (2, 1, 32, 32) and images.dtype == torch.uint8
    with pytest.warns(UserWarning, match="calibration uses all 3 images"):
        assert len(deploy.load_calibration_images(tmp_path, 10, pre)) == 3


def test_calibration_leaves_out_the_images_training_held_out(tmp_path):
    """Calibrating on a checkpoint's validation images would make them seen; the stored
    hold-out is respected, for in-memory data and for flat class folders."""
    from datagen import make_idx_dir, make_image_folder
    from mobilenets.data.datasets import load_dataset
    from mobilenets.data.datasets import holdout_split

    idx = make_idx_dir(tmp_path / "idx", n_train=40, n_test=4)
    pre = {"input_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]}
    held = {"seed": 3, "val_fraction": 0.5}
    with pytest.warns(UserWarning, match="calibration uses all 20 images"):
        images = deploy.load_calibration_images(idx, 40, pre, holdout=held)
    train, val = holdout_split(load_dataset(str(idx), "train"), 0.5, 3)
    assert len(images) == 20 and torch.equal(images.sort(0).values, train.images.sort(0).values)

    folder = make_image_folder(tmp_path / "flat", n_per_class=10, size=28)
    with pytest.warns(UserWarning, match="calibration uses all 15 images"):
        images = deploy.load_calibration_images(folder, 100, pre, holdout=held)
    assert len(images) == len(load_dataset(str(folder), "train", **held)) == 15


# ----------------------------------------------------------------------------- bf16

@pytest.mark.parametrize("name", ALL_MODELS)
def test_bf16_inference_is_the_model_rounded_to_bf16(name):
    """``bf16_inference``: float32 in and out, every weight in bf16, the source model left
    in float32, logits within bf16 rounding (8-bit mantissa) of the float model's."""
    model = tiny(name).eval()
    x = torch.from_numpy(normal_inputs())
    bf16 = deploy.bf16_inference(model)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bf16.modules())  # folded before the cast
    convs = [m for m in bf16.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert bf16.num_classes == 10
    with torch.no_grad():
        got, expected = bf16(x), model(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    scale = expected.abs().max().item()
    assert 0 < (got - expected).abs().max().item() <= 0.05 * scale


def test_bf16_inference_of_a_features_only_model_returns_float_maps():
    maps = mobilenets.create_model("mobilenet_v3_small", width_mult=0.25, in_chans=1, features_only=True)
    x = torch.from_numpy(normal_inputs())
    with torch.no_grad():
        got, expected = deploy.bf16_inference(maps)(x), maps.eval()(x)
    assert [g.dtype for g in got] == [torch.float32] * len(expected)
    assert [g.shape for g in got] == [e.shape for e in expected]


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_bench_compile_bf16_backend_computes_the_models_logits_in_bf16(tmp_path, monkeypatch):
    from mobilenets.ops import cpu

    monkeypatch.setattr(cpu, "bf16_supported", lambda: True)  # bf16 runs anywhere, slowly
    backends = bench._Backends(tiny("mobilenet_v3_small"), 32, 1, tmp_path, PRE)
    got, expected = backends.runner("compile-bf16", 1)(), backends.runner("eager", 1)()  # autotuned
    assert got.dtype == torch.float32
    scale = expected.abs().max().item()
    # bf16 rounding (about 1e-2 of the range), far above fp32's reordering (about 1e-6).
    assert 1e-4 * scale < (got - expected).abs().max().item() <= 0.05 * scale


def test_bench_lists_compile_bf16_as_unavailable_without_bf16_instructions(monkeypatch):
    from mobilenets.ops import cpu

    monkeypatch.setattr(cpu, "bf16_supported", lambda: False)
    monkeypatch.setattr(timing, "WARMUP_SECONDS", 0.01)
    report = bench.benchmark(tiny("mobilenet_v3_small"), batches=(1,), resolution=32,
                             backends=("eager", "compile-bf16"), threads=1, seconds=0.05, peak_size=64)
    skipped = report.result("compile-bf16", 1)
    assert skipped.median_ms is None
    assert skipped.note == "unavailable: MobilenetsError: this CPU has no native bf16 instructions (AVX-512-BF16 or AMX)"
    assert report.result("eager", 1).median_ms > 0
