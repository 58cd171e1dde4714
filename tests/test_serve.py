"""``mobilenets serve`` (issue 30): the batcher, the metrics, the upload checks in process; then
real servers on 127.0.0.1 (a checkpoint, an exported ONNX file with two workers), every bad
input's 4xx, a small load test in which nothing is lost, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")

from mobilenets.cli.main import main  # noqa: E402
from mobilenets.deploy.predict import predict_files  # noqa: E402
from mobilenets.io.checkpoint import load_model  # noqa: E402
from mobilenets.serve.batching import Batcher  # noqa: E402
from mobilenets.serve.inputs import HTTPProblem, parse_top_k  # noqa: E402
from mobilenets.serve.load import ServerProcess, Upload, run_load  # noqa: E402
from mobilenets.serve.metrics import Metrics  # noqa: E402
from mobilenets.serve.model import BadImage, check_image_bytes, load_served  # noqa: E402
from test_weights import registry, server  # noqa: E402, F401  (a local weights registry and its HTTP server)

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "fmnist_v3s_minimal_025.safetensors"
MAX_BODY = 64 * 1024  # the servers below run with --max-body-mb 0.0625


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` 1-bit pixels, with a few bytes of data:
    what a decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Path]:
    """Five Fashion-MNIST test images as PNG files."""
    images = np.load(FIXTURES / "fmnist_sample.npz")["test_images"][:5]
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"test{i}.png")
        paths[-1].write_bytes(png(img))
    return paths


def bad_uploads(good: bytes) -> list[tuple[Upload, int]]:
    """Every kind of bad input with the status it must get."""
    return [(Upload(b"certainly not an image", "image/png", 4, "not an image"), 400),
            (Upload(good[: len(good) // 2], "image/png", 4, "truncated png"), 400),
            (Upload(b"", "image/png", 4, "empty body"), 400),
            (Upload(png_header_only(20000, 20000), "image/png", 4, "bomb over 2x Pillow's limit"), 413),
            (Upload(png_header_only(10000, 10000), "image/png", 4, "bomb over Pillow's limit"), 413),
            (Upload(b"\0" * (MAX_BODY + 1), "image/png", 4, "body over --max-body-mb"), 413),
            (Upload(good, "text/plain", 4, "wrong content type"), 415),
            (Upload(b'{"image": 1}', "application/json", 4, "json"), 415),
            (Upload(b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
                    "multipart/form-data; boundary=x", 4, "form without a file"), 400)]


def post(port: int, path: str, body: bytes, ctype: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    parts = [b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
             b"Content-Type: image/png\r\n\r\n%s\r\n" % (name.encode(), data) for name, data in files]
    return b"".join(parts) + b"--b0undary--\r\n", "multipart/form-data; boundary=b0undary"


# ----------------------------------------------------------------------------- in process

def test_batcher_groups_concurrent_requests_and_answers_each_its_own():
    sizes = []

    def predict(batch: torch.Tensor, top_k: int) -> list[list[dict]]:
        sizes.append(len(batch))
        return [[{"class": str(int(x.flatten()[0])), "probability": 1.0}] * top_k for x in batch]

    async def run(max_batch: int) -> list:
        batcher = Batcher(predict, max_batch=max_batch, max_wait_s=0.2)
        await batcher.start()
        answers = await asyncio.gather(*(batcher.submit(torch.full((1, 2, 2), float(i)), 1 + i % 3)
                                         for i in range(10)))
        await batcher.stop()
        return answers

    answers = asyncio.run(run(4))
    assert sizes == [4, 4, 2]
    assert [a.top[0]["class"] for a in answers] == [str(i) for i in range(10)]
    assert [len(a.top) for a in answers] == [1 + i % 3 for i in range(10)]  # each its own top_k
    assert [a.batch_size for a in answers] == [4] * 8 + [2] * 2
    sizes.clear()
    asyncio.run(run(1))
    assert sizes == [1] * 10  # --max-batch 1: no batching


def test_batcher_gives_a_failed_pass_to_every_waiting_request_and_goes_on():
    calls = []

    def predict(batch: torch.Tensor, top_k: int) -> list[list[dict]]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [[{"class": "a", "probability": 1.0}]] * len(batch)

    async def run() -> tuple[list, object]:
        batcher = Batcher(predict, max_batch=8, max_wait_s=0.1)
        await batcher.start()
        first = await asyncio.gather(*(batcher.submit(torch.zeros(1), 1) for _ in range(3)), return_exceptions=True)
        second = await batcher.submit(torch.zeros(1), 1)
        await batcher.stop()
        return first, second

    first, second = asyncio.run(run())
    assert all(isinstance(e, RuntimeError) for e in first)
    assert second.top == [{"class": "a", "probability": 1.0}]


def test_metrics_are_prometheus_text():
    m = Metrics()
    for status, seconds in ((200, 0.003), (200, 0.02), (400, 0.001)):
        m.request_started()
        m.request_done("/v1/predict", status, seconds)
    m.batch_done(3, 0.01)
    text = m.render()
    assert 'mobilenets_serve_requests_total{endpoint="/v1/predict",status="200"} 2' in text
    assert 'mobilenets_serve_request_errors_total{endpoint="/v1/predict",status="400"} 1' in text
    assert 'mobilenets_serve_request_duration_seconds_bucket{endpoint="/v1/predict",le="0.005"} 2' in text
    assert 'mobilenets_serve_request_duration_seconds_bucket{endpoint="/v1/predict",le="+Inf"} 3' in text
    assert 'mobilenets_serve_batch_size_bucket{le="2"} 0' in text and 'mobilenets_serve_batch_size_bucket{le="4"} 1' in text
    assert "mobilenets_serve_images_total 3" in text and "mobilenets_serve_in_flight_requests 0" in text
    for line in text.splitlines():  # every line a comment or `name{labels} value`
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? [0-9.e+-]+", line), line


def test_uploads_are_checked_before_decoding(samples):
    with pytest.raises(BadImage, match="decompression bomb") as e:
        check_image_bytes(png_header_only(10000, 10000))
    assert e.value.status == 413
    with pytest.raises(BadImage, match="empty"):
        check_image_bytes(b"")
    served = load_served(CHECKPOINT)
    with pytest.raises(BadImage, match="not a readable image") as e:
        served.preprocess(b"GIF89a broken")
    assert e.value.status == 400 and "BytesIO" not in str(e.value)


def test_uploads_are_preprocessed_and_classified_as_predict_does(samples):
    served = load_served(CHECKPOINT)
    model, meta = load_model(CHECKPOINT)
    expected = predict_files(model, meta, samples, top_k=3)
    batch = torch.stack([served.preprocess(p.read_bytes()) for p in samples])
    for want, got in zip(expected, served.predict(batch, 3)):
        assert [c for c, _ in want.top] == [g["class"] for g in got]
        assert [p for _, p in want.top] == pytest.approx([g["probability"] for g in got], abs=1e-5)
    assert served.card["params"] == sum(p.numel() for p in model.parameters())
    assert served.card["accuracy"]["source"].startswith("measured")


def test_top_k_is_checked():
    assert parse_top_k({}) == 5 and parse_top_k({"top_k": "3"}) == 3
    for bad in ("0", "x", "100000"):
        with pytest.raises(HTTPProblem, match="top_k"):
            parse_top_k({"top_k": bad})


def test_pretrained_weights_are_served_with_imagenet_classes_and_their_published_accuracy(registry, samples):
    tag = "torchvision.mobilenet_v3_small.imagenet_test"
    served = load_served(None, pretrained=tag)
    assert served.card["accuracy"] == {"top1": 1.0, "source": f"published ({tag}, ImageNet)"}
    assert len(served.meta["classes"]) == 1000 and served.preprocessing["input_size"] == 224
    top = served.predict(served.preprocess(samples[0].read_bytes())[None], 3)[0]
    assert len(top) == 3 and all(t["class"] in served.meta["classes"] for t in top)


@pytest.mark.parametrize("argv, message", [
    (["serve", "missing.safetensors"], "model not found"),
    (["serve", str(CHECKPOINT), "--max-batch", "0"], "--max-batch"),
    (["serve", str(CHECKPOINT), "--pretrained", "mobilenet_v2"], "not both"),
    (["serve", str(CHECKPOINT), "--backend", "onnxruntime"], "cannot run"),
    (["serve"], "give a checkpoint"),
])
def test_user_mistakes_are_one_error_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_torchscript_file_is_served_only_when_trusted(tmp_path, capsys):
    """Models load through the artifact loader and its safety policy (docs/security.md)."""
    program = tmp_path / "model.pt"
    program.write_bytes(b"not even a zip")
    assert main(["serve", str(program)]) == 2
    assert "is TorchScript and was not loaded" in capsys.readouterr().err
    assert main(["serve", str(program), "--trust-code"]) == 2  # trusted: read, and its sidecar missed
    assert "model.pt.json not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a real server

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(CHECKPOINT, "--max-body-mb", str(MAX_BODY / 2**20), "--max-wait-ms", "20",
                       "--threads", "1", "--log-level", "warning", log=log) as s:
        yield s
    assert s.exit_code == 0, log.read_text()[-2000:]


def test_predict_answers_what_the_predict_command_answers(live, samples):
    model, meta = load_model(CHECKPOINT)
    expected = predict_files(model, meta, samples[:2], top_k=5)
    status, raw = post(live.port, "/v1/predict?top_k=3", samples[0].read_bytes(), "image/png")
    assert status == 200 and raw["model"] == "mobilenet_v3_small_minimal"
    assert [t["class"] for t in raw["top"]] == [c for c, _ in expected[0].top[:3]]
    assert raw["top"][0]["probability"] == pytest.approx(expected[0].top[0][1], abs=1e-5)
    assert set(raw["time_ms"]) == {"total", "decode", "queue", "inference"} and raw["batch_size"] >= 1
    body, ctype = multipart([("a.png", samples[0].read_bytes())])
    status, form = post(live.port, "/v1/predict", body, ctype)
    assert status == 200 and form["top"][:3] == raw["top"]
    body, ctype = multipart([(p.name, p.read_bytes()) for p in samples[:2]])
    status, batch = post(live.port, "/v1/predict/batch", body, ctype)
    assert status == 200 and [r["name"] for r in batch["results"]] == [p.name for p in samples[:2]]
    for want, got in zip(expected, batch["results"]):
        assert [t["class"] for t in got["top"]] == [c for c, _ in want.top]


def test_info_routes(live):
    status, body = live.get("/v1/model")
    card = json.loads(body)
    assert status == 200 and card["name"] == "mobilenet_v3_small_minimal" and card["backend"] == "torch"
    assert len(card["classes"]) == 10 and card["resolution"] == 28 and card["params"] == 76690
    assert card["madds"] > 0 and card["preprocessing"]["mean"] == [0.2863]
    assert live.get("/healthz") == (200, b'{"status":"ok"}')
    assert live.get("/readyz") == (200, b'{"ready":true}')
    status, page = live.get("/")
    assert status == 200 and b"<script src=\"/static/app.js\">" in page
    assert live.get("/static/app.js")[0] == 200 and live.get("/static/style.css")[0] == 200
    assert live.get("/static/secret.py")[0] == 404
    status, spec = live.get("/openapi.json")
    assert status == 200 and "/v1/predict/batch" in json.loads(spec)["paths"]


def test_every_bad_input_gets_its_4xx_and_the_server_keeps_serving(live, samples):
    good = samples[0].read_bytes()
    for upload, expected in bad_uploads(good):
        status, body = post(live.port, "/v1/predict", upload.body, upload.content_type)
        assert (status, upload.name) == (expected, upload.name) and body["error"], body
    body, ctype = multipart([("ok.png", good), ("broken.png", good[:40])])
    status, answer = post(live.port, "/v1/predict/batch", body, ctype)
    assert status == 400 and answer["error"].startswith("broken.png: not a readable image")
    assert post(live.port, "/v1/predict?top_k=0", good, "image/png")[0] == 400
    assert post(live.port, "/v1/predict", good, "image/png")[0] == 200


def test_small_load_loses_nothing_and_refuses_only_the_bad(live, samples):
    """The load benchmark in small: 300 requests from 8 clients, a third of them bad."""
    good = [Upload(p.read_bytes(), "image/png", 2, p.name) for p in samples]
    bad = [u for u, _ in bad_uploads(good[0].body) if u.name != "body over --max-body-mb"]
    uploads = [u for pair in zip(good * 2, bad + bad[:1]) for u in pair] + good[:2]
    images = lambda: int(re.search(rb"^mobilenets_serve_images_total (\d+)$", live.get("/metrics")[1], re.M)[1])  # noqa: E731
    before = images()
    result = run_load(live.port, uploads, 300, 8)
    summary = result.summary()
    assert result.wrong == [] and result.lost == 0 and summary["server_errors"] == 0
    n_good = sum(u.expect == 2 for u in (uploads * 300)[:300])
    assert summary["ok"] == n_good and summary["client_errors"] == 300 - n_good
    assert images() - before == n_good  # each good request classified once, none dropped
    assert max(int(k) for k in summary["batch_sizes"]) > 1  # concurrent requests were batched


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from mobilenets.deploy.export import export_model

    model, meta = load_model(CHECKPOINT)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_model(model, "onnx", path, preprocessing=meta["preprocessing"], classes=meta["classes"])
    return path


def test_an_exported_model_with_two_workers_and_a_graceful_sigterm(onnx_file, samples, tmp_path):
    """The ONNX export served by two worker processes: it answers as the checkpoint does, and
    a request still waiting in the batcher (--max-wait-ms 1500) when SIGTERM comes is answered
    before the server exits with status 0."""
    model, meta = load_model(CHECKPOINT)
    expected = predict_files(model, meta, samples[:1], top_k=3)[0]
    log = tmp_path / "server.log"
    with ServerProcess(onnx_file, "--workers", "2", "--max-wait-ms", "1500", "--max-batch", "64",
                       "--log-level", "warning", log=log) as s:
        status, body = s.get("/v1/model")
        assert json.loads(body)["backend"] == "onnxruntime" and json.loads(body)["format"] == "onnx"
        answers = []
        client = threading.Thread(target=lambda: answers.append(
            post(s.port, "/v1/predict?top_k=3", samples[0].read_bytes(), "image/png")))
        client.start()
        time.sleep(0.5)  # the request now waits in a batcher
        s.stop()
        client.join(30)
    assert s.exit_code == 0, log.read_text()[-2000:]
    assert answers and answers[0][0] == 200, log.read_text()[-2000:]
    assert [t["class"] for t in answers[0][1]["top"]] == [c for c, _ in expected.top]
    assert answers[0][1]["top"][0]["probability"] == pytest.approx(expected.top[0][1], abs=1e-4)
