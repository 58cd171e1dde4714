"""int8 accuracy of every runtime on the whole Fashion-MNIST test split, beside the float model.

    .venv/bin/python benchmarks/runtime_accuracy.py RUN/mobilenet_v2 RUN/mobilenet_v3_large RUN/mobilenet_v3_small

For each trained checkpoint, every int8 format (ONNX through onnxruntime, OpenVINO through
NNCF, ExecuTorch through XNNPACK's quantizer, LiteRT through its PT2E quantizer; those whose
extra is installed) is exported with :func:`mobilenets.deploy.export.export_model`,
calibrated on ``--calibration-size`` training images, reloaded through the one artifact
loader, and scored on the 10,000 test images next to the PyTorch float model: accuracy,
the change from float in points, and top-1 agreement with float. Issue 29's limits: agreement
>= 99 % and a loss <= 0.5 point. Writes ``benchmarks/results/runtime_accuracy.json``
(``make docs`` turns it into the table in docs/performance.md), keeping the rows of checkpoints
not scored in this run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mobilenets.data.datasets import load_dataset
from mobilenets.deploy import export as deploy
from mobilenets.deploy.runtimes import RUNTIMES, require
from mobilenets.deploy.timing import machine_info
from mobilenets.errors import MobilenetsError
from mobilenets.io.artifact import EXTENSIONS, load
from mobilenets.io.checkpoint import load_model

MIN_AGREEMENT, MAX_LOSS = 0.99, 0.005


def int8_formats() -> list[str]:
    """ONNX and every runtime that is installed."""
    out = ["onnx"]
    for fmt in RUNTIMES:
        try:
            require(fmt)
        except MobilenetsError as e:
            print(f"skipping {fmt}: {e}", file=sys.stderr)
            continue
        out.append(fmt)
    return out


def predictions(run, test, pre) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = [], []
    for start in range(0, len(test), 500):
        items = [test[i] for i in range(start, min(start + 500, len(test)))]
        x = deploy.preprocess(torch.stack([img for img, _ in items]), pre)
        preds.append(run(x).argmax(1))
        labels.append(np.array([label for _, label in items]))
    return np.concatenate(preds), np.concatenate(labels)


def score(checkpoint: str, data: str, calibration_size: int, threads: int, workdir: Path,
          formats: list[str]) -> list[dict]:
    model, meta = load_model(checkpoint)
    pre = deploy.resolve_preprocessing(model, meta)
    calibration = deploy.load_calibration_images(data, calibration_size, pre.record())
    test = load_dataset(data, "test", image_size=pre.input_size, channels=pre.channels)
    with torch.inference_mode():
        ref, y = predictions(lambda x: model(torch.from_numpy(x)).numpy(), test, pre)
    acc_float = float((ref == y).mean())
    rows = []
    for fmt in formats:
        out = workdir / f"{Path(checkpoint).parent.name}.int8{EXTENSIONS[fmt]}"
        print(f"{checkpoint}: {fmt} int8", file=sys.stderr, flush=True)
        row = {"checkpoint": checkpoint, "model": meta["model"], "qat": "qat" in meta, "format": fmt,
               "test_images": len(y), "calibration_images": len(calibration), "acc_float": acc_float}
        try:
            result = deploy.export_model(model, fmt, out, preprocessing=pre, int8=True,
                                         calibration_images=calibration)
        except MobilenetsError as e:  # refused by its parity check: a result, not a crash
            print(f"  refused: {e}", file=sys.stderr)
            rows.append({**row, "refused": str(e).split("; it is kept")[0], "within_limits": False})
            continue
        artifact = load(out, threads=threads)
        got, _ = predictions(artifact, test, pre)
        acc_int8, agreement = float((got == y).mean()), float((got == ref).mean())
        rows.append({**row, "int8_method": artifact.meta["int8"].get("method"), "acc_int8": acc_int8,
                     "change_points": 100 * (acc_int8 - acc_float), "agreement": agreement,
                     "within_limits": agreement >= MIN_AGREEMENT and acc_float - acc_int8 <= MAX_LOSS,
                     "parity": result.parity.summary()})
        print(f"  float {acc_float:.4f} int8 {acc_int8:.4f} agreement {agreement:.4f}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", help="comma-separated (default: onnx and every installed runtime)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "runtime_accuracy.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    formats = args.formats.split(",") if args.formats else int8_formats()
    with tempfile.TemporaryDirectory(prefix="runtime-accuracy-") as tmp:
        rows = [row for c in args.checkpoints
                for row in score(c, args.data, args.calibration_size, args.threads, Path(tmp), formats)]
    out = {"command": "python benchmarks/runtime_accuracy.py " + shlex.join(argv or sys.argv[1:]),
           "machine": machine_info(), "limits": {"agreement": MIN_AGREEMENT, "loss": MAX_LOSS},
           "rows": rows}
    if Path(args.out).exists():  # other models' rows are kept: one file, one table
        old = json.loads(Path(args.out).read_text())
        scored = {r["checkpoint"] for r in rows}
        kept = [r for r in old.get("rows", []) if r["checkpoint"] not in scored]
        if kept:
            out["rows"] = sorted(kept + rows, key=lambda r: r["model"])
            out["command"] = f"{old['command']}; then {out['command']}"
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
