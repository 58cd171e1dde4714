"""Load test of ``mobilenets serve``: throughput, latency and batch sizes under a bounded load.

    .venv/bin/python benchmarks/serve_load.py                   # ~8 minutes on 2 shared cores
    .venv/bin/python benchmarks/serve_load.py --requests 2000   # the issue's count (~2x longer)

For V3-Small and V3-Large at 224×224 (random weights: the speed of a network does not depend on
its weights), it starts ``mobilenets serve`` on 127.0.0.1 twice, with dynamic batching
(``--max-batch 32 --max-wait-ms 5``) and without (``--max-batch 1``), and sends ``--requests``
real images (a JPEG photo and Fashion-MNIST PNGs, in turn) at each concurrency (1, 8, 32 client
threads with keep-alive connections). Each point reports throughput, p50/p95/p99 latency,
errors, requests lost and the batch sizes the server formed; the server's own
``images_total`` must equal the requests answered. Goals: no error and no lost request; with
batching, throughput at concurrency 32 ≥ 2× that at concurrency 1.

The clients share the server's two cores, so the figures are a floor on what a server alone
would do. Writes ``benchmarks/results/serve_load.json`` (the docs table: ``make docs``).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mobilenets import create_model, save_model
from mobilenets.deploy.timing import machine_info
from mobilenets.serve.load import ServerProcess, Upload, run_load

ROOT = Path(__file__).resolve().parents[1]
MODES = {"batching": ["--max-batch", "32", "--max-wait-ms", "5"], "none": ["--max-batch", "1"]}


def real_images() -> list[Upload]:
    """Matplotlib's photo of Grace Hopper (JPEG, 512×600) and eight Fashion-MNIST test PNGs."""
    from matplotlib import cbook
    from PIL import Image

    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    uploads = [Upload(photo, "image/jpeg", name="grace_hopper.jpg")]
    sample = np.load(ROOT / "tests" / "fixtures" / "fmnist_sample.npz")["test_images"][:8]
    for i, img in enumerate(sample):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        uploads.append(Upload(buf.getvalue(), "image/png", name=f"fmnist_{i}.png"))
    return uploads


def images_counted(server: ServerProcess) -> int:
    """The server's ``mobilenets_serve_images_total``."""
    status, body = server.get("/metrics")
    match = re.search(rb"^mobilenets_serve_images_total (\d+)$", body, re.M)
    if status != 200 or match is None:
        raise SystemExit(f"error: /metrics answered {status} without images_total")
    return int(match.group(1))


def measure(checkpoint: Path, mode: str, args: argparse.Namespace, uploads: list[Upload]) -> list[dict]:
    """Every concurrency against one server; rows of the results file."""
    rows = []
    with ServerProcess(checkpoint, *MODES[mode], "--threads", str(args.threads), "--log-level", "warning") as server:
        run_load(server.port, uploads, args.warmup, 4)  # warm-up: not recorded
        for concurrency in args.concurrency:
            before = images_counted(server)
            result = run_load(server.port, uploads, args.requests, concurrency)
            row = {"mode": mode, "concurrency": concurrency, **result.summary(),
                   "server_images": images_counted(server) - before}
            row["goal_nothing_lost"] = (row["lost"] == 0 and row["unexpected"] == 0
                                        and row["ok"] == args.requests == row["server_images"])
            print(f"  {mode:8s} c={concurrency:<3d} {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:.1f}"
                  f"  p95 {row['p95_ms']:.1f}  p99 {row['p99_ms']:.1f} ms  batches {row['batch_sizes']}"
                  f"  errors {row['client_errors'] + row['server_errors']}  lost {row['lost']}", flush=True)
            rows.append(row)
    rows[-1]["exit_code"] = server.exit_code
    for row in rows:
        row["clean_exit"] = server.exit_code == 0
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenet_v3_small,mobilenet_v3_large")
    p.add_argument("--requests", type=int, default=1000, help="requests at each concurrency")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--threads", type=int, default=2, help="the server's PyTorch threads")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    uploads, machine, start = real_images(), machine_info(), time.time()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            checkpoint = Path(tmp) / f"{name}.safetensors"
            save_model(create_model(name).eval(), checkpoint, preprocessing={
                "input_size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
            print(name, flush=True)
            for mode in MODES:
                results += [{"model": name, **row} for row in measure(checkpoint, mode, args, uploads)]
    summary = summarize(results)
    command = "python benchmarks/serve_load.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = {"command": command.strip(), "machine": machine, "minutes": round((time.time() - start) / 60, 1),
           "requests_per_point": args.requests, "rows": results, "summary": summary}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(s["goal_batching_2x"] and s["goal_nothing_lost"] for s in summary) else 1


def summarize(rows: list[dict]) -> list[dict]:
    """Per model: batching's throughput at the highest concurrency over concurrency 1, and
    whether every point lost nothing and exited cleanly."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r["mode"] == "batching"]
        low, high = min(mine, key=lambda r: r["concurrency"]), max(mine, key=lambda r: r["concurrency"])
        gain = high["throughput_rps"] / low["throughput_rps"]
        every = [r for r in rows if r["model"] == model]
        out.append({"model": model, "batching_gain": round(gain, 2), "at_concurrency": high["concurrency"],
                    "goal_batching_2x": gain >= 2.0,
                    "goal_nothing_lost": all(r["goal_nothing_lost"] and r["clean_exit"] for r in every)})
    return out


if __name__ == "__main__":
    sys.exit(main())
