"""Inference latency of MobileNetV2 and V3-Large on this CPU, every PyTorch and onnxruntime
backend side by side (the mobile and edge runtimes beside onnxruntime: ``benchmarks/runtimes.py``).

    .venv/bin/python benchmarks/inference.py            # ~2-4 minutes on 2 cores
    .venv/bin/python benchmarks/inference.py --runs 3   # the README's table

For each model at 224×224 and batch sizes 1 and 32, with 2 threads, one run times: eager
NCHW fp32 (the baseline), the PyTorch inference paths (``channels_last``: BN folded, NHWC,
``inference_mode``; ``torchscript``: that, traced, frozen and ``optimize_for_inference``;
``compile``: that through ``torch.compile``; ``compile-bf16``: the same with bf16 weights
and activations, on CPUs with native bf16), and onnxruntime fp32 and int8. Backends are
timed in interleaved rounds (:mod:`mobilenets.deploy.bench`), so background load hits all alike.

The baseline is run the plain way: in a process with glibc's malloc as it comes, which
hands a batch's large activations back to the kernel when they are freed, so the next batch
faults them in again. The library's paths run as ``mobilenets bench``/``eval``/``predict``
run them, in a process with freed memory kept for reuse
(:func:`mobilenets.ops.cpu.keep_freed_memory`, process-wide and irreversible). So each run is
two child processes: a *plain* one timing eager and compile, and a *kept* one timing every
backend. The speed-up of our best path is plain eager over the kept process's fastest fp32
path; the table also gives the compiler's share alone (plain eager over plain compile).

Latency on a shared virtual machine drifts by 30 % or more between runs minutes apart (the
interleaving only protects the ratios *within* a process), so ``--runs N`` repeats the whole
measurement N times, alternating which process goes first; the table then gives the median
over runs of each latency and of each ratio, with the ratio's range, and the goals are
judged on the median ratios.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mobilenets
from mobilenets.deploy.bench import benchmark

MODELS = ("mobilenet_v2", "mobilenet_v3_large")
BACKENDS = ("eager", "channels_last", "torchscript", "compile", "compile-bf16", "onnxruntime",
            "onnxruntime-int8")
PLAIN_BACKENDS = ("eager", "compile")
FAST_PYTORCH = ("channels_last", "torchscript", "compile")
RATIOS = ("pytorch_speedup", "compiler_alone_speedup", "malloc_alone_speedup", "bf16_speedup",
          "int8_speedup")
GOAL = 2.0


def medians(report: dict, batch: int) -> dict[str, float | None]:
    return {r["backend"]: r["median_ms"] for r in report["results"] if r["batch"] == batch}


def summarize(kept: dict, plain: dict, batch: int) -> dict:
    """One (model, batch) of one run, from the JSON reports of its two processes."""
    med, base = medians(kept, batch), medians(plain, batch)
    fast = {b: med[b] for b in FAST_PYTORCH if med.get(b) is not None}
    best = min(fast, key=fast.get)
    contended = [f"{r['backend']}{'' if rep is kept else ' (plain)'}" for rep in (kept, plain)
                 for r in rep["results"] if r["batch"] == batch and r["contended_rounds"]]
    row = {"model": kept["model"], "batch": batch, "median_ms": med, "plain_median_ms": base,
           "contended": contended, "best_pytorch": best,
           "pytorch_speedup": base["eager"] / fast[best]}
    if base.get("compile"):
        row["compiler_alone_speedup"] = base["eager"] / base["compile"]
    if med.get("eager"):
        row["malloc_alone_speedup"] = base["eager"] / med["eager"]
    if med.get("compile-bf16"):
        row["bf16_speedup"] = base["eager"] / med["compile-bf16"]
    if med.get("onnxruntime") and med.get("onnxruntime-int8"):
        row["int8_speedup"] = med["onnxruntime"] / med["onnxruntime-int8"]
    return row


def combine(runs: list[dict]) -> dict:
    """One (model, batch) row from its rows of several runs: median latencies and ratios,
    the ratios' ranges, and the PyTorch path that was fastest in the median."""
    row = dict(runs[0])
    for field in ("median_ms", "plain_median_ms"):
        backends = {b for r in runs for b, v in r[field].items() if v is not None}
        row[field] = {b: statistics.median(r[field][b] for r in runs if r[field].get(b) is not None)
                      for b in sorted(backends)}
    row["contended"] = sorted({b for r in runs for b in r["contended"]})
    fast = {b: row["median_ms"][b] for b in FAST_PYTORCH if b in row["median_ms"]}
    row["best_pytorch"] = min(fast, key=fast.get)
    for key in RATIOS:
        values = [r[key] for r in runs if key in r]
        if values:
            row[key] = statistics.median(values)
            row[key + "_range"] = [min(values), max(values)]
    row["runs"] = len(runs)
    return row


