"""Models from strangers never run code (issue 33): crafted files in every format, through
every command that loads one. Each payload would create a marker file; none may exist after,
and the user sees one ``error:`` line with nothing from torch's logger above it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenets
from datagen import make_idx_dir
from mobilenets import MobilenetsError
from mobilenets.cli.main import main
from mobilenets.deploy import export_checkpoint, load_artifact
from mobilenets.io import safety

pytestmark = pytest.mark.usefixtures("one_thread")

PREPROCESSING = {"input_size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker), protocol=2)


def rezip(src: Path, dst: Path, change: Callable[[str, bytes], bytes | None],
          add: dict[str, bytes] | None = None) -> Path:
    """``src``'s zip members through ``change(name, data)`` (None drops a member), plus ``add``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def reseal(artifact: Path, sidecar_of: Path) -> None:
    """What an attacker does: copy the real sidecar and recompute its SHA-256."""
    meta = json.loads(Path(f"{sidecar_of}.json").read_text())
    meta["artifact_sha256"] = hashlib.sha256(artifact.read_bytes()).hexdigest()
    Path(f"{artifact}.json").write_text(json.dumps(meta))


def root_of(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return z.namelist()[0].split("/")[0]


def edit_program(program: dict, marker: Path, how: str) -> None:
    code = f"__import__('os').system('touch {marker}')"
    if how == "expr":  # the batch dimension's symbolic size, wherever a tensor's shape uses it
        def walk(node):
            if isinstance(node, dict):
                if "expr_str" in node:
                    node["expr_str"] = code
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(program)
    elif how == "guards":
        program["guards_code"] = [code]
    else:
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real checkpoint, its .pt2 and TorchScript exports, data and an image."""
    d = tmp_path_factory.mktemp("made")
    model = mobilenets.create_model("mobilenet_v3_small_minimal", width_mult=0.25, num_classes=4)
    ckpt = mobilenets.save_model(model, d / "m.safetensors", preprocessing=PREPROCESSING)
    Image.new("RGB", (32, 32), (120, 30, 200)).save(d / "x.png")
    return {"ckpt": ckpt, "pt2": export_checkpoint(ckpt, "pt2", d / "m.pt2").path,
            "pt": export_checkpoint(ckpt, "torchscript", d / "m.pt").path,
            "data": make_idx_dir(d / "data", n_train=16, n_test=8), "image": d / "x.png"}


def crafted(kind: str, made: dict[str, Path], d: Path, marker: Path) -> Path:
    """One crafted file of ``kind``, built from the real exports above."""
    pt2 = made["pt2"]
    if kind == "pt2-extra-member":  # the red-team's file: a pickle beside the tensors
        out = rezip(pt2, d / "e.pt2", lambda n, b: b,
                    {f"{root_of(pt2)}/data/constants/model.pt": payload(marker)})
    elif kind == "pt2-sample-inputs":  # a member torch writes, holding a pickle payload
        out = rezip(pt2, d / "e.pt2", lambda n, b: payload(marker) if "sample_inputs" in n else b)
    elif kind.startswith("pt2-program-"):
        def change(name: str, data: bytes) -> bytes:
            if not name.endswith("models/model.json"):
                return data
            program = json.loads(data)
            edit_program(program, marker, kind.rsplit("-", 1)[1])
            return json.dumps(program).encode()
        out = rezip(pt2, d / "e.pt2", change)
    elif kind == "pt2-legacy":  # torch's pre-2.7 layout, read by its weights_only=False fallback
        out = d / "e.pt2"
        with zipfile.ZipFile(out, "w") as z:
            z.writestr("version", "8.0")
            z.writestr("serialized_exported_program.json", "{}")
            z.writestr("serialized_state_dict.pt", payload(marker))
            z.writestr("serialized_constants.pt", payload(marker))
    elif kind == "torchscript-payload":
        out = rezip(made["pt"], d / "e.pt", lambda n, b: payload(marker) if n.endswith("data.pkl") else b)
    elif kind == "pickle-as-safetensors":
        out = d / "e.safetensors"
        out.write_bytes(payload(marker))
    else:
        raise AssertionError(kind)
    if out.suffix in (".pt2", ".pt"):
        reseal(out, pt2 if out.suffix == ".pt2" else made["pt"])
    return out


PT2_KINDS = ["pt2-extra-member", "pt2-sample-inputs", "pt2-program-expr", "pt2-program-guards",
             "pt2-program-target", "pt2-legacy"]
ARTIFACT_KINDS = [*PT2_KINDS, "torchscript-payload", "pickle-as-safetensors"]


def one_error(capfd: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The CLI's contract for a refused file: status 2, and stderr (file-descriptor level, so
    torch's own log handlers are seen too) is exactly one ``error:`` line."""
    code = main(argv)
    err = capfd.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("kind", ARTIFACT_KINDS)
def test_crafted_artifacts_run_no_code_in_predict_eval_and_python(kind: str, made, tmp_path: Path,
                                                                  capfd) -> None:
    marker = tmp_path / "PWNED"
    evil = crafted(kind, made, tmp_path, marker)
    one_error(capfd, ["predict", str(evil), str(made["image"])])
    one_error(capfd, ["eval", str(evil), "--data", str(made["data"])])
    loader = mobilenets.load_model if evil.suffix == ".safetensors" else load_artifact
    with pytest.raises(MobilenetsError):
        loader(evil)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pt2-extra-member", "pt2-program-expr", "pickle-as-safetensors"])
def test_commands_that_take_checkpoints_refuse_crafted_files(kind: str, made, tmp_path: Path,
                                                             capfd) -> None:
    marker = tmp_path / "PWNED"
    evil = crafted(kind, made, tmp_path, marker)
    one_error(capfd, ["bench", str(evil), "--batch", "1", "--backends", "eager", "--seconds", "0.01"])
    one_error(capfd, ["export", str(evil), "--format", "onnx", "-o", str(tmp_path / "o.onnx")])
    one_error(capfd, ["train", "--init", str(evil), "--data", str(made["data"]),
                      "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert not marker.exists()


def test_resume_from_a_run_whose_checkpoint_is_a_payload(made, tmp_path: Path, capfd) -> None:
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(payload(marker))
    (run / "config.json").write_text(json.dumps({"model": "mobilenet_v3_small", "data": str(made["data"])}))
    one_error(capfd, ["train", "--out", str(run), "--resume"])
    assert not marker.exists()


def test_the_real_exports_still_load(made) -> None:
    """The checks refuse crafted files, not ours: the .pt2 loads as it is, TorchScript with
    trust_code."""
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert load_artifact(made["pt2"])(x).shape == (1, 4)
    assert load_artifact(made["pt"], trust_code=True)(x).shape == (1, 4)


def test_torchscript_needs_trust_code(made, capfd) -> None:
    with pytest.raises(MobilenetsError, match="--trust-code"):
        load_artifact(made["pt"])
    err = one_error(capfd, ["predict", str(made["pt"]), str(made["image"])])
    assert "--trust-code" in err and "program" in err
    assert main(["predict", str(made["pt"]), str(made["image"]), "--trust-code"]) == 0


def test_torch_logger_output_is_shown_only_with_verbose(made, tmp_path: Path, capfd) -> None:
    """A program from a future schema (not a payload): torch logs a warning and a traceback."""
    def future(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        program["schema_version"]["major"] += 100
        return json.dumps(program).encode()
    evil = rezip(made["pt2"], tmp_path / "e.pt2", future)
    reseal(evil, made["pt2"])
    one_error(capfd, ["predict", str(evil), str(made["image"])])
    assert main(["--verbose", "predict", str(evil), str(made["image"])]) == 2
    assert "while loading" in capfd.readouterr().err


# ----------------------------------------------------------------------------- weights files

def _pth_payloads(made, d: Path, marker: Path) -> list[Path]:
    real = d / "real.pth"
    torch.save({"features.0.weight": torch.zeros(2)}, real)
    legacy = d / "legacy.pth"
    legacy.write_bytes(payload(marker))
    in_data = rezip(real, d / "data.pth", lambda n, b: payload(marker) if n.endswith("data.pkl") else b)
    extra = rezip(real, d / "extra.pth", lambda n, b: b, {f"{root_of(real)}/evil.pkl": payload(marker)})
    return [legacy, in_data, extra]


def test_pth_payloads_in_every_member_run_no_code(made, tmp_path: Path, capfd) -> None:
    marker = tmp_path / "PWNED"
    for evil in _pth_payloads(made, tmp_path, marker):
        one_error(capfd, ["convert", "--from", "torchvision", str(evil), "--model", "mobilenet_v2",
                          "-o", str(tmp_path / "o.safetensors")])
    assert not marker.exists()


def test_keras_h5_lambda_layer_is_never_deserialised(tmp_path: Path, capfd) -> None:
    """A full-model .h5 whose config holds a Lambda layer with marshalled code: only the
    weight arrays are read."""
    import base64
    import marshal

    from reference import all_fixtures, fixture_tensors, load_fixture
    from test_reference import _write_legacy_h5

    h5py = pytest.importorskip("h5py")
    marker = tmp_path / "PWNED"
    code = compile(f"import os; os.system('touch {marker}')", "lambda", "exec")
    config = {"class_name": "Functional", "config": {"layers": [{"class_name": "Lambda", "config": {
        "function": [base64.b64encode(marshal.dumps(code)).decode(), None, None]}}]}}
    fx = load_fixture(next(p for p in all_fixtures() if p.name.startswith("keras__MobileNetV3Small__minimal")))
    h5 = tmp_path / "lambda.h5"
    _write_legacy_h5(h5, fixture_tensors(fx))
    with h5py.File(h5, "a") as f:
        f.attrs["model_config"] = json.dumps(config)
    out = tmp_path / "o.safetensors"
    assert main(["convert", "--from", "keras", str(h5), "--model", "MobileNetV3Small",
                 "--width-mult", "0.75", "--minimalistic", "-o", str(out)]) == 0
    assert out.is_file() and not marker.exists()


# ----------------------------------------------------------------------------- ONNX

@pytest.fixture(scope="module")
def onnx_model(made) -> Path:
    pytest.importorskip("onnxruntime")
    return export_checkpoint(made["ckpt"], "onnx", made["ckpt"].with_suffix(".onnx")).path


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_onnx_external_data_outside_the_model_folder_is_refused(location: str, onnx_model: Path,
                                                                tmp_path: Path, made, capfd) -> None:
    import onnx

    proto = onnx.load(str(onnx_model))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(4096))
    evil = folder / "evil.onnx"
    evil.write_bytes(proto.SerializeToString())
    with pytest.raises(MobilenetsError, match="outside the model's folder"):
        load_artifact(evil)
    assert "outside the model's folder" in one_error(capfd, ["predict", str(evil), str(made["image"])])


def test_onnx_custom_op_domain_is_a_clear_error(onnx_model: Path, tmp_path: Path) -> None:
    """A node in a custom domain: onnxruntime would need a custom-op library, which nothing
    here ever registers, so the model fails to load with one clear error."""
    import onnx

    proto = onnx.load(str(onnx_model))
    proto.graph.node[0].domain = "com.attacker"
    proto.opset_import.add(domain="com.attacker", version=1)
    evil = tmp_path / "custom.onnx"
    evil.write_bytes(proto.SerializeToString())
    with pytest.raises(MobilenetsError, match="not a loadable ONNX model"):
        load_artifact(evil)


def test_the_policy_table_names_every_loadable_suffix() -> None:
    """docs/security.md prints this table: it covers every suffix a command loads."""
    from mobilenets.io.artifact import EXTENSIONS

    covered = {s for row in safety.POLICY for s in row.suffixes}
    assert set(EXTENSIONS.values()) | {".safetensors", ".pth", ".bin", ".h5"} <= covered
    assert {row.format for row in safety.POLICY if row.can_carry_code} >= {"pt2", "torchscript"}


@pytest.mark.parametrize("kind", ["pt2-extra-member", "pt2-program-target", "torchscript-payload"])
def test_serve_refuses_crafted_models_before_it_listens(kind: str, made, tmp_path: Path, capfd) -> None:
    """``serve`` loads through the same gate: a crafted model is one error line, no server."""
    pytest.importorskip("fastapi")
    marker = tmp_path / "PWNED"
    evil = crafted(kind, made, tmp_path, marker)
    one_error(capfd, ["serve", str(evil), "--port", "0"])
    assert not marker.exists()
