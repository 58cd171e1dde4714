"""Does transfer help? Fashion-MNIST, pretrained on classes 0-4, transferred to classes 5-9.

No ImageNet weights can be downloaded on the test machines, so this measures the mechanism
(``train --init``: a new classifier, ``--linear-probe``, ``--recipe finetune``) on real
data: each model is pretrained from scratch on the 30,000 training images of classes 0-4
(``small-images`` recipe, small-input stem, a short run: ``--pretrain-epochs`` over the first
``--pretrain-images`` of them), then
trained on K images per class of classes 5-9 (K = 10 and 100, drawn per seed from the
training split) in three ways with the same number of steps:

* ``linear_probe``: the pretrained backbone frozen, a new classifier (``--linear-probe``);
* ``finetune``: ``--recipe finetune`` (head-only phase, then the whole network);
* ``scratch``: the same network from random weights (``small-images`` recipe, its learning
  rate scaled linearly to the batch).

Each run is scored (last epoch, no model selection) on all 5,000 test images of classes
5-9. Validation during training uses 100 other training images of those classes.

    python benchmarks/transfer.py                       # everything (about 30 min on 2 cores)
    python benchmarks/transfer.py --models mobilenet_v3_small --seeds 0 1 2
    python benchmarks/transfer.py --table               # the docs table from the JSON

Writes ``benchmarks/results/transfer.json`` after every run (a killed run keeps what it had),
keeping the runs of models not given to ``--models``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilenets.data.idx import FASHION_MNIST_CLASSES, read_idx
from mobilenets.deploy.bench import machine_info
from mobilenets.io.checkpoint import load_model, save_model
from mobilenets.training import TrainConfig, evaluate, train

RESULTS = Path(__file__).parent / "results" / "transfer.json"
SOURCE = Path("/usr/share/datasets/fashion-mnist")
#: Width per model: V2 at 0.5 keeps the whole benchmark within half an hour on 2 cores.
WIDTHS = {"mobilenet_v3_small": 1.0, "mobilenet_v2": 0.5}
#: (batch size, epochs) per images-per-class: 100 and 60 optimizer steps.
SCHEDULES = {10: (10, 20), 100: (50, 6)}
METHODS = ("linear_probe", "finetune", "scratch")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def write_split_dir(root: Path, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> Path:
    """An IDX directory: ``train`` as its training split, ``val`` as its t10k split."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in (("train", train), ("t10k", val)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


def load_source() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {split: (read_idx(SOURCE / f"{p}-images-idx3-ubyte.gz"), read_idx(SOURCE / f"{p}-labels-idx1-ubyte.gz"))
            for split, p in (("train", "train"), ("test", "t10k"))}


def classes_subset(data: tuple[np.ndarray, np.ndarray], lo: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of classes lo..lo+4, labels renumbered 0-4."""
    x, y = data
    keep = (y >= lo) & (y < lo + 5)
    return x[keep], (y[keep] - lo).astype(np.uint8)


def few_shot(data: tuple[np.ndarray, np.ndarray], k: int, seed: int
             ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """K images per class for training and 20 other images per class for validation."""
    x, y = data
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in range(5):
        idx = rng.permutation(np.flatnonzero(y == c))
        train_idx += list(idx[:k])
        val_idx += list(idx[k:k + 20])
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def pretrain(model: str, work: Path, data: dict, epochs: int, images: int) -> Path:
    """Classes 0-4 from scratch; the checkpoint names its classes (T-shirt/top … Coat), so
    the transfer data's classes (5-9) differ and get a new classifier."""
    ckpt = work / f"{model}_pretrained.safetensors"
    if ckpt.is_file():
        return ckpt
    x, y = classes_subset(data["train"], 0)
    src = write_split_dir(work / "pre", (x[:images], y[:images]), classes_subset(data["test"], 0))
    result = train(TrainConfig(model=model, model_kwargs={"width_mult": WIDTHS[model]}, data=str(src),
                               out=str(work / f"pre_{model}"), epochs=epochs, warmup=0.3, progress=False,
                               precision="fp32"))
    net, meta = load_model(work / f"pre_{model}" / "last.safetensors")
    save_model(net, ckpt, classes=FASHION_MNIST_CLASSES[:5], preprocessing=meta["preprocessing"])
    print(f"pretrained {model}: val top-1 {result.final_acc:.4f} in {result.seconds / 60:.1f} min", flush=True)
    return ckpt


def transfer_config(method: str, model: str, ckpt: Path, data_dir: Path, out: Path, k: int, seed: int) -> TrainConfig:
    batch, epochs = SCHEDULES[k]
    common = dict(data=str(data_dir), out=str(out), epochs=epochs, batch_size=batch, seed=seed,
                  progress=False, precision="fp32", workers=0)
    if method == "scratch":
        return TrainConfig(model=model, model_kwargs={"width_mult": WIDTHS[model]}, recipe="small-images",
                           lr=0.2 * batch / 256, warmup=1.0, **common)
    return TrainConfig(init=str(ckpt), recipe="finetune", linear_probe=method == "linear_probe", **common)


def run_one(method: str, model: str, ckpt: Path, k: int, seed: int, work: Path, data: dict,
            test_set: Any, override: dict[str, Any] | None = None, tag: str = "") -> dict[str, Any]:
    """One transfer run, scored on the test set; ``override`` replaces training options
    (``benchmarks/transfer_lr.py``), ``tag`` names its run directory apart."""
    train_part, val_part = few_shot(classes_subset(data["train"], 5), k, seed)
    data_dir = write_split_dir(work / f"shots{k}_s{seed}", train_part, val_part)
    out = work / f"{model}_{method}{tag}_k{k}_s{seed}"
    t0 = time.perf_counter()
    cfg = transfer_config(method, model, ckpt, data_dir, out, k, seed)
    result = train(dataclasses.replace(cfg, **(override or {})))
    net, meta = load_model(out / "last.safetensors")
    res = evaluate(net, test_set, meta["preprocessing"])
    return {"model": model, "method": method, "per_class": k, "seed": seed, "test_top1": res.top1,
            "test_count": res.count, "steps": result.epochs_done * len(train_part[1]) // SCHEDULES[k][0],
            "train_acc": result.history[-1]["train_acc"], "seconds": time.perf_counter() - t0}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, int, str], list[float]] = {}
    for r in runs:
        cells.setdefault((r["model"], r["per_class"], r["method"]), []).append(r["test_top1"])
    return [{"model": m, "per_class": k, "method": meth, "seeds": len(v), "mean": statistics.mean(v),
             "std": statistics.stdev(v) if len(v) > 1 else 0.0} for (m, k, meth), v in sorted(cells.items())]


