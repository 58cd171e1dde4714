"""Pretrained weights through a real HTTP server on 127.0.0.1: no internet needed.

The server serves each source's own format (torchvision ``.pth`` state dict, timm
``.safetensors``, Keras ``.h5``) made from the reference fixtures' weights; a test-only
registry (the table patched in ``mobilenets.io.weights``) points at it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mobilenets
from mobilenets import MobilenetsError, create_model
from mobilenets.cli.main import main
from mobilenets.io import weights as weights_mod
from mobilenets.io.checkpoint import load_model, save_model
from mobilenets.io.download import cache_path
from mobilenets.io.weights_table import WEIGHTS, WeightsEntry, _pre
from reference import FIXTURES, fixture_tensors, load_fixture
from test_reference import _assert_logits, _write_legacy_h5

TV_FX = "torchvision__mobilenet_v3_small__num_classes10_width_mult0.75.json"
TIMM_FX = "timm__mobilenetv3_small_075__num_classes10.json"
KERAS_FX = "keras__MobileNetV3Small__minimalisticTrue_alpha0.75.json"


def _fx(name: str) -> dict:
    return load_fixture(FIXTURES / name)


def _torch_bytes(tensors: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, buf)
    return buf.getvalue()


def _files(tmp: Path) -> dict[str, bytes]:
    """Every served file, by URL path."""
    tv = _torch_bytes(fixture_tensors(_fx(TV_FX)))
    imagenet = fixture_tensors(_fx(TV_FX))  # the same network with a 1000-class head
    g = np.random.default_rng(0)
    imagenet["classifier.3.weight"] = g.uniform(-0.05, 0.05, (1000, 768)).astype(np.float32)
    imagenet["classifier.3.bias"] = g.uniform(-0.1, 0.1, 1000).astype(np.float32)
    tv1000 = _torch_bytes(imagenet)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fixture_tensors(_fx(TIMM_FX)).items()},
              str(tmp / "timm.safetensors"))
    _write_legacy_h5(tmp / "keras.h5", fixture_tensors(_fx(KERAS_FX)))
    timm, keras = (tmp / "timm.safetensors").read_bytes(), (tmp / "keras.h5").read_bytes()
    tv_name = f"/models/tv_small-{hashlib.sha256(tv).hexdigest()[:8]}.pth"
    files = {tv_name: tv, f"/models/tv1000-{hashlib.sha256(tv1000).hexdigest()[:8]}.pth": tv1000,
             "/timm/mobilenetv3_small_075/model.safetensors": timm, "/keras/v3_small_minimal.h5": keras,
             "/models/wrong-00000000.pth": tv}
    files.update({f"/mirror/weights.example{p}": b for p, b in list(files.items())})
    return files


class Server:
    """``http.server`` in a thread. ``/status/<code>/...`` answers that code; ``/truncated/...``
    promises more bytes than it sends, then closes the connection."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests = files, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                server.requests.append(self.path)
                if self.path.startswith("/status/"):
                    self.send_error(int(self.path.split("/")[2]))
                    return
                truncated = self.path.startswith("/truncated/")
                body = server.files.get(self.path[len("/truncated"):] if truncated else self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (1000 if truncated else 0)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncated else body)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(_files(tmp_path_factory.mktemp("served")))
    yield s
    s.stop()


def _sha(server: Server, path: str) -> str:
    return hashlib.sha256(server.files[path]).hexdigest()


