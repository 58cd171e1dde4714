"""Same network as torchvision, timm and Keras: converted weights reproduce their logits."""

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilenets
from mobilenets.io import convert
from mobilenets.io.checkpoint import load_model
from mobilenets.cli.main import main
from reference import all_fixtures, fixture_input, fixture_tensors, load_fixture

FIXTURES = all_fixtures()
_DROP = ("weights", "classifier_activation", "input_shape", "include_preprocessing")


def _source_kwargs(fx: dict) -> dict:
    """The reference builder's kwargs, minus those that do not describe the network. The
    class count is left out on purpose: the converters read it from the weights."""
    return {k: v for k, v in fx["kwargs"].items() if k not in _DROP + ("num_classes", "classes")}


#: The largest relative error (|ours - reference| / max |reference|) each fixture may show,
#: per source/builder (with the kwargs that shape the network). Each bound is twice the
#: worst error seen over seven CPU kernel set-ups on an AVX-512 machine (oneDNN at AVX-512,
#: AVX2 and SSE4.1, 1 or 2 threads, oneDNN off), rounded up to 1, 2, 3 or 5 x 10^k.
#: The error is fp32 summation order, not the network: deep random networks whose logits
#: reach the hundreds are ill-conditioned (timm V3-Large's own fp32 rounding, against a
#: float64 run, is 1.3e-4 of its largest logit), while a wrong network misses by 1e-2 or
#: more (see test_the_loosest_bound_still_rejects_a_wrong_network).
BOUNDS: dict[str, float] = {
    "keras/MobileNet alpha=0.25": 2e-6,                            # worst 6.3e-7
    "keras/MobileNet alpha=1.0": 2e-6,                             # worst 7.9e-7
    "keras/MobileNetV2 alpha=0.35": 2e-6,                          # worst 8.0e-7
    "keras/MobileNetV2 alpha=1.0": 2e-6,                           # worst 6.3e-7
    "keras/MobileNetV3Large": 2e-6,                                # worst 8.0e-7
    "keras/MobileNetV3Small": 2e-6,                                # worst 5.3e-7
    "keras/MobileNetV3Small minimalistic=True alpha=0.75": 2e-6,   # worst 6.3e-7
    "timm/mobilenetv1_100": 2e-6,                                  # worst 5.6e-7
    "timm/mobilenetv2_100": 1e-5,                                  # worst 4.3e-6
    "timm/mobilenetv2_140": 3e-5,                                  # worst 1.0e-5
    "timm/mobilenetv3_large_100": 3e-4,                            # worst 1.1e-4
    "timm/mobilenetv3_small_075": 1e-6,                            # worst 4.2e-7
    "torchvision/mobilenet_v2": 1e-5,                              # worst 4.8e-6
    "torchvision/mobilenet_v2 width_mult=0.35": 3e-5,              # worst 1.3e-5
    "torchvision/mobilenet_v3_large": 3e-5,                        # worst 1.0e-5
    "torchvision/mobilenet_v3_small": 5e-6,                        # worst 2.0e-6
    "torchvision/mobilenet_v3_small width_mult=0.75": 5e-6,        # worst 2.4e-6
}


def fixture_key(fx: dict) -> str:
    """``source/builder`` plus the kwargs that shape the network: the key of :data:`BOUNDS`."""
    return f"{fx['source']}/{fx['builder']}" + "".join(f" {k}={v}" for k, v in _source_kwargs(fx).items())


def _relative_error(model, fx) -> float:
    x = torch.from_numpy(fixture_input(fx))
    with torch.no_grad():
        out = model(x).numpy()
    ref = np.asarray(fx["logits"], dtype=np.float32)
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _assert_logits(model, fx):
    """Our fp32 logits equal the reference's within the fixture's bound in :data:`BOUNDS`."""
    err, bound = _relative_error(model, fx), BOUNDS[fixture_key(fx)]
    if err < bound:
        return
    x = torch.from_numpy(fixture_input(fx)).double()
    with torch.no_grad():  # only to explain a failure: this network's own fp32 rounding here
        exact = copy.deepcopy(model).double()(x).numpy()
        out = model(x.float()).double().numpy()
    rounding = np.abs(out - exact).max() / np.abs(np.asarray(fx["logits"])).max()
    raise AssertionError(f"{fixture_key(fx)}: relative error {err:.2e} >= bound {bound:.0e} "
                         f"(fp32 rounding of this network on this machine: {rounding:.2e})")