def table(results: dict[str, Any]) -> str:
    """The docs table: test top-1 (mean ± std over seeds) per model, images per class and method."""
    rows = ["| model | images per class | linear probe | fine-tune | from scratch |", "|---|---|---|---|---|"]
    summary = {(s["model"], s["per_class"], s["method"]): s for s in results["summary"]}
    for model in dict.fromkeys(s["model"] for s in results["summary"]):
        for k in sorted({s["per_class"] for s in results["summary"] if s["model"] == model}):
            cells = []
            for meth in METHODS:
                s = summary.get((model, k, meth))
                cells.append("-" if s is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} ({s['seeds']})")
            rows.append(f"| {model} (width {WIDTHS.get(model, 1.0)}) | {k} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(WIDTHS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--v2-seeds", nargs="+", type=int, help="seeds for mobilenet_v2 (default --seeds)")
    p.add_argument("--per-class", nargs="+", type=int, default=[10, 100])
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--pretrain-images", type=int, default=30000, help="of the 30,000 of classes 0-4")
    p.add_argument("--work", default="runs/transfer_bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the table from the JSON and stop")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = load_source()
    test_dir = write_split_dir(work / "test59", classes_subset(data["test"], 5), classes_subset(data["test"], 5))
    from mobilenets.data.datasets import load_dataset
    test_set = load_dataset(str(test_dir), "test")
    results: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "machine": machine_info(),
                               "threads": args.threads, "pretrain_epochs": args.pretrain_epochs,
                               "pretrain_images": args.pretrain_images,
                               "widths": WIDTHS, "schedules": {str(k): {"batch": b, "epochs": e}
                                                               for k, (b, e) in SCHEDULES.items()},
                               "runs": []}
    if RESULTS.exists():  # other models' runs are kept: one file, one table
        old = json.loads(RESULTS.read_text())
        kept = [r for r in old.get("runs", []) if r["model"] not in args.models]
        if kept:
            results["runs"] = kept
            results["command"] = f"{old['command']}; then {results['command']}"
    t0 = time.perf_counter()
    for model in args.models:
        ckpt = pretrain(model, work, data, args.pretrain_epochs, args.pretrain_images)
        seeds = args.v2_seeds if model == "mobilenet_v2" and args.v2_seeds else args.seeds
        for k in args.per_class:
            for seed in seeds:
                for method in METHODS:
                    row = run_one(method, model, ckpt, k, seed, work, data, test_set)
                    results["runs"].append(row)
                    print(f"{model} k={k} seed={seed} {method}: test top-1 {row['test_top1']:.4f} "
                          f"({row['seconds']:.0f} s)", flush=True)
                    results["summary"] = summarize(results["runs"])
                    results["minutes"] = (time.perf_counter() - t0) / 60
                    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