def _rows(server: Server) -> tuple[WeightsEntry, ...]:
    """Test-only registry rows, in the shape of the real ones, pointing at the server."""
    tv_path = next(p for p in server.files if p.startswith("/models/tv_small-"))
    tv1000 = next(p for p in server.files if p.startswith("/models/tv1000-"))
    keras_md5 = hashlib.md5(server.files["/keras/v3_small_minimal.h5"]).hexdigest()
    base = dict(licence="test", top5=None, top1_source="test")
    return (
        WeightsEntry("torchvision.mobilenet_v3_small.test", "torchvision.test", "torchvision",
                     "mobilenet_v3_small", "mobilenet_v3_small", 0.75, server.url + tv_path, None, None,
                     preprocessing=_pre(232, 224, "bilinear", "IN"), top1=60.0,
                     kwargs=(("width_mult", 0.75),), torchvision_default=True, **base),
        WeightsEntry("timm.mobilenetv3_small_075.test", "timm.test", "timm", "mobilenetv3_small_075",
                     "mobilenet_v3_small", 0.75, server.url + "/timm/mobilenetv3_small_075/model.safetensors",
                     _sha(server, "/timm/mobilenetv3_small_075/model.safetensors"), None,
                     preprocessing=_pre(256, 224, "bicubic", "IN"), top1=65.0, **base),
        WeightsEntry("keras.MobileNetV3Small.test", "keras.test", "keras", "MobileNetV3Small",
                     "mobilenet_v3_small_minimal", 0.75, server.url + "/keras/v3_small_minimal.h5", None,
                     keras_md5, preprocessing=_pre(224, 224, "bilinear", "INC"), top1=50.0,
                     kwargs=(("alpha", 0.75), ("minimalistic", True)), **base),
        WeightsEntry("torchvision.mobilenet_v3_small.imagenet_test", "torchvision.imagenet_test",
                     "torchvision", "mobilenet_v3_small", "mobilenet_v3_small", 0.75, server.url + tv1000,
                     None, None, preprocessing=_pre(256, 224, "bilinear", "IN"), top1=1.0,
                     kwargs=(("width_mult", 0.75),), **base),
        WeightsEntry("timm.mirrored.test", "timm.mirrored", "timm", "mobilenetv3_small_075",
                     "mobilenet_v3_small", 0.75, "https://weights.example/timm/mobilenetv3_small_075/model.safetensors",
                     _sha(server, "/timm/mobilenetv3_small_075/model.safetensors"), None,
                     preprocessing=_pre(256, 224, "bicubic", "IN"), top1=None, **base),
    )


@pytest.fixture
def registry(server, monkeypatch, tmp_path):
    """The test registry, an empty cache in ``tmp_path`` and no mirror."""
    rows = _rows(server)
    monkeypatch.setattr(weights_mod, "WEIGHTS", rows)
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOBILENETS_MIRROR", raising=False)
    return {r.short: r for r in rows}


def _cached_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "home"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ----------------------------------------------------------------------------- downloads

@pytest.mark.parametrize("short, fixture", [("torchvision.test", TV_FX), ("timm.test", TIMM_FX),
                                            ("keras.test", KERAS_FX)])
def test_each_source_format_downloads_converts_and_reproduces_the_fixture(registry, short, fixture, tmp_path):
    row = registry[short]
    model = create_model(row.model, width_mult=0.75, pretrained=short)
    _assert_logits(model, _fx(fixture))
    assert model.preprocessing["resize_size"] == row.preprocessing.resize
    assert _cached_files(tmp_path) == [cache_path(row.url)]