def test_every_fixture_has_exactly_one_bound():
    assert sorted(fixture_key(load_fixture(p)) for p in FIXTURES) == sorted(BOUNDS)


def test_the_loosest_bound_still_rejects_a_wrong_network():
    """timm V3-Large's 3e-4 is the loosest bound; a BatchNorm epsilon of 1e-3 instead of
    timm's 1e-5 misses by ~0.23, hundreds of times more."""
    fx = load_fixture(next(p for p in FIXTURES if p.name.startswith("timm__mobilenetv3_large_100")))
    wrong = convert.convert(fx["source"], fixture_tensors(fx), fx["builder"], bn_eps=1e-3)
    assert _relative_error(wrong, fx) > 100 * max(BOUNDS.values())


def test_all_fixtures_present():
    assert len(FIXTURES) == 17


def test_fixture_value_recipe_check_values():
    fx = load_fixture(FIXTURES[0])
    np.testing.assert_allclose(fixture_input(fx).reshape(-1)[:5],
                               [-0.6774118, 0.354584, -0.21640511, -0.00418744, 0.32210737], rtol=0, atol=5e-8)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_converted_weights_reproduce_reference_logits(path):
    fx = load_fixture(path)
    model = convert.convert(fx["source"], fixture_tensors(fx), fx["builder"], **_source_kwargs(fx))
    assert sum(p.numel() for p in model.parameters()) == fx["params"]
    _assert_logits(model, fx)


