"""``mobilenets eval`` with and without its malloc setting: wall time and page faults.

    python benchmarks/eval_malloc.py runs/demo [--data fashion-mnist] [--rounds 3] [--out FILE]

``mobilenets eval`` keeps freed memory for reuse (:func:`mobilenets.ops.cpu.keep_freed_memory`)
unless given ``--no-reuse-memory``. A malloc setting holds for a whole process, so each
round runs the command twice as a child process, once each way (which goes first
alternates), and records its wall time, page faults and the top-1 it printed (the same
both ways: only the allocator differs). Writes ``benchmarks/results/eval_malloc.json``
with every round and the median ratio, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"plain": ["--no-reuse-memory"], "kept": []}


def timed_eval(checkpoint: str, data: str, extra: list[str]) -> dict[str, float]:
    """One ``mobilenets eval`` child process: wall seconds, minor page faults, top-1."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eval-malloc-") as tmp:  # its confusion.png
        out = subprocess.run([sys.executable, "-m", "mobilenets", "eval", checkpoint, "--data", data,
                              "--json", "--out", tmp, *extra], capture_output=True, text=True,
                             check=True).stdout
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
    return {"seconds": seconds, "page_faults": faults, "top1": json.loads(out)["top1"]}


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Medians over rounds per mode, and the median of the per-round speed-ups."""
    out = {f"{mode}_{key}": statistics.median(r[mode][key] for r in rounds)
           for mode in MODES for key in ("seconds", "page_faults")}
    out["speedup"] = statistics.median(r["plain"]["seconds"] / r["kept"]["seconds"] for r in rounds)
    out["speedup_range"] = [min(r["plain"]["seconds"] / r["kept"]["seconds"] for r in rounds),
                            max(r["plain"]["seconds"] / r["kept"]["seconds"] for r in rounds)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_malloc.json"))
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    rounds = []
    for k in range(args.rounds):
        order = list(MODES) if k % 2 == 0 else list(MODES)[::-1]
        rounds.append({mode: timed_eval(args.checkpoint, args.data, MODES[mode]) for mode in order})
        print(f"round {k + 1}/{args.rounds}: " + ", ".join(
            f"{m} {r['seconds']:.1f} s, {r['page_faults']:,} faults" for m, r in rounds[-1].items()),
            file=sys.stderr)
    if len({r[m]["top1"] for r in rounds for m in MODES}) != 1:
        raise SystemExit("the two modes scored differently: the allocator must not change results")
    summary = summarize(rounds)
    command = " ".join(["python", "benchmarks/eval_malloc.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "summary": summary, "rounds": rounds}, indent=2) + "\n")
    print(f"| eval | plain s | kept s | speed-up | plain page faults | kept page faults |\n"
          f"|---|---:|---:|---:|---:|---:|\n"
          f"| `{args.checkpoint}` on {args.data} | {summary['plain_seconds']:.1f} | "
          f"{summary['kept_seconds']:.1f} | ×{summary['speedup']:.2f} "
          f"({summary['speedup_range'][0]:.2f}-{summary['speedup_range'][1]:.2f}) | "
          f"{summary['plain_page_faults']:,.0f} | {summary['kept_page_faults']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
