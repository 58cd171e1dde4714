"""How fast should fine-tuning go? The sweep that chose the ``finetune`` recipe's rates.

    .venv/bin/python benchmarks/transfer.py ...            # first: pretrains into --work
    .venv/bin/python benchmarks/transfer_lr.py --model mobilenet_v2 --work /tmp/transfer_work_v2 \\
        --variants '{"lr 0.01": {"lr": 0.01, "layer_decay": 1.0}, "lr 0.1": {"lr": 0.1, "layer_decay": 1.0}}'

The runs of ``benchmarks/transfer.py``'s ``finetune`` method (same data, seeds, schedule and
pretrained checkpoint, read from ``--work``), with the recipe's values replaced by each
variant's (any :class:`~mobilenets.training.TrainConfig` field). Each run is scored on all
5,000 test images of classes 5-9. Appends to ``benchmarks/results/transfer_lr.json``; the
table in docs/training.md is generated from it (``make docs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

import transfer as T
from mobilenets.data.datasets import load_dataset
from mobilenets.deploy.timing import machine_info

RESULTS = Path(__file__).parent / "results" / "transfer_lr.json"


def run_variant(model: str, work: Path, name: str, override: dict, k: int, seed: int, data: dict,
                test_set: object, pretrain_images: int) -> dict:
    """``transfer.py``'s finetune run with ``override``, in its own run directory."""
    row = T.run_one("finetune", model, work / f"{model}_pretrained.safetensors", k, seed, work, data,
                    test_set, override=override, tag="_lr_" + name.replace(" ", "_").replace(",", ""))
    return {"model": model, "variant": name, "override": override, "per_class": k, "seed": seed,
            "pretrain_images": pretrain_images, "test_top1": row["test_top1"],
            "train_acc": row["train_acc"], "seconds": row["seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--work", required=True, help="benchmarks/transfer.py's --work (its pretrained checkpoint)")
    p.add_argument("--pretrain-images", type=int, required=True, help="as given to transfer.py, for the record")
    p.add_argument("--variants", required=True, help='JSON: {"name": {"lr": 0.1, ...}, ...}')
    p.add_argument("--per-class", nargs="+", type=int, default=[10])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work, data = Path(args.work), T.load_source()
    test_set = load_dataset(str(T.write_split_dir(work / "test59", T.classes_subset(data["test"], 5),
                                                  T.classes_subset(data["test"], 5))), "test")
    command = "python benchmarks/transfer_lr.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"command": "", "runs": []}
    results["command"] = f"{results['command']}; then {command}" if results["command"] else command
    results["machine"] = machine_info()
    for name, override in json.loads(args.variants).items():
        for k in args.per_class:
            for seed in args.seeds:
                row = run_variant(args.model, work, name, override, k, seed, data, test_set, args.pretrain_images)
                results["runs"].append(row)
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")
                print(f"{args.model} {name} k={k} seed={seed}: test top-1 {row['test_top1']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