def markdown(rows: list[dict], reports: list[dict]) -> str:
    def ms(row: dict, backend: str, field: str = "median_ms") -> str:
        v = row[field].get(backend)
        label = backend if field == "median_ms" else f"{backend} (plain)"
        mark = "†" if label in row["contended"] else ""
        return "n/a" if v is None else f"{v:.1f}{mark}"

    def ratio(row: dict, key: str) -> str:
        if key not in row:  # e.g. no bf16 instructions on this CPU
            return "n/a"
        text = f"**{row[key]:.2f}×**"
        if row.get("runs", 1) > 1 and key + "_range" in row:
            low, high = row[key + "_range"]
            text += f" ({low:.2f}-{high:.2f})"
        return text

    machine = reports[0]["machine"]
    loads = [r["machine"].get(k) for r in reports for k in ("load_average_start", "load_average_end")]
    load = (f", load average {min(loads):.2f}-{max(loads):.2f}" if None not in loads else "")
    runs = rows[0].get("runs", 1)
    over = f", median of {runs} runs (ratio ranges in brackets)" if runs > 1 else ""
    lines = [f"Median latency in ms{over}, 224×224, {reports[0]['threads']} threads, {machine['cpu']}, "
             f"torch {machine['torch']}, onnxruntime {machine.get('onnxruntime')}{load}. "
             "*Plain*: a process with glibc's malloc as it comes; every other column: freed "
             "memory kept.", "",
             "| model | batch | eager NCHW plain | compile plain | eager NCHW | channels_last | "
             "torchscript | compile | best fp32 PyTorch vs plain eager | compiler alone | "
             "malloc alone | compile bf16 | bf16 vs plain eager | ORT fp32 | ORT int8 | "
             "int8 vs ORT fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['batch']} | {ms(r, 'eager', 'plain_median_ms')} | "
            f"{ms(r, 'compile', 'plain_median_ms')} | {ms(r, 'eager')} | {ms(r, 'channels_last')} | "
            f"{ms(r, 'torchscript')} | {ms(r, 'compile')} | "
            f"{ratio(r, 'pytorch_speedup')} {r['best_pytorch']} | {ratio(r, 'compiler_alone_speedup')} | "
            f"{ratio(r, 'malloc_alone_speedup')} | {ms(r, 'compile-bf16')} | "
            f"{ratio(r, 'bf16_speedup')} | {ms(r, 'onnxruntime')} | "
            f"{ms(r, 'onnxruntime-int8')} | {ratio(r, 'int8_speedup')} |")
    if any(r["contended"] for r in rows):
        lines += ["", "† timed while other processes used more than 10% of the CPU (a round "
                      "was repeated 4 times without finding a quiet moment)."]
    return "\n".join(lines)


def child(mode: str, threads: int, seconds: float, out: Path, log_prefix: str) -> None:
    """One process's measurements: every model at batch 1 and 32, as JSON reports."""
    start = time.time()
    reports = []
    for name in MODELS:
        report = benchmark(mobilenets.create_model(name), batches=(1, 32), resolution=224,
                           backends=BACKENDS if mode == "kept" else PLAIN_BACKENDS,
                           threads=threads, seconds=seconds, reuse_memory=mode == "kept",
                           log=lambda msg, n=name: print(f"[{time.time() - start:5.0f}s] {log_prefix} "
                                                         f"{mode} {n}: {msg}", file=sys.stderr, flush=True))
        print(report.table() + "\n", file=sys.stderr)
        reports.append(report.to_json())
    out.write_text(json.dumps(reports))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="timed seconds per backend and batch size")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole measurement; report medians over runs")
    parser.add_argument("--out",
                        default=str(Path(__file__).parent / "results" / "inference.json"))
    parser.add_argument("--child", choices=("plain", "kept"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-log", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child(args.child, args.threads, args.seconds, Path(args.child_out), args.child_log)
        return 0
    start = time.time()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    reports, per_run = [], {}
    with tempfile.TemporaryDirectory(prefix="inference-") as tmp:
        for run in range(args.runs):
            got = {}
            for mode in (("plain", "kept") if run % 2 == 0 else ("kept", "plain")):
                path = Path(tmp) / f"{run}-{mode}.json"
                subprocess.run([sys.executable, __file__, "--child", mode, "--child-out", str(path),
                                "--child-log", f"run {run + 1}/{args.runs}", "--threads",
                                str(args.threads), "--seconds", str(args.seconds)], check=True)
                got[mode] = json.loads(path.read_text())
            for kept, plain in zip(got["kept"], got["plain"]):
                reports += [kept, plain]
                for b in (1, 32):
                    per_run.setdefault((kept["model"], b), []).append(summarize(kept, plain, b))
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
                               "reports": reports}, indent=2) + "\n")
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
