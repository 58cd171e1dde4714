"""The Python API at its edges: what builds also saves and loads, wrapped and cast models,
features-only models, converted weights without a classifier, and the checks that keep a
saved file consistent with itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilenets
from mobilenets import MobilenetsError, create_model
from mobilenets.io import convert
from mobilenets.io.checkpoint import load_model, read_checkpoint, save_model
from mobilenets.cli.main import main
from reference import all_fixtures, fixture_tensors, load_fixture

pytestmark = pytest.mark.usefixtures("one_thread")
PRE = {"input_size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}


def _tiny(name: str = "mobilenet_v3_small", **kw) -> torch.nn.Module:
    return create_model(name, width_mult=0.25, **kw).eval()


def test_reset_classifier_then_save_round_trips(tmp_path: Path) -> None:
    model = _tiny(num_classes=10)
    model.reset_classifier(5)
    assert model.model_kwargs["num_classes"] == 5
    save_model(model, tmp_path / "a.safetensors", preprocessing=PRE)
    loaded, _ = load_model(tmp_path / "a.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert loaded.num_classes == 5 and torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_model_cast_to_another_dtype_runs_under_cpu_autocast(dtype: torch.dtype) -> None:
    """The fp32 detour of depthwise convolutions under autocast is for fp32 weights only."""
    model = _tiny("mobilenet_v2").to(dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32, dtype=dtype))
    assert out.shape == (2, 1000) and torch.isfinite(out.float()).all()
    from mobilenets.analysis.profile import profile

    assert profile(model, 32).madds == profile(_tiny("mobilenet_v2"), 32).madds


@pytest.mark.parametrize("name", mobilenets.list_models())
def test_features_only_models_script(name: str) -> None:
    model = _tiny(name, features_only=True)
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    assert all(torch.equal(a, b) for a, b in zip(model(x), scripted(x)))
    full = torch.jit.script(_tiny(name))
    assert len(full.forward_feature_maps(x)) == len(model.feature_info)


def test_a_features_only_model_is_not_saved_alone(tmp_path: Path) -> None:
    with pytest.raises(MobilenetsError, match="features_only model holds no head"):
        save_model(_tiny(features_only=True), tmp_path / "f.safetensors")
    full = _tiny(num_classes=3)  # the documented way: save the full model, load its features
    save_model(full, tmp_path / "full.safetensors", preprocessing=PRE)
    tensors, meta = read_checkpoint(tmp_path / "full.safetensors")
    feats = create_model(meta["model"], features_only=True, **meta["model_kwargs"])
    feats.load_state_dict({k: v for k, v in tensors.items() if k.startswith("features.")})


@pytest.mark.parametrize("kwargs,message", [
    ({"bn_eps": -1.0}, r"bn_eps must be in \(0, 1\], got -1.0"),
    ({"bn_momentum": 2.0}, r"bn_momentum must be in \[0, 1\], got 2.0"),
    ({"num_classes": 2.5}, "num_classes must be an integer, got 2.5"),
    ({"in_chans": True}, "in_chans must be an integer, got True"),
    ({"stem_channels": 0}, r"stem_channels must be in \[1, 16384\], got 0"),
    ({"width_mult": "0.5"}, "width_mult must be a number, got '0.5'"),
    ({"width_mult": float("nan")}, r"width_mult must be in \(0, 16\], got nan"),
    ({"small_input": 1}, "small_input must be true or false, got 1"),
])
def test_create_model_checks_option_types_and_ranges(kwargs: dict, message: str) -> None:
    with pytest.raises(MobilenetsError, match=message):
        create_model("mobilenet_v3_small", **kwargs)


def test_project_act_names_its_choices() -> None:
    with pytest.raises(MobilenetsError, match="project_act must be one of 'RE', 'RE6', 'HS'"):
        create_model("mobilenet_v2", project_act="relu6")


def test_numpy_option_values_build_save_and_load(tmp_path: Path) -> None:
    model = create_model("mobilenet_v3_small", width_mult=np.float32(0.25), num_classes=np.int64(4),
                         small_input=np.bool_(True))
    assert model.model_kwargs == {"width_mult": 0.25, "num_classes": 4, "small_input": True}
    assert all(type(v) in (float, int, bool) for v in model.model_kwargs.values())
    save_model(model, tmp_path / "n.safetensors", preprocessing=PRE)
    assert load_model(tmp_path / "n.safetensors")[0].num_classes == 4


def test_saved_classes_must_match_the_classifier(tmp_path: Path, capsys) -> None:
    with pytest.raises(MobilenetsError, match="2 class names were given for a model with 3 outputs"):
        save_model(_tiny(num_classes=3), tmp_path / "three.safetensors", preprocessing=PRE, classes=["a", "b"])
    assert not (tmp_path / "three.safetensors").exists()
    # A file written by other means is still checked when it loads.
    from mobilenets.io.checkpoint import FORMAT_VERSION, state_to_bytes

    model = _tiny(num_classes=3)
    meta = {"format_version": FORMAT_VERSION, "model": model.model_name, "model_kwargs": model.model_kwargs,
            "preprocessing": PRE, "classes": ["a", "b"]}
    (tmp_path / "three.safetensors").write_bytes(state_to_bytes(model.state_dict(), meta))
    with pytest.raises(MobilenetsError, match="names 2 classes but the model has 3 outputs"):
        load_model(tmp_path / "three.safetensors")
    # A backbone without classifier has no classes to predict.
    save_model(_tiny(num_classes=0), tmp_path / "backbone.safetensors", preprocessing=PRE)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert main(["predict", str(tmp_path / "backbone.safetensors"), str(img)]) == 2
    assert "has no classifier (num_classes=0)" in capsys.readouterr().err


def test_deploy_preprocess_takes_numpy_and_tensors() -> None:
    from mobilenets.deploy.export import preprocess

    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    a = preprocess(images, PRE)
    b = preprocess(torch.from_numpy(images), PRE)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    with pytest.raises(MobilenetsError, match="images must be uint8"):
        preprocess(images.astype(np.float32), PRE)


def _timm_v3_small() -> dict:
    return load_fixture(next(p for p in all_fixtures() if p.name.startswith("timm__mobilenetv3_small_075")))


def test_weights_without_a_classifier_convert_to_a_backbone() -> None:
    fx = _timm_v3_small()
    tensors = fixture_tensors(fx)
    full = convert.from_timm(tensors, "mobilenetv3_small_075")
    headless = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    backbone = convert.from_timm(headless, "mobilenetv3_small_075.lamb_in1k")  # a Hugging Face tag
    assert backbone.num_classes == 0 and backbone.model_kwargs["width_mult"] == 0.75
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x), full.forward_head(full.forward_features(x), pre_logits=True))


def test_a_converted_model_saved_from_python_keeps_its_preprocessing(tmp_path: Path) -> None:
    model = convert.from_timm(fixture_tensors(_timm_v3_small()), "mobilenetv3_small_075")
    save_model(model, tmp_path / "t.safetensors")
    _, meta = load_model(tmp_path / "t.safetensors")
    assert meta["preprocessing"] == json.loads(json.dumps(model.preprocessing))


def test_convert_refuses_to_overwrite_its_input_or_write_another_format(tmp_path: Path, capsys) -> None:
    pth = tmp_path / "timm.pth"
    torch.save({k: torch.from_numpy(v) for k, v in fixture_tensors(_timm_v3_small()).items()}, pth)
    before = pth.read_bytes()
    for out, message in ((pth, "-o must name a .safetensors file"),
                         (tmp_path / "x.pt", "-o must name a .safetensors file")):
        assert main(["convert", "--from", "timm", str(pth), "--model", "mobilenetv3_small_075",
                     "-o", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert pth.read_bytes() == before and not (tmp_path / "x.pt").exists()
    same = tmp_path / "w.safetensors"
    same.write_bytes(b"")
    assert main(["convert", "--from", "timm", str(same), "--model", "mobilenetv3_small_075",
                 "-o", str(same)]) == 2
    assert "is the input file" in capsys.readouterr().err


def test_paper_cost_of_any_size_needs_no_memory() -> None:
    from mobilenets.analysis import paper

    c = paper.layer_cost(3, 100_000, 100_000, 1000)
    assert c.standard_madds == 9 * 100_000 * 100_000 * 1000 * 1000


def test_minimalistic_is_keras_only_and_names_the_timm_variant() -> None:
    with pytest.raises(MobilenetsError, match="timm: tf_mobilenetv3_small_minimal_100"):
        convert.resolve_name("timm", "mobilenetv3_small_075", {"minimalistic": True})
    assert convert.resolve_name("keras", "MobileNetV3Small", {"minimalistic": True})[0] == \
        "mobilenet_v3_small_minimal"


def test_a_compiled_model_saves_under_its_own_names(tmp_path: Path) -> None:
    """Last in this file: TorchScript has failed intermittently (an attribute taken for a
    builtin) when it compiled after dynamo had been loaded, so the scripting tests come first."""
    model = _tiny(num_classes=3)
    save_model(torch.compile(model), tmp_path / "c.safetensors", preprocessing=PRE)
    tensors, _ = read_checkpoint(tmp_path / "c.safetensors")
    assert not any(k.startswith("_orig_mod") for k in tensors)
    loaded, _ = load_model(tmp_path / "c.safetensors")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_output_stride_from_the_cli_and_through_a_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["summary", "mobilenet_v3_small", "--resolution", "28", "--small-input",
                 "--output-stride", "4", "--in-chans", "1", "--width-mult", "0.25", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert layers[[la["name"] for la in layers].index("pool") - 1]["output_shape"][-2:] == [7, 7]
    model = create_model("mobilenet_v3_small", width_mult=0.25, small_input=True, output_stride=4)
    save_model(model, tmp_path / "os4.safetensors", preprocessing=PRE)
    loaded = load_model(tmp_path / "os4.safetensors")[0]
    assert loaded.model_kwargs["output_stride"] == 4 and loaded.feature_info[-1].reduction == 4
    assert main(["summary", "mobilenet_v2", "--output-stride", "5"]) == 2
    assert "output_stride must be a power of 2" in capsys.readouterr().err


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400)])
def test_a_huge_integer_for_a_float_option_is_a_range_error(value: int) -> None:
    """Found by the checkpoint fuzzer: ``float(10 ** 400)`` raised OverflowError."""
    with pytest.raises(MobilenetsError, match=r"width_mult must be in \(0, "):
        create_model("mobilenet_v2", width_mult=value)
