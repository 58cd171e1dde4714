"""Do the project's ONNX exports compute the same logits in OpenCV's DNN module (and OpenVINO)
as in onnxruntime, fp32 and int8?

    .venv/bin/python benchmarks/onnx_consumers.py --opencv /tmp/cv4100 --opencv /tmp/cv414

Each ``--opencv DIR`` is an ``opencv-python-headless`` installed apart
(``pip install --target DIR opencv-python-headless==4.10.0.84``), run in a subprocess with
``DIR`` first on ``PYTHONPATH``; the OpenCV installed beside the script is measured too.
Models: V2, V3-Large and V3-Small (width 0.5, one channel, 28 px, 10 classes) with random
weights whose logits mean something (:func:`random_model`), and the committed trained
V3-Small-minimal (``tests/fixtures/fmnist_v3s_minimal_025.safetensors``), each exported by
:func:`mobilenets.deploy.export.export_model` as fp32 and int8 (calibrated on the 64 training
images of ``tests/fixtures/fmnist_sample.npz``). All run on that file's 200 real Fashion-MNIST
test images. Recorded per consumer and file: whether it loads, the maximum logit difference
from onnxruntime over the largest onnxruntime logit, and top-1 agreement with onnxruntime.
Writes ``benchmarks/results/onnx_consumers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TRAINED = FIXTURES / "fmnist_v3s_minimal_025.safetensors"
MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
#: int8 exports of random models are checked against PyTorch with this tolerance instead of
#: 0.25: random networks have no margin between their classes to keep.
RANDOM_INT8_TOLERANCE = 1.0


def fmnist_sample() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Calibration images (64), test images (200, uint8 ``(N, 1, 28, 28)``) and test labels."""
    sample = np.load(FIXTURES / "fmnist_sample.npz")
    calibration, test = (torch.from_numpy(sample[k]).unsqueeze(1)
                         for k in ("calibration_images", "test_images"))
    return calibration, test, sample["test_labels"]


def random_model(name: str, images: torch.Tensor, width: float = 0.5, seed: int = 0,
                 channels: int = 1) -> nn.Module:
    """``name`` with random weights and logits of order one: fresh models give logits near
    1e-9 (BatchNorm is the identity, the classifier starts near zero), useless for comparing
    runtimes. BatchNorm gets random affine parameters and, as statistics, those of
    ``images`` (uint8, normalised with mean 0.5, std 0.25); the classifier PyTorch's default
    initialisation."""
    import mobilenets

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = mobilenets.create_model(name, width_mult=width, num_classes=10, in_chans=channels,
                                        small_input=True)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.normal_(m.bias, 0.0, 0.1)
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: the statistics of the one batch
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
        with torch.no_grad():
            model.train()(images.float() / 255 * 4 - 2)
    return model.eval()


def export_cases(directory: Path, calibration: torch.Tensor, width: float = 0.5) -> list[dict]:
    """The fp32 and int8 exports of every model (random ones at ``width``), as
    ``{"model", "weights", "precision", "path", "preprocessing"}``."""
    from mobilenets.deploy import export as deploy
    from mobilenets.io.checkpoint import load_model

    pre = {"input_size": 28, "channels": 1, "mean": [0.5], "std": [0.25]}
    models = [(name, "random", random_model(name, calibration, width), pre) for name in MODELS]
    trained, meta = load_model(TRAINED)
    models.append((f"{trained.model_name} (trained)", "trained", trained.eval(),
                   deploy.resolve_preprocessing(trained, meta)))
    cases = []
    for label, weights, model, preprocessing in models:
        stem = directory / label.split()[0]
        tolerance = RANDOM_INT8_TOLERANCE if weights == "random" else None
        for precision, path in (("fp32", stem.with_suffix(".onnx")), ("int8", stem.with_suffix(".int8.onnx"))):
            deploy.export_model(model, "onnx", path, preprocessing=preprocessing,
                                int8=precision == "int8", calibration_images=calibration,
                                tolerance=tolerance if precision == "int8" else None)
            cases.append({"model": label, "weights": weights, "precision": precision, "path": str(path),
                          "preprocessing": deploy.as_preprocessing(preprocessing).record()})
    return cases


