"""Data-parallel scaling efficiency: the same training with 1 and with N processes.

Runs ``mobilenets train --nproc-per-node P`` (PyTorch DDP launched by torchrun; gloo on
CPUs, NCCL on GPUs) for P = 1 and P = N, each process with ``--threads`` CPU threads (so
on a CPU machine P processes use P × threads cores), the same global batch and the same
number of steps, and reads the training images/s that rank 0 records in
``metrics.jsonl``. Scaling efficiency = images/s(N) / (N × images/s(1)).

Writes ``benchmarks/results/ddp_scaling.json`` and prints a Markdown table.

    python benchmarks/ddp_scaling.py --nproc 2 --threads 1 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run(nproc: int, args: argparse.Namespace, out: Path) -> float:
    cmd = [sys.executable, "-m", "mobilenets", "train", "--nproc-per-node", str(nproc), "--model", args.model,
           "--data", args.data, "--out", str(out), "--epochs", "1", "--max-steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--precision", args.precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return float(row["images_per_sec"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256, help="global batch")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--out", default=str(RESULTS / "ddp_scaling.json"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        single = run(1, args, Path(tmp) / "p1")
        multi = run(args.nproc, args, Path(tmp) / f"p{args.nproc}")
    result = {"benchmark": "ddp_scaling", "model": args.model, "data": args.data, "steps": args.steps,
              "global_batch": args.batch_size, "threads_per_process": args.threads,
              "precision": args.precision, "images_per_sec_1": single,
              f"images_per_sec_{args.nproc}": multi, "nproc": args.nproc,
              "speedup": multi / single, "efficiency": multi / (args.nproc * single),
              "command": "python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| processes × threads | images/s | speed-up | efficiency |\n|---|---:|---:|---:|\n"
          f"| 1 × {args.threads} | {single:.0f} | ×1.00 | 100 % |\n"
          f"| {args.nproc} × {args.threads} | {multi:.0f} | ×{multi / single:.2f} | "
          f"{100 * multi / (args.nproc * single):.0f} % |")


if __name__ == "__main__":
    main()
