"""Inference latency of MobileNetV2 and V3-Large on this CPU, every backend side by side.

    .venv/bin/python benchmarks/inference.py            # ~2-4 minutes on 2 cores
    .venv/bin/python benchmarks/inference.py --runs 3   # the README's table

For each model at 224×224 and batch sizes 1 and 32, with 2 threads, one run times: eager
NCHW fp32 (the baseline), the PyTorch inference paths (``channels_last``: BN folded, NHWC,
``inference_mode``; ``torchscript``: that, traced, frozen and ``optimize_for_inference``;
``compile``: that through ``torch.compile``; ``compile-bf16``: the same with bf16 weights
and activations, on CPUs with native bf16), and onnxruntime fp32 and int8. Backends are
timed in interleaved rounds (:mod:`mobilenets.bench`), so background load hits all alike.

Latency on a shared virtual machine drifts by 30 % or more between runs minutes apart (the
interleaving only protects the ratios *within* a run), so ``--runs N`` repeats the whole
measurement N times; the table then gives the median over runs of each latency and of each
ratio, with the ratio's range, and the goals are judged on the median ratios.

It writes ``benchmarks/results/inference.json`` and prints a Markdown table plus the two
goals: best PyTorch path >= 2x faster than eager (judged for the float32 paths and, separately,
for the bf16 path, whose accuracy ``mobilenets eval --precision bf16`` measures), int8 >= 2x
faster than onnxruntime fp32.
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
from mobilenets.bench import BenchReport, benchmark

MODELS = ("mobilenet_v2", "mobilenet_v3_large")
BACKENDS = ("eager", "channels_last", "torchscript", "compile", "compile-bf16", "onnxruntime",
            "onnxruntime-int8")
FAST_PYTORCH = ("channels_last", "torchscript", "compile")
GOAL = 2.0


def summarize(report: BenchReport, batch: int) -> dict:
    """Medians of one (model, batch) and the two ratios the goals are about."""
    results = [r for r in report.results if r.batch == batch]
    med = {r.backend: r.median_ms for r in results}
    fast = {b: med[b] for b in FAST_PYTORCH if med.get(b) is not None}
    best = min(fast, key=fast.get)
    row = {"model": report.model, "batch": batch, "median_ms": med,
           "contended": [r.backend for r in results if r.contended_rounds],
           "best_pytorch": best, "pytorch_speedup": med["eager"] / fast[best]}
    if med.get("compile-bf16"):
        row["bf16_speedup"] = med["eager"] / med["compile-bf16"]
    if med.get("onnxruntime") and med.get("onnxruntime-int8"):
        row["int8_speedup"] = med["onnxruntime"] / med["onnxruntime-int8"]
    return row


def combine(runs: list[dict]) -> dict:
    """One (model, batch) row from its rows of several runs: median latencies and ratios,
    the ratios' ranges, and the PyTorch path that was fastest in the median."""
    row = dict(runs[0])
    backends = {b for r in runs for b, v in r["median_ms"].items() if v is not None}
    row["median_ms"] = {b: statistics.median(r["median_ms"][b] for r in runs
                                             if r["median_ms"].get(b) is not None)
                        for b in sorted(backends)}
    row["contended"] = sorted({b for r in runs for b in r["contended"]})
    fast = {b: row["median_ms"][b] for b in FAST_PYTORCH if b in row["median_ms"]}
    row["best_pytorch"] = min(fast, key=fast.get)
    for key in ("pytorch_speedup", "bf16_speedup", "int8_speedup"):
        values = [r[key] for r in runs if key in r]
        if values:
            row[key] = statistics.median(values)
            row[key + "_range"] = [min(values), max(values)]
    row["runs"] = len(runs)
    return row


