"""Every inference backend side by side, ONNX Runtime and the mobile and edge runtimes, on
V2, V3-Large and V3-Small: which one to ship on this CPU.

    .venv/bin/python benchmarks/runtimes.py             # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/runtimes.py --runs 3    # the table in docs/performance.md

Each run times, in one process and interleaved rounds (:func:`mobilenets.deploy.bench.benchmark`,
as ``mobilenets bench`` does), every backend of :data:`BACKENDS` that is installed, for each
model at 224×224, batch 1 and 32, 2 threads, random weights (latency does not depend on
them; int8 is calibrated on random images, and its accuracy is measured separately by
``benchmarks/runtime_accuracy.py``). Per (model, batch) it records the median latency of
each backend (median over runs), its speed relative to onnxruntime fp32, the backend
``bench`` ranked first in each run, and whether that choice is within 10 % of the fastest
median. Issue 29's targets, judged on the medians: the best int8 at least 2.0x onnxruntime
fp32 on V2 and at least 1.6x on V3-Large at batch 1. Writes ``benchmarks/results/runtimes.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import mobilenets
from mobilenets.deploy.bench import benchmark

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
BACKENDS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8", "executorch",
            "executorch-int8", "litert", "litert-int8")
BATCHES = (1, 32)
TARGETS = {"mobilenet_v2": 2.0, "mobilenet_v3_large": 1.6}  # best int8 vs ORT fp32, batch 1
CHOICE_SLACK = 1.10


def one_run(threads: int, seconds: float, log_prefix: str) -> list[dict]:
    start = time.time()
    reports = []
    for name in MODELS:
        report = benchmark(mobilenets.create_model(name), batches=BATCHES, resolution=224,
                           backends=BACKENDS, threads=threads, seconds=seconds,
                           log=lambda msg, n=name: print(f"[{time.time() - start:5.0f}s] {log_prefix} {n}: {msg}",
                                                         file=sys.stderr, flush=True))
        print(report.table() + "\n", file=sys.stderr, flush=True)
        reports.append(report.to_json())
    return reports


def summarize(runs: list[list[dict]]) -> list[dict]:
    """One row per (model, batch): median latencies over runs, ratios to ORT fp32, choices."""
    rows = []
    for m, name in enumerate(MODELS):
        for batch in BATCHES:
            per_run = [{r["backend"]: r["median_ms"] for r in run[m]["results"] if r["batch"] == batch}
                       for run in runs]
            backends = [b for b in BACKENDS if all(p.get(b) is not None for p in per_run)]
            med = {b: statistics.median(p[b] for p in per_run) for b in backends}
            fastest = min(med, key=med.get)
            choices = [run[m]["ranking"][str(batch)][0] for run in runs]
            int8 = {b: v for b, v in med.items() if b.endswith("-int8")}
            best_int8 = min(int8, key=int8.get) if int8 else None
            ort = med.get("onnxruntime")
            rows.append({
                "model": name, "batch": batch, "median_ms": med,
                "vs_onnxruntime": {b: ort / v for b, v in med.items()} if ort else {},
                "unavailable": {r["backend"]: r["note"] for run in runs for r in run[m]["results"]
                                if r["batch"] == batch and r["median_ms"] is None},
                "contended": sorted({r["backend"] for run in runs for r in run[m]["results"]
                                     if r["batch"] == batch and r["contended_rounds"]}),
                "fastest": fastest, "bench_choices": choices,
                "choices_within_10pct": all(med.get(c, float("inf")) <= CHOICE_SLACK * med[fastest]
                                            for c in choices),
                "best_int8": best_int8,
                "best_int8_vs_onnxruntime": ort / int8[best_int8] if best_int8 and ort else None,
                "runs": len(runs)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per backend and batch")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "runtimes.json"))
    args = parser.parse_args(argv)
    start = time.time()
    runs = [one_run(args.threads, args.seconds, f"run {k + 1}/{args.runs}") for k in range(args.runs)]
    rows = summarize(runs)
    goals = {m: next(r["best_int8_vs_onnxruntime"] for r in rows if r["model"] == m and r["batch"] == 1)
             for m in TARGETS}
    out = {"command": "python benchmarks/runtimes.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "seconds_total": round(time.time() - start, 1), "threads": args.threads,
           "machine": runs[0][0]["machine"], "targets": TARGETS,
           "targets_met": {m: v is not None and v >= TARGETS[m] for m, v in goals.items()},
           "summary": rows, "reports": [rep for run in runs for rep in run]}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        ratios = ", ".join(f"{b} {v:.2f}x" for b, v in r["vs_onnxruntime"].items())
        print(f"{r['model']} batch {r['batch']}: {ratios}; fastest {r['fastest']}; bench chose "
              f"{r['bench_choices']}")
    print(f"targets (best int8 vs ORT fp32 at batch 1): {goals} -> {out['targets_met']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