def _write_legacy_h5(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A Keras 2 ``save_weights('x.h5')`` layout: layer/layer/weight:0 with order attributes."""
    h5py = pytest.importorskip("h5py")
    layers: dict[str, list[str]] = {}
    for name in tensors:
        layer, weight = name.rsplit("/", 1)
        layers.setdefault(layer, []).append(weight)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        for layer, weights in layers.items():
            g = f.create_group(layer)
            names = [f"{layer}/{w}:0" for w in weights]
            g.attrs["weight_names"] = np.array([n.encode() for n in names])
            for w, full in zip(weights, names):
                g.create_dataset(full, data=tensors[f"{layer}/{w}"])


def test_keras_legacy_h5_file(tmp_path):
    fx = load_fixture(next(p for p in FIXTURES if p.name.startswith("keras__MobileNetV3Small__minimal")))
    h5 = tmp_path / "weights.h5"
    _write_legacy_h5(h5, fixture_tensors(fx))
    model = convert.from_keras(h5, "MobileNetV3Small", alpha=0.75, minimalistic=True)
    assert model.model_name == "mobilenet_v3_small_minimal"
    _assert_logits(model, fx)


def test_torch_file_and_cli_convert_round_trip(tmp_path):
    fx = load_fixture(next(p for p in FIXTURES if p.name.startswith("timm__mobilenetv3_small_075")))
    pth = tmp_path / "timm.pth"
    torch.save({k: torch.from_numpy(v) for k, v in fixture_tensors(fx).items()}, pth)
    out = tmp_path / "ours.safetensors"
    assert main(["convert", "--from", "timm", str(pth), "--model", "mobilenetv3_small_075",
                 "-o", str(out)]) == 0
    model, meta = load_model(out)
    assert meta["model"] == "mobilenet_v3_small"
    assert meta["model_kwargs"]["width_mult"] == 0.75
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    _assert_logits(model, fx)


def test_mismatch_is_one_clear_error_naming_the_tensors():
    fx = load_fixture(next(p for p in FIXTURES if p.name == "torchvision__mobilenet_v2__num_classes10.json"))
    tensors = fixture_tensors(fx)
    with pytest.raises(mobilenets.MobilenetsError, match=r"features\.0\.0\.weight.*width_mult"):
        convert.from_torchvision(tensors, "mobilenet_v2", width_mult=0.5)
    with pytest.raises(mobilenets.MobilenetsError, match="mobilenet_v3_small expects 'features.0.conv.weight'"):
        convert.from_torchvision(tensors, "mobilenet_v3_small")
    extra = dict(tensors, **{"aux.weight": np.zeros(3, np.float32)})
    with pytest.raises(mobilenets.MobilenetsError, match="extra source tensors starting at 'aux.weight'"):
        convert.from_torchvision(extra, "mobilenet_v2", num_classes=10)
    truncated = dict(list(tensors.items())[:-2])
    with pytest.raises(mobilenets.MobilenetsError, match="missing tensors"):
        convert.from_torchvision(truncated, "mobilenet_v2", num_classes=10)
    with pytest.raises(mobilenets.MobilenetsError, match="torchvision has no mobilenet_v1"):
        convert.from_torchvision(tensors, "mobilenet_v1")
    with pytest.raises(mobilenets.MobilenetsError, match="unknown model 'resnet50'"):
        convert.from_timm(tensors, "resnet50")


def test_timm_names_map_to_ours():
    assert convert.resolve_name("timm", "mobilenetv3_small_075", {}) == \
        ("mobilenet_v3_small", {"width_mult": 0.75})
    name, kw = convert.resolve_name("timm", "tf_mobilenetv3_large_minimal_100", {})
    assert name == "mobilenet_v3_large_minimal" and kw["padding"] == "same" and kw["bn_eps"] == 1e-3
    assert convert.resolve_name("keras", "MobileNet", {"alpha": 0.25}) == \
        ("mobilenet_v1", {"width_mult": 0.25})


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned-by-pickle",))


def test_malicious_pickle_is_refused_without_executing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"features.0.0.weight": _Evil()}, f)
    with pytest.raises(mobilenets.MobilenetsError, match="refused to load"):
        convert.from_torchvision(bad, "mobilenet_v2")
    assert not (tmp_path / "pwned-by-pickle").exists()
    assert main(["convert", "--from", "torchvision", str(bad), "--model", "mobilenet_v2",
                 "-o", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "pwned-by-pickle").exists()


@pytest.mark.parametrize("path", [p for p in FIXTURES if not p.name.startswith("keras")],
                         ids=lambda p: p.stem)
def test_safetensors_weights_convert_although_the_file_keeps_no_order(path, tmp_path):
    """timm's Hugging Face weights are `model.safetensors`, whose names come back sorted;
    the converters pair by position, so the registration order must be restored."""
    from safetensors.torch import save_file

    fx = load_fixture(path)
    tensors = fixture_tensors(fx)
    shuffled = dict(sorted(tensors.items(), key=lambda kv: hash(kv[0]) % 997))
    file = tmp_path / "model.safetensors"
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in shuffled.items()}, str(file))
    assert convert.registration_order(list(shuffled)) == list(tensors)
    model = convert.convert(fx["source"], file, fx["builder"], **_source_kwargs(fx))
    _assert_logits(model, fx)


def test_safetensors_of_an_unknown_layout_is_refused(tmp_path):
    from safetensors.torch import save_file

    file = tmp_path / "other.safetensors"
    save_file({"stem.conv.weight": torch.zeros(8, 3, 3, 3), "head.fc.weight": torch.zeros(10, 8)}, str(file))
    with pytest.raises(mobilenets.MobilenetsError, match=r"cannot restore the order.*convert the \.pth"):
        convert.from_timm(file, "mobilenetv3_small_100")


@pytest.mark.parametrize("content", [b"", b"not a pickle"])
def test_unreadable_torch_files_are_one_clear_error(content, tmp_path):
    file = tmp_path / "w.pth"
    file.write_bytes(content)
    with pytest.raises(mobilenets.MobilenetsError, match="refused to load"):
        convert.from_timm(file, "mobilenetv3_small_100")
    torch.save({"a": "text"}, file)
    with pytest.raises(mobilenets.MobilenetsError, match="not numbers"):
        convert.from_timm(file, "mobilenetv3_small_100")
