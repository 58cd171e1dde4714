"""``bench`` ends with the backend to ship: the fastest within the accuracy limit, by how much."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobilenets.cli import main
from mobilenets.deploy.bench import MIN_AGREEMENT, BenchReport, BenchResult

FIXTURES = Path(__file__).parent / "fixtures"


def report(times: dict[str, float | None], agreement: dict[str, float]) -> BenchReport:
    r = BenchReport("m", {}, 28, 1, 1, 1, 2, 1.0, agreement=agreement)
    r.results = [BenchResult(b, 1, median_ms=t) for b, t in times.items()]
    return r


def test_ranking_leaves_out_int8_below_the_limit_and_unavailable_backends():
    r = report({"onnxruntime": 2.0, "onnxruntime-int8": 1.0, "openvino": 1.6, "openvino-int8": 0.5,
                "litert": None}, {"onnxruntime-int8": MIN_AGREEMENT, "openvino-int8": 0.95})
    assert [x.backend for x in r.ranking(1)] == ["onnxruntime-int8", "openvino", "onnxruntime"]
    verdict = r.verdict(1)
    assert verdict.startswith("batch 1: fastest onnxruntime-int8 (1.00 ms); 1.60x faster than the next, openvino")
    assert "1.60x faster than the fastest float backend, openvino" in verdict
    assert "int8 agrees with float on 99.0% of held-out images" in verdict
    assert "left out below 99% agreement: openvino-int8" in verdict
    assert r.to_json()["ranking"] == {"1": ["onnxruntime-int8", "openvino", "onnxruntime"]}


def test_unmeasured_int8_is_ranked_with_a_caveat():
    r = report({"onnxruntime": 2.0, "openvino-int8": 0.5}, {})
    assert r.ranking(1)[0].backend == "openvino-int8"
    assert "int8 accuracy not measured here: give a checkpoint and --calibration-data" in r.verdict(1)
    assert report({"onnxruntime": None}, {}).verdict(1) == "batch 1: no backend ran"


def test_bench_measures_int8_agreement_on_real_images(tmp_path, capsys):
    """A trained checkpoint and real images: int8 calibrates on half, is scored on the rest."""
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes((FIXTURES / "fmnist_v3s_minimal_025.safetensors").read_bytes())
    images = tmp_path / "images"
    images.mkdir()
    import numpy as np
    from PIL import Image

    for i, img in enumerate(np.load(FIXTURES / "fmnist_sample.npz")["test_images"][:40]):
        Image.fromarray(img).save(images / f"{i}.png")
    assert main(["bench", str(ckpt), "--backends", "onnxruntime,onnxruntime-int8", "--batch", "1",
                 "--seconds", "0.05", "--threads", "1", "--calibration-data", str(images),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.8 <= out["agreement"]["onnxruntime-int8"] <= 1.0
    assert set(out["ranking"]["1"]) <= {"onnxruntime", "onnxruntime-int8"} and out["ranking"]["1"]
    assert main(["bench", "mobilenet_v3_small", "--calibration-data", str(images)]) == 2
    assert "needs trained weights: give a checkpoint" in capsys.readouterr().err
