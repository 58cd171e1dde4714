"""The trainer's malloc setting: glibc's defaults against :func:`mobilenets.ops.cpu.keep_freed_memory`,
and the trainer's whole CPU path against the plain baseline.

glibc hands large freed blocks back to the kernel, so each training step faults its
activations' pages in again; the CPU trainer turns that off (``--no-reuse-memory`` keeps
the defaults). A malloc setting holds for a whole process, so each configuration runs in
its own child process, the three alternating for ``--rounds`` rounds:

* plain: ``train_throughput.py``'s plain step (NCHW, fp32, default SGD), glibc's defaults;
* default: its optimised step (channels_last, fused SGD, the trainer's precision: with
  ``--precision auto`` a child process with freed memory kept times both as the trainer
  does, once per model, and every optimised configuration uses its choice), glibc's
  defaults;
* kept: the optimised step with freed memory kept, as the trainer runs it;
* with ``--compile``, also kept + ``torch.compile`` of the model (``train --compile``),
  compiled in the warm-up.

Each child runs a warm-up, then ``--steps`` timed steps. Records each round's median step
time, page faults and system time per step and peak RSS, and the medians over rounds of
those and of the speed-ups kept/default (the malloc setting) and kept/plain (the trainer
against the plain baseline); writes ``benchmarks/results/malloc.json`` and prints a
Markdown table.

    python benchmarks/malloc.py [--models mobilenet_v2,...] [--rounds 3] [--steps 8] [--threads 2]
        [--precision auto|fp32|bf16] [--compile] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MODES = ("plain", "default", "kept")


def child(model: str, mode: str, steps: int, threads: int, batch: int, bf16: bool) -> dict[str, Any]:
    """One configuration in this process: the malloc setting first, then the timed steps;
    or, as mode ``trial``, the trainer's ``--precision auto`` choice in a process like its."""
    from mobilenets.ops import cpu

    if (mode.startswith("kept") or mode == "trial") and not cpu.keep_freed_memory():
        raise SystemExit("keep_freed_memory does not apply here (glibc only)")
    import torch

    from train_throughput import make_step

    torch.set_num_threads(threads)
    if mode == "trial":
        import mobilenets
        from mobilenets.training import faster_precision, time_precisions

        net = cpu.optimize(mobilenets.create_model(model, num_classes=10, in_chans=1, small_input=True))
        times = time_precisions(net.train().to(memory_format=torch.channels_last), (batch, 1, 28, 28), 10, True)
        return {"precision": faster_precision(times), "seconds": times}
    optimised = mode != "plain"
    step, _ = make_step(model, optimised, optimised and bf16, batch, 28, True, compile=mode == "kept_compile")
    for _ in range(3):  # warm-up: oneDNN primitives, glibc's heap settling
        step()
    times, faults, system = [], [], []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        times.append(step())
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults.append(after.ru_minflt - before.ru_minflt)
        system.append(after.ru_stime - before.ru_stime)
    return {"step_s": statistics.median(times), "faults_per_step": statistics.median(faults),
            "system_s_per_step": statistics.median(system),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def summarize(model: str, batch: int, rounds: list[dict[str, dict[str, float]]]) -> dict:
    """One model's row: per-round speed-ups (the malloc setting: kept over default; the
    trainer: kept over plain; and kept + compile over plain where measured) as medians with
    ranges, and the median over rounds of every configuration's figures."""
    modes = list(rounds[0])
    row: dict = {"model": model, "batch": batch, "rounds": rounds}
    ratios_of = [("speedup", "default", "kept"), ("trainer_vs_plain", "plain", "kept")]
    if "kept_compile" in modes:
        ratios_of.append(("compiled_vs_plain", "plain", "kept_compile"))
    for name, base, config in ratios_of:
        ratios = [r[base]["step_s"] / r[config]["step_s"] for r in rounds]
        row[name], row[name + "_range"] = statistics.median(ratios), [min(ratios), max(ratios)]
    for mode in modes:
        for key in ("step_s", "faults_per_step", "system_s_per_step", "peak_rss_mib"):
            row[f"{mode}_{key}"] = statistics.median(r[mode][key] for r in rounds)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "malloc.json"))
    p.add_argument("--compile", action="store_true", help="add the kept + torch.compile configuration")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="of the optimised configurations; auto: as the trainer chooses (timed once per model)")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.threads, args.batch, args.precision == "bf16")))
        return

    from mobilenets.deploy.bench import machine_info
    from mobilenets.ops.cpu import bf16_supported

    modes = MODES + (("kept_compile",) if args.compile else ())
    rows = []
    t0 = time.perf_counter()

    def run_child(model: str, mode: str, precision: str) -> dict[str, Any]:
        return json.loads(subprocess.run(
            [sys.executable, __file__, "--child", model, mode, "--steps", str(args.steps), "--threads",
             str(args.threads), "--batch", str(args.batch), "--precision", precision],
            check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    for model in args.models.split(","):
        precision, trial = args.precision, None
        if precision == "auto":
            trial = run_child(model, "trial", "auto") if bf16_supported() else None
            precision = trial["precision"] if trial else "fp32"
        rounds = [{mode: run_child(model, mode, precision) for mode in modes} for _ in range(args.rounds)]
        row = {**summarize(model, args.batch, rounds), "precision": precision,
               "precision_trial_s": trial and trial["seconds"]}
        rows.append(row)
        print(model, f"{precision}: kept/default ×{row['speedup']:.2f}, kept/plain ×{row['trainer_vs_plain']:.2f}"
              + (f", kept+compile/plain ×{row['compiled_vs_plain']:.2f}" if args.compile else ""), flush=True)

    result = {"benchmark": "malloc", "machine": machine_info(), "threads": args.threads, "rows": rows,
              "minutes": (time.perf_counter() - t0) / 60,
              "command": f"python benchmarks/malloc.py --models {args.models} --batch {args.batch} "
                         f"--rounds {args.rounds} --steps {args.steps} --threads {args.threads} "
                         f"--precision {args.precision}"
                         + (" --compile" if args.compile else "")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("\n| model | plain (img/s) | optimised, glibc default (img/s) | faults/step | kernel s/step | peak RSS | "
          "kept (img/s) | faults/step | peak RSS | kept vs default | kept vs plain |"
          + (" kept + compile (img/s) | vs plain |" if args.compile else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.compile else ""))
    for r in rows:
        ratios = [f"×{r[k]:.2f} ({r[k + '_range'][0]:.2f}-{r[k + '_range'][1]:.2f})"
                  for k in ("speedup", "trainer_vs_plain")]
        if args.compile:
            lo, hi = r["compiled_vs_plain_range"]
            ratios.append(f"{args.batch / r['kept_compile_step_s']:.0f} | ×{r['compiled_vs_plain']:.2f} ({lo:.2f}-{hi:.2f})")
        print(f"| `{r['model']}` ({r['precision']}) | {args.batch / r['plain_step_s']:.0f} | {args.batch / r['default_step_s']:.0f} | "
              f"{r['default_faults_per_step']:,.0f} | {r['default_system_s_per_step']:.2f} | "
              f"{r['default_peak_rss_mib']:,.0f} MiB | {args.batch / r['kept_step_s']:.0f} | "
              f"{r['kept_faults_per_step']:,.0f} | {r['kept_peak_rss_mib']:,.0f} MiB | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