def test_second_call_is_a_cache_hit_with_the_server_stopped(registry, server, monkeypatch):
    path = "/timm/mobilenetv3_small_075/model.safetensors"
    own = Server({path: server.files[path]})
    row = dataclasses.replace(registry["timm.test"], url=own.url + path)
    monkeypatch.setattr(weights_mod, "WEIGHTS", (row,))
    try:
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")
    finally:
        own.stop()
    assert own.requests == [path]
    _assert_logits(create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test"), _fx(TIMM_FX))


def test_cache_hit_needs_no_network(registry, server, tmp_path):
    before = len(server.requests)
    create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")
    assert len(server.requests) == before + 1
    create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")
    assert len(server.requests) == before + 1


def test_hash_mismatch_is_an_error_and_nothing_is_kept(registry, monkeypatch, tmp_path):
    row = dataclasses.replace(registry["timm.test"], sha256="0" * 64)
    monkeypatch.setattr(weights_mod, "WEIGHTS", (row,))
    with pytest.raises(MobilenetsError, match=r"hash [0-9a-f]{64}, expected SHA-256 0{64}.*not used and not kept"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")
    assert _cached_files(tmp_path) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_are_clear_and_cache_nothing(registry, server, status, tmp_path):
    url = f"{server.url}/status/{status}/w.safetensors" if status != 404 else f"{server.url}/missing/w.safetensors"
    with pytest.raises(MobilenetsError, match=f"HTTP {status}.*nothing was cached"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained=url)
    assert _cached_files(tmp_path) == []


@pytest.mark.parametrize("path", ["/timm/mobilenetv3_small_075/model.safetensors", "/keras/v3_small_minimal.h5",
                                  "/models/tv_small-"])
def test_a_truncated_body_is_an_error_and_caches_nothing(registry, server, path, tmp_path):
    path = next(p for p in server.files if p.startswith(path))
    with pytest.raises(MobilenetsError, match="cut short.*nothing was cached"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained=f"{server.url}/truncated{path}")
    assert _cached_files(tmp_path) == []


def test_an_unwritable_cache_is_a_clear_error(registry, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MOBILENETS_HOME", str(blocker))
    with pytest.raises(MobilenetsError, match="cannot write to the weights cache.*MOBILENETS_HOME"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")


def test_a_read_only_cache_folder_is_a_clear_error(registry, monkeypatch, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders (the not-a-folder case covers the message)")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    monkeypatch.setenv("MOBILENETS_HOME", str(ro))
    with pytest.raises(MobilenetsError, match="cannot write to the weights cache"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")


def _closed_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_names_the_url_and_the_path_to_place_the_file_at(registry, server, monkeypatch, tmp_path):
    row = dataclasses.replace(registry["timm.test"], url=registry["timm.test"].url.replace(server.url, f"http://127.0.0.1:{_closed_port()}"))
    monkeypatch.setattr(weights_mod, "WEIGHTS", (row,))
    dest = cache_path(row.url)
    with pytest.raises(MobilenetsError) as e:
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")
    assert row.url in str(e.value) and f"place the file at {dest}" in str(e.value)
    assert _cached_files(tmp_path) == []
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(server.files["/timm/mobilenetv3_small_075/model.safetensors"])
    _assert_logits(create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test"), _fx(TIMM_FX))


def test_a_file_placed_by_hand_is_checked_too(registry, tmp_path):
    dest = cache_path(registry["timm.test"].url)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the weights")
    with pytest.raises(MobilenetsError, match="expected SHA-256.*deleted"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.test")
    assert not dest.exists()


def test_mirror_serves_registry_urls_with_the_same_hash_check(registry, server, monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILENETS_MIRROR", server.url + "/mirror/")
    before = len(server.requests)
    model = create_model("mobilenet_v3_small", width_mult=0.75, pretrained="timm.mirrored")
    assert server.requests[before:] == ["/mirror/weights.example/timm/mobilenetv3_small_075/model.safetensors"]
    _assert_logits(model, _fx(TIMM_FX))
    assert cache_path(registry["timm.mirrored"].url).is_file()


def test_sha256_fragment_of_a_url_is_checked(registry, server, tmp_path):
    path = "/timm/mobilenetv3_small_075/model.safetensors"
    url = f"{server.url}{path}#sha256={_sha(server, path)}"
    _assert_logits(create_model("mobilenet_v3_small", width_mult=0.75, pretrained=url), _fx(TIMM_FX))
    with pytest.raises(MobilenetsError, match="expected SHA-256 f{64}"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained=f"{server.url}/keras/v3_small_minimal.h5#sha256={'f' * 64}")
    assert not cache_path(f"{server.url}/keras/v3_small_minimal.h5").exists()


def test_torch_hub_hash_prefix_in_the_file_name_is_checked(registry, server, tmp_path):
    good = next(p for p in server.files if p.startswith("/models/tv_small-"))
    model = create_model("mobilenet_v3_small", width_mult=0.75, pretrained=server.url + good)
    _assert_logits(model, _fx(TV_FX))
    with pytest.raises(MobilenetsError, match="expected SHA-256 prefix 00000000"):
        create_model("mobilenet_v3_small", width_mult=0.75, pretrained=server.url + "/models/wrong-00000000.pth")


# ----------------------------------------------------------------------------- options and tags

def test_an_option_conflict_names_both_values_before_any_download(registry, server, tmp_path):
    before = len(server.requests)
    with pytest.raises(MobilenetsError, match=r"width_mult=0\.75, but you gave width_mult=1\.0"):
        create_model("mobilenet_v3_small", width_mult=1.0, pretrained="timm.mobilenetv3_small_075.test")
    with pytest.raises(MobilenetsError, match=r"bn_eps=0\.001, but you gave bn_eps=1e-05"):
        create_model("mobilenet_v3_small_minimal", width_mult=0.75, bn_eps=1e-5, pretrained="keras.test")
    with pytest.raises(MobilenetsError, match=r"num_classes=1000, but you gave num_classes=10"):
        create_model("mobilenet_v3_small", width_mult=0.75, num_classes=10, pretrained="timm.test")
    assert len(server.requests) == before
    model = create_model("mobilenet_v3_small", width_mult=0.75, dropout=0.5, pretrained="timm.test")
    assert model.model_kwargs["dropout"] == 0.5  # dropout leaves the weights alone


def test_a_local_file_takes_its_classes_from_the_file_and_refuses_others(registry, server, tmp_path):
    file = tmp_path / "w.pth"
    file.write_bytes(server.files[next(p for p in server.files if p.startswith("/models/tv_small-"))])
    _assert_logits(create_model("mobilenet_v3_small", width_mult=0.75, pretrained=file), _fx(TV_FX))
    with pytest.raises(MobilenetsError, match=r"num_classes=10, but you gave num_classes=1000"):
        create_model("mobilenet_v3_small", width_mult=0.75, num_classes=1000, pretrained=str(file))
    with pytest.raises(MobilenetsError, match="weights file not found"):
        create_model("mobilenet_v3_small", pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_true_picks_the_default_tag(registry, server):
    before = len(server.requests)
    model = create_model("mobilenet_v3_small", width_mult=0.75, pretrained=True)
    assert model.pretrained["tag"] == "torchvision.mobilenet_v3_small.test"  # torchvision's DEFAULT
    assert len(server.requests) == before + 1 and server.requests[-1].startswith("/models/tv_small-")


def test_unknown_tags_and_models_are_clear_errors(registry):
    with pytest.raises(MobilenetsError, match="no weights 'timm.tset'.*did you mean"):
        create_model("mobilenet_v3_small", pretrained="timm.tset")
    with pytest.raises(MobilenetsError, match="are for mobilenet_v3_small_minimal, not mobilenet_v3_small"):
        create_model("mobilenet_v3_small", pretrained="keras.MobileNetV3Small.test")
    with pytest.raises(MobilenetsError, match="no published weights for mobilenet_v1"):
        create_model("mobilenet_v1", pretrained=True)


# ----------------------------------------------------------------------------- labels, CLI

def _photo(path: Path) -> Path:
    g = np.random.default_rng(1)
    Image.fromarray(g.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_pretrained_prints_imagenet_labels_and_save_keeps_them(registry, tmp_path, capsys):
    photo = _photo(tmp_path / "photo.jpg")
    tag = "torchvision.mobilenet_v3_small.imagenet_test"
    assert main(["predict", "--pretrained", tag, str(photo), str(photo), "--top-k", "2", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    names = weights_mod.imagenet_classes()
    assert len(preds) == 2 and all(t["class"] in names for p in preds for t in p["top"])
    model = create_model("mobilenet_v3_small", width_mult=0.75, pretrained="torchvision.imagenet_test")
    saved = save_model(model, tmp_path / "m.safetensors")
    _, meta = load_model(saved)
    assert meta["classes"] == names and meta["preprocessing"]["resize_size"] == 256
    assert main(["predict", str(saved), str(photo)]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1].split(" ")[0] in " ".join(names)


def test_eval_pretrained_on_an_imagenet_style_folder(registry, tmp_path, capsys):
    data = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (data / split / wnid).mkdir(parents=True)
            _photo(data / split / wnid / "a.jpg")
    assert main(["eval", "--pretrained", "torchvision.mobilenet_v3_small.imagenet_test", "--data", str(data),
                 "--split", "val", "--json", "--out", str(tmp_path / "out")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["count"] == 2 and len(res["classes"]) == 1000 and res["classes"][0] == "n01440764"


def test_cli_errors_are_one_line(registry, tmp_path, capsys):
    assert main(["predict", "--pretrained", "no.such.tag", str(_photo(tmp_path / "p.jpg"))]) == 2
    assert "neither a weights tag nor a model" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "p.jpg")]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert main(["weights", "resnet50"]) == 2


def test_weights_command_lists_the_real_registry(capsys):
    assert main(["weights", "mobilenet_v3_small", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in rows} == {"mobilenet_v3_small"}
    tv = next(r for r in rows if r["tag"] == "torchvision.mobilenet_v3_small.imagenet1k_v1")
    assert tv["default"] and tv["params"] == 2_542_856 and tv["top1"] == 67.668 and tv["sha256"] == "047dcff4"
    assert main(["weights", "mobilenet_v3_small_minimal"]) == 0
    out = capsys.readouterr().out
    assert "2 checkpoints" in out and "mobilenetv3_rw" in out and "md5:99cd97fb" in out


def test_the_real_registry_is_consistent():
    """Every row resolves to its model through its converter; tags are unique; each model's
    default at width 1.0 is torchvision's DEFAULT or the best published top-1."""
    from mobilenets.io.convert import resolve_name

    assert len({w.tag for w in WEIGHTS}) == len(WEIGHTS)
    assert len({(w.model, w.width_mult, w.short) for w in WEIGHTS}) == len(WEIGHTS)
    for w in WEIGHTS:
        ours, kw = resolve_name(w.source, w.name, dict(w.kwargs))
        assert ours == w.model and kw.get("width_mult", 1.0) == w.width_mult, w.tag
    defaults = {m: w.tag for m, w in weights_mod.default_tags().items()}
    assert defaults["mobilenet_v2"] == "torchvision.mobilenet_v2.imagenet1k_v2"
    assert defaults["mobilenet_v1"] == "timm.mobilenetv1_100.ra4_e3600_r224_in1k"
    assert len(weights_mod.imagenet_classes()) == 1000 == len(set(weights_mod.imagenet_classes()))
    assert weights_mod.imagenet_classes()[:2] == ["tench", "goldfish"]
    assert mobilenets.create_model("mobilenet_v2").model_name == "mobilenet_v2"  # pretrained off by default


def test_train_from_pretrained_weights_on_a_small_grey_folder(registry, tmp_path, capsys):
    """``train --pretrained TAG``: the published weights (served locally) become the --init
    checkpoint: a new 3-class classifier, the RGB stem summed for grey images, strict elsewhere."""
    from datagen import make_image_folder

    data = make_image_folder(tmp_path / "photos", n_per_class=8, size=40)
    out = tmp_path / "run"
    assert main(["train", "--pretrained", "torchvision.mobilenet_v3_small.imagenet_test", "--data", str(data),
                 "--out", str(out), "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
                 "--no-precise-bn"]) == 0
    log = capsys.readouterr()
    assert "classifier" in log.out + log.err
    model, meta = load_model(out / "last.safetensors")
    assert model.num_classes == 3 and meta["preprocessing"]["channels"] == 1
    assert main(["train", "--pretrained", "x", "--init", str(out / "last.safetensors"),
                 "--data", str(data), "--out", str(tmp_path / "r2")]) == 2
    assert "does not combine with --init" in capsys.readouterr().err


def test_eval_crops_folder_images_as_predict_does_with_the_weights_resize(tmp_path):
    """Published weights resize the shorter side to ``resize_size`` (256) and crop 224: ``eval``
    on a folder feeds the model exactly what ``predict`` feeds it for the same file."""
    from mobilenets.data.datasets import load_dataset
    from mobilenets.data.preprocessing import Preprocessing

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            _photo(tmp_path / split / cls / "x.png")
    pre = Preprocessing(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256, "bicubic")
    ds = load_dataset(str(tmp_path), "val", image_size=224, channels=3, augment=False,
                      crop_fraction=pre.crop_fraction, interpolation=pre.interpolation)
    image, _ = ds[0]
    with Image.open(tmp_path / "val" / "a" / "x.png") as photo:
        want = pre.apply([photo])
    assert torch.equal(pre.apply(image.unsqueeze(0)), want)
    square = load_dataset(str(tmp_path), "val", image_size=224, channels=3, augment=False)[0][0]
    assert not torch.equal(square, image)  # without resize_size: the whole central square