def onnxruntime_logits(path: str | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def opencv_logits(path: str | Path, x: np.ndarray) -> np.ndarray:
    """The logits OpenCV's DNN module computes for the batch ``x``."""
    import cv2

    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x)
    return np.asarray(net.forward()).copy()


def openvino_logits(path: str | Path, x: np.ndarray) -> np.ndarray:
    """OpenVINO on the CPU, fp32 precision (it would otherwise pick bf16 where the CPU has it)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": 2})
    return np.asarray(compiled(x)[0])


def agreement(got: np.ndarray, ref: np.ndarray) -> dict:
    """Max |got - ref| over the largest |ref|, and the share of rows with the same top-1."""
    return {"max_rel_error": float(np.abs(got - ref).max() / np.abs(ref).max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


def measure(run, cases: list[dict], x: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> list[dict]:
    """``run(path, x)`` on every case, each failure recorded as its first line."""
    rows = []
    for case in cases:
        row = {k: case[k] for k in ("model", "weights", "precision")}
        try:
            row.update(loads=True, **agreement(run(case["path"], x[case["path"]]), refs[case["path"]]))
        except Exception as e:  # noqa: BLE001 - a consumer's failure is the measurement
            row.update(loads=False, error=(str(e).strip().splitlines() or [type(e).__name__])[-1][:200])
        rows.append(row)
    return rows


def worker(directory: Path) -> None:
    """In a process whose ``cv2`` is the one to measure: its rows, as JSON on stdout."""
    import cv2

    spec = json.loads((directory / "cases.json").read_text())
    data = np.load(directory / "arrays.npz")
    x = {c["path"]: data[f"x{i}"] for i, c in enumerate(spec)}
    refs = {c["path"]: data[f"ref{i}"] for i, c in enumerate(spec)}
    print(json.dumps({"consumer": f"OpenCV {cv2.__version__}", "rows": measure(opencv_logits, spec, x, refs)}))


def run_opencv(directory: Path, site: str | None) -> dict:
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, __file__, "--worker", str(directory)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--opencv", action="append", default=[], metavar="DIR",
                   help="an opencv-python-headless installed with pip --target DIR (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_consumers.json")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    from mobilenets.deploy import export as deploy
    from mobilenets.deploy.timing import machine_info

    torch.set_num_threads(2)
    calibration, test, _ = fmnist_sample()
    with tempfile.TemporaryDirectory(prefix="onnx-consumers-") as tmp:
        directory = Path(tmp)
        cases = export_cases(directory, calibration)
        x = {c["path"]: deploy.preprocess(test, c["preprocessing"]) for c in cases}
        refs = {c["path"]: onnxruntime_logits(c["path"], x[c["path"]]) for c in cases}
        (directory / "cases.json").write_text(json.dumps(cases))
        np.savez(directory / "arrays.npz", **{f"{k}{i}": d[c["path"]] for i, c in enumerate(cases)
                                            for k, d in (("x", x), ("ref", refs))})
        consumers = [run_opencv(directory, site) for site in [None, *args.opencv]]
        try:
            import openvino
            consumers.append({"consumer": f"OpenVINO {openvino.__version__.split('-')[0]}",
                              "rows": measure(openvino_logits, cases, x, refs)})
        except ImportError:
            pass
    command = "python benchmarks/onnx_consumers.py " + " ".join(f"--opencv {d}" for d in args.opencv)
    result = {"command": command.strip(), "machine": machine_info(),
              "images": "the 200 Fashion-MNIST test images of tests/fixtures/fmnist_sample.npz",
              "reference": "onnxruntime " + machine_info().get("onnxruntime", "?"), "consumers": consumers}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for c in consumers:
        for r in c["rows"]:
            print(c["consumer"], r["model"], r["precision"],
                  f"rel {r['max_rel_error']:.1e} top-1 {r['top1_agreement']:.3f}" if r["loads"] else r["error"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
