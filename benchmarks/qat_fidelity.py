"""How closely ``train --qat``'s simulation predicts the int8 model onnxruntime runs.

For each checkpoint: export it to int8 ONNX (256 Fashion-MNIST calibration images), run it
on test images, and compare with the QAT simulation (:mod:`mobilenets.training.qat`) calibrated on
the same images, with and without the hard-swish gate rounding it simulates. Reported:
top-1 agreement with the int8 model (simulation and plain float), and the simulation's mean
logit distance to int8 as a fraction of the float model's.

    python benchmarks/qat_fidelity.py runs/demo-v/best.safetensors \\
        runs/bench-fmnist/mobilenet_v3_large_e2/best.safetensors

Writes ``benchmarks/results/qat_fidelity.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mobilenets.deploy import export as deploy
from mobilenets.io.checkpoint import load_model
from mobilenets.data.datasets import load_dataset
from mobilenets.training.qat import QuantConvNormAct, calibrate, prepare_qat


def fidelity(checkpoint: str, data: str, calibration_size: int, test_images: int, workdir: Path) -> dict:
    model, meta = load_model(checkpoint)
    pre = deploy.resolve_preprocessing(model, meta)
    calibration = deploy.load_calibration_images(data, calibration_size, pre)
    art = deploy.export_model(model, "onnx", workdir / "m.int8.onnx", preprocessing=pre, int8=True,
                              calibration_images=calibration)
    test = load_dataset(data, "test", image_size=pre["input_size"], channels=pre["channels"])
    x = torch.from_numpy(deploy.preprocess(torch.stack([test[i][0] for i in range(test_images)]), pre))
    int8 = deploy.load_artifact(art.path)(x.numpy())
    cal = torch.from_numpy(deploy.preprocess(calibration, pre))
    with torch.inference_mode():
        ref = model.eval()(x).numpy()
    row = {"checkpoint": checkpoint, "model": meta["model"], "test_images": test_images,
           "float_top1_agreement": float((ref.argmax(1) == int8.argmax(1)).mean())}
    for gate in (True, False):
        q = prepare_qat(copy.deepcopy(model))
        if not gate:
            for m in q.modules():
                if isinstance(m, QuantConvNormAct):
                    m.gate_quant = None
        calibrate(q, [cal[i:i + 64] for i in range(0, len(cal), 64)])
        with torch.inference_mode():
            sim = q.eval()(x).numpy()
        key = "sim" if gate else "sim_without_gate"
        row[f"{key}_top1_agreement"] = float((sim.argmax(1) == int8.argmax(1)).mean())
        row[f"{key}_distance_vs_float"] = float(np.abs(sim - int8).mean() / np.abs(ref - int8).mean())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "qat_fidelity.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qat-fidelity-") as tmp:
        rows = [fidelity(c, args.data, args.calibration_size, args.test_images, Path(tmp))
                for c in args.checkpoints]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| checkpoint | model | float = int8 top-1 | simulation = int8 top-1 | without gate | "
          "sim distance / float's | without gate |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['checkpoint']} | `{r['model']}` | {r['float_top1_agreement']:.2%} | "
              f"{r['sim_top1_agreement']:.2%} | {r['sim_without_gate_top1_agreement']:.2%} | "
              f"{r['sim_distance_vs_float']:.3f} | {r['sim_without_gate_distance_vs_float']:.3f} |")
    print(f"\n(wrote {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
