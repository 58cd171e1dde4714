"""Float vs bf16 vs int8 test accuracy of trained checkpoints (Fashion-MNIST by default).

    .venv/bin/python benchmarks/quant_accuracy.py runs/v3s/best.safetensors runs/v2/best.safetensors

Each checkpoint is exported twice with :func:`mobilenets.deploy.export.export_model` (float ONNX,
and int8 calibrated on ``--calibration-size`` training images), then the PyTorch model,
its bf16 inference copy (:func:`mobilenets.deploy.fold.bf16_inference`, what the ``compile-bf16``
bench backend runs), the float ONNX and the int8 ONNX classify the whole test split with
the checkpoint's own preprocessing. With ``--qat-steps N`` each checkpoint is also
fine-tuned quantization-aware (``mobilenets train --qat --init CHECKPOINT --max-steps N``,
the QAT defaults otherwise) and
its int8 export measured the same way. Prints a Markdown table and merges the rows
into ``benchmarks/results/quant_accuracy.json`` (keyed by checkpoint path).

    .venv/bin/python benchmarks/quant_accuracy.py runs/demo/best.safetensors --qat-steps 60

``--both-weight-ranges`` also scores int8 with the weight range this CPU does not pick:
8-bit weights on x86 CPUs without VNNI, where onnxruntime's kernels saturate and the
exporter uses 7-bit ones (:func:`mobilenets.ops.cpu.reduce_range_default`), or 7-bit elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mobilenets.deploy import export as deploy
from mobilenets.deploy.bench import machine_info
from mobilenets.training.qat import weight_qmax
from mobilenets.io.checkpoint import load_model
from mobilenets.training import TrainConfig, train


def accuracies(checkpoint: str, data: str, calibration_size: int, threads: int,
               workdir: Path, both_weight_ranges: bool = False) -> dict:
    """Test accuracy of the PyTorch model in fp32 and bf16, its float ONNX and its int8 ONNX."""
    from mobilenets.data.datasets import load_dataset

    model, meta = load_model(checkpoint)
    pre = deploy.resolve_preprocessing(model, meta)
    images = deploy.load_calibration_images(data, calibration_size, pre)
    stem = workdir / Path(checkpoint).stem
    fp32 = deploy.export_model(model, "onnx", stem.with_suffix(".onnx"), preprocessing=pre,
                               classes=meta.get("classes"))
    int8 = deploy.export_model(model, "onnx", stem.with_suffix(".int8.onnx"), preprocessing=pre,
                               classes=meta.get("classes"), int8=True, calibration_images=images)
    bf16 = deploy.bf16_inference(model)
    runners = {"pytorch": lambda x: model(torch.from_numpy(x)).numpy(),
               "pytorch_bf16": lambda x: bf16(torch.from_numpy(x)).numpy(),
               "onnx_fp32": deploy.load_artifact(fp32.path, threads),
               "onnx_int8": deploy.load_artifact(int8.path, threads)}
    other = None
    if both_weight_ranges:
        # The weight range this CPU would not pick, scored rather than refused: with 8-bit
        # weights on x86 without VNNI the parity check may fail, and that loss is the point.
        other = deploy.export_model(model, "onnx", stem.with_suffix(".other.int8.onnx"), preprocessing=pre,
                                    classes=meta.get("classes"), int8=True, calibration_images=images,
                                    reduce_range=not int8.reduce_range, tolerance=10.0)
        runners["onnx_int8_other_range"] = deploy.load_artifact(other.path, threads)

    test = load_dataset(data, "test", image_size=pre["input_size"], channels=pre["channels"])
    preds: dict[str, list[np.ndarray]] = {k: [] for k in runners}
    labels = []
    with torch.inference_mode():
        for start in range(0, len(test), 500):
            items = [test[i] for i in range(start, min(start + 500, len(test)))]
            x = deploy.preprocess(torch.stack([img for img, _ in items]), pre)
            labels.append(np.array([label for _, label in items]))
            for name, run in runners.items():
                preds[name].append(run(x).argmax(1))
    y = np.concatenate(labels)
    pred = {k: np.concatenate(v) for k, v in preds.items()}
    return {"checkpoint": checkpoint, "model": meta["model"],
            "model_kwargs": meta.get("model_kwargs"), "test_images": len(y),
            "calibration_images": len(images),
            **{f"acc_{k}": float((v == y).mean()) for k, v in pred.items()},
            "int8_agrees_with_float": float((pred["onnx_int8"] == pred["pytorch"]).mean()),
            "bf16_agrees_with_float": float((pred["pytorch_bf16"] == pred["pytorch"]).mean()),
            "parity_fp32": fp32.parity.summary(), "parity_int8": int8.parity.summary(),
            "int8_weight_range": weight_qmax(int8.reduce_range), "machine": machine_info(),
            **({"other_weight_range": weight_qmax(other.reduce_range),
                "parity_int8_other_range": other.parity.summary(),
                "other_range_passes_parity": other.parity.relative <= deploy.INT8_TOLERANCE}
               if other is not None else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="fashion-mnist", help="dataset name or directory")
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qat-steps", type=int, help="also fine-tune with --qat for this many steps")
    parser.add_argument("--both-weight-ranges", action="store_true",
                        help="also score int8 with the weight range this CPU does not pick "
                             "(8-bit on x86 without VNNI, where 7-bit is the default; 7-bit elsewhere)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"
                                             / "quant_accuracy.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="quant-accuracy-") as tmp:
        rows = []
        for c in args.checkpoints:
            row = accuracies(c, args.data, args.calibration_size, args.threads, Path(tmp),
                             args.both_weight_ranges)
            if args.qat_steps:
                run = Path(tmp) / f"qat-{len(rows)}"
                result = train(TrainConfig(init=c, qat=True, data=args.data, out=str(run),
                                           max_steps=args.qat_steps, progress=False))
                qat = accuracies(str(run / "best.safetensors"), args.data, args.calibration_size,
                                 args.threads, Path(tmp))
                row.update(qat_steps=args.qat_steps, qat_images=args.qat_steps * 256,
                           qat_minutes=result.seconds / 60, acc_qat_float=qat["acc_pytorch"],
                           acc_qat_int8=qat["acc_onnx_int8"], qat_simulated_int8=result.final_acc)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(out.read_text()) if out.is_file() else []
    fresh = {r["checkpoint"] for r in rows}
    out.write_text(json.dumps([r for r in earlier if r["checkpoint"] not in fresh] + rows, indent=2) + "\n")
    print("| checkpoint | model | PyTorch fp32 | PyTorch bf16 | ONNX fp32 | ONNX int8 (PTQ) | Δ PTQ "
          "| int8 = fp32 top-1 | int8 after QAT | Δ QAT |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        delta = 100 * (r["acc_onnx_int8"] - r["acc_pytorch"])
        qat = (f"{r['acc_qat_int8']:.2%} ({r['qat_steps']} steps) | "
               f"{100 * (r['acc_qat_int8'] - r['acc_pytorch']):+.2f} pt") if "acc_qat_int8" in r else "– | –"
        print(f"| {r['checkpoint']} | `{r['model']}` | {r['acc_pytorch']:.2%} | {r['acc_pytorch_bf16']:.2%} | "
              f"{r['acc_onnx_fp32']:.2%} | {r['acc_onnx_int8']:.2%} | {delta:+.2f} pt | "
              f"{r['int8_agrees_with_float']:.2%} | {qat} |")
    for r in rows:
        if "acc_onnx_int8_other_range" in r:
            bits = {weight_qmax(True): "7-bit", weight_qmax(False): "8-bit"}
            print(f"\n{r['checkpoint']}: int8 with {bits[r['int8_weight_range']]} weights (this CPU's "
                  f"choice) {r['acc_onnx_int8']:.2%}, with {bits[r['other_weight_range']]} weights "
                  f"{r['acc_onnx_int8_other_range']:.2%} (parity "
                  f"{'passes' if r['other_range_passes_parity'] else 'fails'}: {r['parity_int8_other_range']})")
    print(f"\n(wrote {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
