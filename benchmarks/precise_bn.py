"""What precise BatchNorm costs: the recomputation's seconds beside the epoch's training seconds.

    .venv/bin/python benchmarks/precise_bn.py                     # V3-Small and V2, 1 epoch each
    .venv/bin/python benchmarks/precise_bn.py --models mobilenet_v3_small --epochs 2

Each model trains on Fashion-MNIST with the ``small-images`` recipe (the run ``make demo``
does), and the trainer records per epoch ``train_seconds`` and ``precise_bn_seconds`` (the
forward passes over :data:`~mobilenets.training.precise_bn.PRECISE_BN_BATCHES` training
batches that set the statistics before each validation). The cost is their ratio, from the
same process on the same machine. Writes ``benchmarks/results/precise_bn.json``; the table in
docs/training.md is generated from it (``make docs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from mobilenets.deploy.timing import machine_info
from mobilenets.training import TrainConfig, train
from mobilenets.training.precise_bn import PRECISE_BN_BATCHES

RESULTS = Path(__file__).parent / "results" / "precise_bn.json"


def measure(model: str, epochs: int) -> dict:
    """One training run; the per-epoch seconds of training and of precise BN."""
    with tempfile.TemporaryDirectory(prefix="precise-bn-") as out:
        result = train(TrainConfig(model=model, data="fashion-mnist", out=out, recipe="small-images",
                                   epochs=epochs, progress=False))
    train_s = [h["train_seconds"] for h in result.history]
    bn_s = [h["precise_bn_seconds"] for h in result.history]
    return {"model": model, "epochs": len(result.history), "train_seconds": train_s,
            "precise_bn_seconds": bn_s,
            "median_fraction": statistics.median(b / t for b, t in zip(bn_s, train_s)),
            "val_acc": result.final_acc}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "mobilenet_v2"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        row = measure(model, args.epochs)
        rows.append(row)
        print(f"{model}: precise BN {statistics.median(row['precise_bn_seconds']):.1f} s per epoch, "
              f"{100 * row['median_fraction']:.1f} % of the epoch's training time", file=sys.stderr)
    out = {"command": ("python benchmarks/precise_bn.py " + shlex.join(argv if argv is not None else sys.argv[1:])).strip(),
           "machine": machine_info(), "threads": args.threads, "batches": PRECISE_BN_BATCHES,
           "rows": rows}
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