def markdown(rows: list[dict], reports: list[BenchReport]) -> str:
    def ms(row: dict, backend: str) -> str:
        v = row["median_ms"].get(backend)
        mark = "†" if backend in row["contended"] else ""
        return "n/a" if v is None else f"{v:.1f}{mark}"

    def ratio(row: dict, key: str) -> str:
        if key not in row:  # e.g. no bf16 instructions on this CPU
            return "n/a"
        text = f"**{row[key]:.2f}×**"
        if row.get("runs", 1) > 1 and key + "_range" in row:
            low, high = row[key + "_range"]
            text += f" ({low:.2f}-{high:.2f})"
        return text

    machine = reports[0].machine
    loads = [r.machine.get(k) for r in reports for k in ("load_average_start", "load_average_end")]
    load = (f", load average {min(loads):.2f}-{max(loads):.2f}" if None not in loads else "")
    runs = rows[0].get("runs", 1)
    over = f", median of {runs} runs (ratio ranges in brackets)" if runs > 1 else ""
    lines = [f"Median latency in ms{over}, 224×224, {reports[0].threads} threads, {machine['cpu']}, "
             f"torch {machine['torch']}, onnxruntime {machine.get('onnxruntime')}{load}.", "",
             "| model | batch | eager NCHW | channels_last | torchscript | compile | "
             "best fp32 PyTorch vs eager | compile bf16 | bf16 vs eager | ORT fp32 | ORT int8 | "
             "int8 vs ORT fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['batch']} | {ms(r, 'eager')} | {ms(r, 'channels_last')} | "
            f"{ms(r, 'torchscript')} | {ms(r, 'compile')} | "
            f"{ratio(r, 'pytorch_speedup')} {r['best_pytorch']} | {ms(r, 'compile-bf16')} | "
            f"{ratio(r, 'bf16_speedup')} | {ms(r, 'onnxruntime')} | "
            f"{ms(r, 'onnxruntime-int8')} | {ratio(r, 'int8_speedup')} |")
    if any(r["contended"] for r in rows):
        lines += ["", "† timed while other processes used more than 10% of the CPU (a round "
                      "was repeated 4 times without finding a quiet moment)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="timed seconds per backend and batch size")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole measurement; report medians over runs")
    parser.add_argument("--out",
                        default=str(Path(__file__).parent / "results" / "inference.json"))
    args = parser.parse_args(argv)

    start = time.time()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    reports, per_run = [], {}
    for run in range(args.runs):
        for name in MODELS:
            report = benchmark(mobilenets.create_model(name), batches=(1, 32), resolution=224,
                               backends=BACKENDS, threads=args.threads, seconds=args.seconds,
                               log=lambda msg, n=name, k=run: print(
                                   f"[{time.time() - start:5.0f}s] run {k + 1}/{args.runs} {n}: {msg}",
                                   file=sys.stderr, flush=True))
            print(report.table() + "\n", file=sys.stderr)
            reports.append(report)
            for b in (1, 32):
                per_run.setdefault((name, b), []).append(summarize(report, b))
    rows = [combine(runs) for runs in per_run.values()]

    table = markdown(rows, reports)
    goals = {
        "pytorch_2x": all(r["pytorch_speedup"] >= GOAL for r in rows),
        "pytorch_bf16_2x": (all(r["bf16_speedup"] >= GOAL for r in rows)
                            if all("bf16_speedup" in r for r in rows) else None),
        "int8_2x": all(r.get("int8_speedup", 0) >= GOAL for r in rows),
    }
    args_used = argv if argv is not None else sys.argv[1:]
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/inference.py", *args_used])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "seconds_total": round(time.time() - start, 1),
                               "threads": args.threads, "summary": rows, "goals_met": goals,
                               "reports": [r.to_json() for r in reports]}, indent=2) + "\n")
    print(table)

    def verdict(met: bool | None) -> str:
        return "n/a (no bf16 instructions)" if met is None else "met" if met else "NOT met"

    print(f"\nbest fp32 PyTorch path >= {GOAL:g}x eager: {verdict(goals['pytorch_2x'])}; "
          f"bf16 path >= {GOAL:g}x eager: {verdict(goals['pytorch_bf16_2x'])}; "
          f"int8 >= {GOAL:g}x onnxruntime fp32: {verdict(goals['int8_2x'])} "
          f"(wrote {out}, {time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
