"""The tables of benchmark results in the docs, each made from committed JSON only.

Every function takes a :class:`Results` and returns Markdown: the table, then a caption naming
the file, the command and the machine that wrote it. :data:`TABLE_MAKERS` maps the marker name
used in the docs (``<!-- results:NAME -->``) to its function. Standard library only.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
ZEN4 = "2-core AMD EPYC (Zen 4, AVX-512-BF16, VNNI, no AMX)"

#: Files whose layout (one entry per run or per configuration) leaves no place for the command
#: and machine, and which predate the machine record: what the README said when they were written.
PROVENANCE: dict[str, dict[str, str]] = {
    "fmnist.json": {
        "command": "python benchmarks/train_fmnist.py --models MODEL ...",
        "machine": f"{ZEN4}, except runs that record their own `machine`"},
    "compile_options.json": {
        "command": "python benchmarks/compile_options.py --models mobilenet_v2,mobilenet_v3_large "
                   "--batches 1,32 --seconds 3",
        "machine": ZEN4},
    "compile_options_avx2_fp32.json": {
        "command": "python benchmarks/compile_options.py --models mobilenet_v2,mobilenet_v3_large "
                   "--batches 1,32 --seconds 3 --out benchmarks/results/compile_options_avx2_fp32.json",
        "machine": "2-core AMD EPYC (AVX2 only)"},
}


class Results:
    """The committed JSON files, each read once (several tables share one)."""

    def __init__(self, folder: Path = RESULTS) -> None:
        self.folder = folder
        self._cache: dict[str, object] = {}

    def __call__(self, name: str):
        if name not in self._cache:
            self._cache[name] = json.loads((self.folder / name).read_text())
        return self._cache[name]

    def provenance(self, name: str) -> dict[str, str]:
        """The command and machine that wrote a file: its own record, else :data:`PROVENANCE`."""
        data = self(name)
        rows = data if isinstance(data, list) else [data]
        if isinstance(data, dict) and "machine" not in data and isinstance(data.get("reports"), list):
            rows = rows + data["reports"]
        found = {key: sorted({_text(r[key]) for r in rows if isinstance(r, dict) and key in r})
                 for key in ("command", "machine")}
        known = PROVENANCE.get(name, {})
        return {key: known.get(key) or "; ".join(values) for key, values in found.items()}


def _text(value: object) -> str:
    return machine_name(value) if isinstance(value, dict) else str(value)


def machine_name(m: dict) -> str:
    """``2-core Intel Xeon (AVX-512-BF16, VNNI, no AMX)`` from a ``machine_info()`` record."""
    cpu = m.get("cpu", "unknown CPU").replace("(R)", "").replace(" Processor", "").strip()
    isa = set(m.get("isa", ()))
    if isa == {"avx2"}:
        features = "AVX2 only"
    else:
        amx = {"amx_tile", "amx_bf16", "amx_int8"} & isa
        names = [("avx512_bf16", "AVX-512-BF16"), ("avx512_vnni", "VNNI")]
        features = ", ".join(label for key, label in names if key in isa) or "ISA not recorded"
        features += (", AMX" if amx else ", no AMX") if isa else ""
    cpus = m.get("logical_cpus")
    name = f"{cpus}-core {cpu}" if cpus else cpu
    return f"{name[:-1]}, {features})" if name.endswith(")") else f"{name} ({features})"


def caption(results: Results, name: str, machine: str | None = None, command: str | None = None) -> str:
    """The line under each table: which file, which command, which machine (``machine`` and
    ``command`` where the table shows only some of the file's entries)."""
    p = results.provenance(name)
    return f"\n\nFrom `benchmarks/results/{name}`: `{command or p['command']}`, on a {machine or p['machine']}."


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.2f} %"


def ratio(value: float, lo_hi: list[float] | None = None) -> str:
    return f"×{value:.2f}" + (f" ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})" if lo_hi else "")


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def markdown(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table: the first ``left`` columns left-aligned, the others numbers."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * left + "---:|" * (len(header) - left)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# --- Fashion-MNIST training (benchmarks/train_fmnist.py) -----------------------------------------

def fmnist_options(row: dict) -> str:
    """The options of ``train_fmnist.py`` that reproduce a recorded run (the recipe fills the rest)."""
    opts = [f"--{key.replace('_', '-')} {value:g}" for key, value in row["model_kwargs"].items()]
    opts.append(f"--epochs {row['epochs']}")
    for key in ("weight_decay", "erasing", "label_smoothing", "lr", "batch_size", "ema", "warmup_epochs",
                "no_aug_epochs", "seed"):
        value = row.get(key)  # None: the recipe's (runs recorded before a key existed have none)
        if value is not None and not (key in ("seed", "no_aug_epochs") and value == 0):
            flag = "--warmup" if key == "warmup_epochs" else "--" + key.replace("_", "-")
            opts.append(f"{flag} " + (f"{value:.0e}".replace("e-0", "e-") if 0 < value < 0.01 else f"{value:g}"))
    tag = row["run"].split(f"_e{row['epochs']}_", 1)
    return " ".join([f"--models {row['model']}"] + opts + ([f"--tag {tag[1]}"] if len(tag) == 2 else [])
                    + ([f"--group {row['group']}"] if "group" in row else []))


def fmnist_group(row: dict) -> str:
    """Which table a run belongs in: its ``--group``, its recorded machine, the Zen 4 runs at the
    goal's setting (2 threads), or the older one-thread runs."""
    if "group" in row:
        return row["group"]
    if "machine" in row:
        return "intel" if "Intel" in row["machine"]["cpu"] else row["machine"]["cpu"]
    return "zen4" if row["threads"] == 2 else "older"


def fmnist_table(group: str, results: Results) -> str:
    runs = [r for r in results("fmnist.json").values() if fmnist_group(r) == group]
    scored = group != "older"  # the older runs predate the fp32 and TTA scores
    header = ["`python benchmarks/train_fmnist.py ...`", "params", "MAdds @28", "test top-1"]
    header += ["fp32", "flip TTA"] if scored else []
    header += ["train min", "min to 93 %", "images/s", "precision"]
    rows = []
    for r in sorted(runs, key=lambda r: -r["final_top1"]):
        epoch93 = next((i + 1 for i, a in enumerate(r["per_epoch_top1"]) if a >= 0.93), None)
        t93 = "–" if r["minutes_to_93"] is None else f"{r['minutes_to_93']:.1f} (epoch {epoch93})"
        row = [f"`{fmnist_options(r)}`", f"{r['params']:,}", f"{r['madds_28px'] / 1e6:.1f} M", pct(r["final_top1"])]
        row += [pct(r.get("fp32_top1")), pct(r.get("tta_top1"))] if scored else []
        row += [f"{r['train_minutes']:.1f}", t93, f"{r['images_per_sec']:.0f}", f"{r['precision']}, {r['threads']} threads"]
        rows.append(row)
    machines = {machine_name(r["machine"]) for r in runs if "machine" in r} or {ZEN4}
    return markdown(header, rows) + caption(results, "fmnist.json", "; ".join(sorted(machines)))


def summary_table(results: Results) -> str:
    """README's one results table: every model at an equal CPU budget, and the best run."""
    runs = [r for r in results("fmnist.json").values() if fmnist_group(r) in ("side-by-side", "zen4")]
    side: dict[str, dict] = {}  # per model, its longest run at the shared budget
    for r in runs:
        if r.get("group") == "side-by-side" and r["epochs"] > side.get(r["model"], {"epochs": 0})["epochs"]:
            side[r["model"]] = r
    best = max(runs, key=lambda r: r["final_top1"])
    rows = []
    for r, budget in [(best, "≤ 60 min")] + [(r, "≈ 22 min") for r in sorted(side.values(), key=lambda r: -r["final_top1"])]:
        width = r["model_kwargs"].get("width_mult", 1.0)
        rows.append([f"`{r['model']}`", f"{width:g}" if width % 1 else f"{width:.1f}", budget, str(r["epochs"]), f"{r['params']:,}",
                     pct(r["final_top1"]), pct(r.get("tta_top1")), f"{r['train_minutes']:.1f}",
                     f"{r['images_per_sec']:.0f}"])
    header = ["model", "width", "budget", "epochs", "params", "test top-1", "flip TTA", "train min",
              "train images/s"]
    return (markdown(header, rows) + "\n\nFashion-MNIST from scratch (28×28, small-input stem, recipe "
            "`small-images`, weight decay 5e-4), bf16 autocast, 2 threads; test top-1 on the 10,000 test "
            "images after the last epoch." + caption(results, "fmnist.json", ZEN4))


def ddp_table(results: Results) -> str:
    d = results("ddp_scaling.json")
    rows = [["1 × 1", f"{d['images_per_sec_1']:.0f}", "×1.00", "100 %"],
            [f"{d['nproc']} × {d['threads_per_process']}", f"{d['images_per_sec_2']:.0f}",
             f"×{d['speedup']:.2f}", f"{d['efficiency'] * 100:.0f} %"]]
    return (markdown(["processes × threads", "images/s", "speed-up", "efficiency"], rows)
            + f"\n\n`{d['model']}` on {d['data']}, global batch {d['global_batch']}, {d['precision']}, gloo."
            + caption(results, "ddp_scaling.json"))


# --- int8 and QAT (benchmarks/quant_accuracy.py, qat_fidelity.py) ---------------------------------

def quant_table(results: Results) -> str:
    shown = [r for r in results("quant_accuracy.json") if "acc_onnx_int8_other_range" not in r]
    rows = []  # the 7-bit/8-bit comparison has a table of its own
    for r in shown:
        qat = r.get("acc_qat_int8")
        rows.append([f"`{r['checkpoint']}`", f"`{r['model']}`", pct(r["acc_pytorch"]), pct(r.get("acc_pytorch_bf16")),
                     pct(r["acc_onnx_fp32"]), pct(r["acc_onnx_int8"]),
                     f"{(r['acc_onnx_int8'] - r['acc_pytorch']) * 100:+.2f} pt", pct(r["int8_agrees_with_float"]),
                     pct(qat), "–" if qat is None else f"{(qat - r['acc_pytorch']) * 100:+.2f} pt"])
    header = ["checkpoint", "model", "PyTorch fp32", "PyTorch bf16", "ONNX fp32", "int8 (PTQ)", "Δ PTQ",
              "same top-1 as fp32", "int8 after QAT", "Δ QAT"]
    return (markdown(header, rows, left=2) + "\n\nFashion-MNIST test top-1 on all 10,000 test images, "
            "256 calibration images; QAT: `--qat-steps 60`."
            + caption(results, "quant_accuracy.json", "; ".join(sorted({machine_name(r["machine"]) for r in shown})),
                      "python benchmarks/quant_accuracy.py CHECKPOINT [--qat-steps 60]"))


def weight_range_table(results: Results) -> str:
    r = next(r for r in results("quant_accuracy.json") if "acc_onnx_int8_other_range" in r)
    bits = {64: "7-bit ([−64, 64])", 127: "8-bit ([−127, 127])"}
    verdict = "passed" if r["other_range_passes_parity"] else "failed (tolerance 0.25)"
    rows = [[f"{bits[r['int8_weight_range']]}, this CPU's default", pct(r["acc_onnx_int8"]),
             "passed: " + r["parity_int8"].split(" (")[0]],
            [bits[r["other_weight_range"]], pct(r["acc_onnx_int8_other_range"]),
             f"{verdict}: " + r["parity_int8_other_range"].split(" (")[0]]]
    return (markdown(["int8 weights", "test top-1", "export parity check"], rows, left=3)
            + f"\n\nCheckpoint `{r['checkpoint']}` (fp32 {pct(r['acc_pytorch'])}), all 10,000 test images."
            + caption(results, "quant_accuracy.json", machine_name(r["machine"]), r["command"]))


def qat_fidelity_table(results: Results) -> str:
    rows = [[f"`{r['checkpoint']}`", f"`{r['model']}`", f"{r['test_images']:,}", pct(r["float_top1_agreement"]),
             pct(r["sim_top1_agreement"]), pct(r["sim_without_gate_top1_agreement"])]
            for r in results("qat_fidelity.json")]
    header = ["checkpoint", "model", "test images", "float model", "QAT simulation", "simulation without the gate"]
    return (markdown(header, rows, left=2) + "\n\nTop-1 agreement with onnxruntime's int8 model."
            + caption(results, "qat_fidelity.json"))


# --- speed (benchmarks/inference.py, train_throughput.py, malloc.py, ...) ------------------------

INFERENCE_BACKENDS = ("eager", "channels_last", "torchscript", "compile", "compile-bf16", "onnxruntime",
                      "onnxruntime-int8")


def inference_table(name: str, results: Results) -> str:
    summary = results(name)["summary"]
    plain = any("plain_median_ms" in s for s in summary)
    header = ["model", "batch"] + (["eager, plain process"] if plain else []) + list(INFERENCE_BACKENDS)
    header += ["best fp32 PyTorch vs eager" + (" (plain)" if plain else ""), "int8 vs ORT fp32"]
    rows = []
    for s in summary:
        row = [f"`{s['model']}`", str(s["batch"])] + ([ms(s["plain_median_ms"]["eager"])] if plain else [])
        row += [ms(s["median_ms"].get(b)) for b in INFERENCE_BACKENDS]
        row += [f"{ratio(s['pytorch_speedup'], s['pytorch_speedup_range'])} {s['best_pytorch']}",
                ratio(s["int8_speedup"], s["int8_speedup_range"])]
        rows.append(row)
    note = ("\n\nMedian latency in ms over the runs' medians, 224×224, 2 threads; ratios: median (range) "
            "over runs. " + ("The plain process runs with glibc's malloc defaults; every other column in a "
                             "process that keeps freed memory, as `mobilenets bench` does." if plain else
                             "Every column in one process with glibc's malloc defaults (this run predates "
                             "`bench` keeping freed memory and compile freezing its weights)."))
    return markdown(header, [[c.replace("compile-bf16", "compile bf16") for c in r] for r in rows], left=1) \
        .replace("| onnxruntime |", "| ORT fp32 |").replace("| onnxruntime-int8 |", "| ORT int8 |") \
        + note + caption(results, name)


TRAIN_CONFIGS = {"optimised": "channels_last fp32 fused SGD", "optimised_bf16": "+ bf16 autocast",
                 "optimised_bf16_compile": "+ bf16 + torch.compile", "optimised_compile": "+ torch.compile (fp32)"}


def train_throughput_table(name: str, results: Results) -> str:
    rows_in = results(name)["rows"]
    configs = [c for c in TRAIN_CONFIGS if f"{c}_images_per_s" in rows_in[0]]
    header = ["model", "plain: NCHW fp32 SGD (img/s)"]
    for c in configs:
        header += [f"{TRAIN_CONFIGS[c]} (img/s)", "vs plain"]
    rows = []
    for r in rows_in:
        row = [f"`{r['model']}`", f"{r['plain_images_per_s']:.0f}"]
        for c in configs:
            row += [f"{r[c + '_images_per_s']:.0f}", ratio(r[c + "_speedup"], r[c + "_speedup_range"])]
        rows.append(row)
    r0 = rows_in[0]
    return (markdown(header, rows) + f"\n\nThe training step alone, batch {r0['batch']}, {r0['resolution']}×"
            f"{r0['resolution']} with the small-input stem, configurations interleaved in one process (glibc's "
            "malloc defaults); medians over rounds, range in brackets." + caption(results, name))


def malloc_table(name: str, results: Results) -> str:
    d = results(name)
    compiled = "compiled_vs_plain" in d["rows"][0]
    header = ["model", "precision", "plain (img/s)", "glibc default (img/s)", "faults per step", "kept (img/s)",
              "faults per step", "peak RSS default / kept", "kept vs default", "**trainer (kept) vs plain**"]
    header += ["kept + compile (img/s)", "vs plain"] if compiled else []
    rows = []
    for r in d["rows"]:
        b = r["batch"]
        row = [f"`{r['model']}`", r.get("precision", "fp32"), f"{b / r['plain_step_s']:.0f}",
               f"{b / r['default_step_s']:.0f}", f"{r['default_faults_per_step']:,.0f}", f"{b / r['kept_step_s']:.0f}",
               f"{r['kept_faults_per_step']:,.0f}",
               f"{r['default_peak_rss_mib']:,.0f} / {r['kept_peak_rss_mib']:,.0f} MiB",
               ratio(r["speedup"], r["speedup_range"]), ratio(r["trainer_vs_plain"], r["trainer_vs_plain_range"])]
        if compiled:
            row += [f"{b / r['kept_compile_step_s']:.0f}", ratio(r["compiled_vs_plain"], r["compiled_vs_plain_range"])]
        rows.append(row)
    return (markdown(header, rows, left=2) + "\n\nEach configuration in its own process, alternating, batch "
            f"{d['rows'][0]['batch']}, 28 px; medians over rounds, range in brackets. *Plain*: NCHW fp32 SGD; "
            "the others: the trainer's step (channels_last, fused SGD, the precision shown)."
            + caption(results, name))


def memory_format_table(results: Results) -> str:
    d = results("memory_format_avx2.json")
    rows = [[f"`{r['model']}`", f"{r['batch'] / r['before_step_s']:.0f}", f"{r['batch'] / r['library_step_s']:.0f}",
             ratio(r["speedup"], r["speedup_iqr"])] for r in d["rows"]]
    return (markdown(["model", "before (img/s)", "library (img/s)", "speed-up (IQR)"], rows)
            + caption(results, "memory_format_avx2.json"))


def depthwise_bf16_table(name: str, results: Results) -> str:
    rows = [[f"{tuple(r['shape'])}, {r['kernel']}×{r['kernel']} stride {r['stride']}", f"{r['fp32_ms']:.1f}",
             f"{r['bf16_ms']:.1f}", f"×{r['bf16_slowdown']:.1f}"] for r in results(name)["depthwise"]]
    return (markdown(["depthwise layer (N, C, H, W)", "fp32 (ms)", "bf16 (ms)", "bf16 slower by"], rows)
            + "\n\nForward and backward of V3-Large's depthwise layers at 28 px, oneDNN, "
            f"{results(name)['threads']} thread(s)." + caption(results, name))


def small_map_table(name: str, results: Results) -> str:
    d = results(name)
    rows = [[f"weight gradient {tuple(r['shape'])}, {r['kernel']}×{r['kernel']}", f"{r['onednn_ms']:.1f}",
             f"{r['mobilenets_ms']:.1f}", f"×{r['speedup']:.2f}", "yes" if r["library_uses_it"] else "no"]
             for r in d["small_map"]]
    rows += [[f"`{r['model']}` training step (fp32, channels_last, batch 256, 28 px)", f"{r['onednn_ms']:.0f}",
              f"{r['mobilenets_ms']:.0f}", f"×{r['speedup']:.2f}", "yes"] for r in d.get("small_map_step", [])]
    header = ["measured", "oneDNN (ms)", "library's kernel (ms)", "speed-up", "used"]
    return markdown(header, rows) + caption(results, name)


def compile_options_table(name: str, results: Results) -> str:
    entries = list(results(name).values())
    variants = list(entries[0]["median_ms"])
    rows = [[f"`{e['model']}`", str(e["batch"])] + [f"{e['median_ms'][v]:.1f}" for v in variants] for e in entries]
    return (markdown(["model", "batch"] + variants, rows) + "\n\nMedian ms, 2 threads, 224 px; each option "
            "added to the ones left of it." + caption(results, name))


def eval_malloc_table(results: Results) -> str:
    s = results("eval_malloc_avx2.json")["summary"]
    rows = [["plain process", f"{s['plain_seconds']:.1f}", f"{s['plain_page_faults']:,}", "×1.00"],
            ["freed memory kept", f"{s['kept_seconds']:.1f}", f"{s['kept_page_faults']:,}",
             ratio(s["speedup"], s["speedup_range"])]]
    return (markdown(["`mobilenets eval` on 10,000 images", "seconds", "page faults", "speed-up"], rows)
            + caption(results, "eval_malloc_avx2.json"))


# --- serving (benchmarks/serve_load.py) ----------------------------------------------------------

def serve_load_table(results: Results) -> str:
    d = results("serve_load.json")
    rows = []
    for r in d["rows"]:
        sizes = {int(k): v for k, v in r["batch_sizes"].items()}
        mean = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        rows.append([f"`{r['model']}`", "on" if r["mode"] == "batching" else "off", str(r["concurrency"]),
                     f"{r['throughput_rps']:.1f}", ms(r["p50_ms"]), ms(r["p95_ms"]), ms(r["p99_ms"]),
                     f"{mean:.1f} (max {max(sizes, default=0)})",
                     str(r["client_errors"] + r["server_errors"]), str(r["lost"])])
    gains = "; ".join(f"`{s['model']}` ×{s['batching_gain']:.2f}" for s in d["summary"])
    header = ["model", "batching", "clients", "requests/s", "p50 ms", "p95 ms", "p99 ms", "mean batch",
              "errors", "lost"]
    return (markdown(header, rows, left=2) + f"\n\n{d['requests_per_point']:,} requests per row, 224×224, "
            "a JPEG photo and Fashion-MNIST PNGs in turn; the server with 2 PyTorch threads, the clients on "
            f"the same cores. Batching's throughput at the most clients over one client: {gains}."
            + caption(results, "serve_load.json"))


def transfer_table(results: Results) -> str:
    d = results("transfer.json")
    cells = {(s["model"], s["per_class"], s["method"]): s for s in d["summary"]}
    methods = ("linear_probe", "finetune", "scratch")
    rows = []
    for model, k in dict.fromkeys((s["model"], s["per_class"]) for s in d["summary"]):
        got = [cells.get((model, k, m)) for m in methods]
        rows.append([f"`{model}` ({d['widths'].get(model, 1.0)})", str(k)]
                    + ["–" if s is None else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} % ({s['seeds']})"
                       for s in got])
    header = ["model (width)", "images per class", "linear probe", "fine-tune", "from scratch"]
    return (markdown(header, rows, left=2) + f"\n\nFashion-MNIST: pretrained from scratch on "
            f"{d['pretrain_images']:,} images of classes 0-4 for {d['pretrain_epochs']} epochs, then "
            "trained on classes 5-9 with 10 or 100 images per class and tested on all 5,000 test images "
            "of classes 5-9; mean ± std of test top-1 over (seeds), the same number of steps per method."
            + caption(results, "transfer.json"))


def transfer_lr_table(results: Results) -> str:
    d = results("transfer_lr.json")
    scratch = {(s["model"], s["per_class"]): s for s in results("transfer.json")["summary"]
               if s["method"] == "scratch"}
    cells: dict[tuple, list[dict]] = {}
    for r in d["runs"]:
        cells.setdefault((r["model"], r["pretrain_images"], r["per_class"], r["variant"]), []).append(r)
    rows = []
    for (model, images, k, variant), runs in sorted(
            cells.items(), key=lambda kv: (kv[0][:3], statistics.mean(r["test_top1"] for r in kv[1]))):
        v = [r["test_top1"] for r in runs]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        ref = scratch.get((model, k))
        rows.append([f"`{model}`", f"{images:,}", str(k), variant,
                     f"{statistics.mean(r['train_acc'] for r in runs):.2f}",
                     f"{100 * statistics.mean(v):.1f} ± {100 * sd:.1f} % ({len(v)})",
                     "–" if ref is None else f"{100 * ref['mean']:.1f} %"])
    header = ["model", "pretrained on", "images per class", "fine-tuning rates", "training accuracy (last epoch)",
              "test top-1 (seeds)", "from scratch"]
    return (markdown(header, rows, left=4) + "\n\nThe `finetune` runs of `benchmarks/transfer.py` (same "
            "data, seeds and steps) with the recipe's rates replaced; from scratch: the same runs' "
            "scratch method (`transfer.json`)." + caption(results, "transfer_lr.json"))


def precise_bn_table(results: Results) -> str:
    d = results("precise_bn.json")
    rows = [[f"`{r['model']}`", str(r["epochs"]), f"{statistics.median(r['train_seconds']):.1f}",
             f"{statistics.median(r['precise_bn_seconds']):.1f}", f"{100 * r['median_fraction']:.1f} %"]
            for r in d["rows"]]
    header = ["model", "epochs", "training s per epoch", "precise BN s per epoch", "cost"]
    return (markdown(header, rows) + f"\n\nFashion-MNIST, `small-images` recipe (234 steps of 256 "
            f"images per epoch), {d['threads']} threads; precise BN: forward passes over {d['batches']} "
            "training batches before each validation; cost: its seconds over the epoch's training "
            "seconds (median over epochs)." + caption(results, "precise_bn.json"))


# --- ONNX consumers (benchmarks/onnx_consumers.py) -----------------------------------------------

def onnx_consumers_table(results: Results) -> str:
    d = results("onnx_consumers.json")
    consumers = [c["consumer"] for c in d["consumers"]]
    cells: dict[tuple[str, str], list[str]] = {}
    for c in d["consumers"]:
        for r in c["rows"]:
            cell = (f"{r['max_rel_error']:.1e} · {pct(r['top1_agreement'])}" if r["loads"]
                    else "does not load")
            cells.setdefault((r["model"], r["precision"]), []).append(cell)
    rows = [[f"`{model}`", precision] + got for (model, precision), got in cells.items()]
    return (markdown(["model", "precision"] + consumers, rows, left=2)
            + f"\n\nEach cell: max |logit − onnxruntime's| over onnxruntime's largest logit · top-1 "
            f"agreement with onnxruntime ({d['reference']}), on {d['images']}."
            + caption(results, "onnx_consumers.json"))


# --- mobile and edge runtimes (benchmarks/runtimes.py, runtime_accuracy.py) -----------------------

RUNTIME_BACKENDS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8", "executorch",
                    "executorch-int8", "litert", "litert-int8")


def runtimes_table(results: Results) -> str:
    d = results("runtimes.json")
    header = ["model", "batch"] + [b.replace("onnxruntime", "ORT") for b in RUNTIME_BACKENDS] + \
        ["fastest", "best int8 vs ORT fp32"]
    rows = []
    for r in d["summary"]:
        cells = []
        for b in RUNTIME_BACKENDS:
            v = r["median_ms"].get(b)
            cells.append("–" if v is None else f"{v:.2f}" + ("†" if b in r["contended"] else "")
                         + (f" ({ratio(r['vs_onnxruntime'][b])})" if b != "onnxruntime" else ""))
        best = r.get("best_int8_vs_onnxruntime")
        rows.append([f"`{r['model']}`", str(r["batch"])] + cells
                    + [f"{r['fastest']}" + ("" if r["choices_within_10pct"] else " (bench chose otherwise)"),
                       "–" if best is None else f"{ratio(best)} {r['best_int8']}"])
    runs = d["summary"][0]["runs"]
    met = ", ".join(f"{m}: {'met' if ok else 'not met'}" for m, ok in d["targets_met"].items())
    return (markdown(header, rows, left=2)
            + f"\n\nMedian latency in ms ({'median over ' + str(runs) + ' runs, ' if runs > 1 else ''}"
            f"224×224, {d['threads']} threads, random weights; ×: speed relative to onnxruntime fp32). "
            "All backends of a model timed in one process in interleaved rounds, as `mobilenets bench` "
            "does; † rounds timed while other processes used the CPU. LiteRT runs one image per call "
            "(batch 32 is 32 calls). Targets, best int8 vs ORT fp32 at batch 1 (V2 ≥ ×2.0, V3-Large "
            f"≥ ×1.6): {met}." + caption(results, "runtimes.json"))


def pick_quick_table(results: Results) -> str:
    d = results("pick_quick.json")
    c = d["choice"]
    choice = "nothing fits" if c is None else (f"`{c['model']}` {c['kwargs']['width_mult']:g} @{c['resolution']} "
                                               f"({c['top1']:.1f} % top-1, {c['median_ms']:.2f} ms on {c['backend']})")
    rows = [[f"`{d['pick_command']}`", str(len(d["candidates"])), ", ".join(d["backends"]),
             f"{d['process_seconds']:.0f} s", f"{d['wall_seconds']:.0f} s", choice]]
    return (markdown(["command", "networks timed", "backends", "start to end", "of which timing",
                      f"best within {d['budget_ms']:g} ms"], rows, left=3)
            + "\n\nStart to end: a fresh process, Python's start and imports included; timing: "
              "building, exporting and timing every network." + caption(results, "pick_quick.json"))


def runtime_accuracy_table(results: Results) -> str:
    d = results("runtime_accuracy.json")
    name = {id(r): f"`{r['model']}`" + (" after QAT" if r.get("qat") else "") for r in d["rows"]}
    rows = [[name[id(r)], r["format"], pct(r["acc_float"]), pct(r["acc_int8"]),
             f"{r['change_points']:+.2f}", pct(r["agreement"]), "yes" if r["within_limits"] else "**no**"]
            if "refused" not in r else
            [name[id(r)], r["format"], pct(r["acc_float"]), "–", "–", "–",
             "**no**: export refused, error " + r["refused"].split(" = ", 1)[-1].split(", top-1")[0]]
            for r in d["rows"]]
    limits = d["limits"]
    return (markdown(["model", "int8 format", "float top-1", "int8 top-1", "change (points)",
                      "top-1 agreement with float", "within limits"], rows, left=2)
            + f"\n\nThe {d['rows'][0]['test_images']:,} Fashion-MNIST test images, int8 calibrated on "
            f"{d['rows'][0]['calibration_images']} training images; limits: agreement ≥ "
            f"{limits['agreement']:.0%} and a loss ≤ {100 * limits['loss']:.1f} point."
            + caption(results, "runtime_accuracy.json"))


TABLE_MAKERS: dict[str, Callable[[Results], str]] = {
    "summary": summary_table,
    **{f"fmnist-{g}": partial(fmnist_table, g) for g in ("zen4", "side-by-side", "intel", "older")},
    "ddp-scaling": ddp_table,
    "transfer": transfer_table,
    "precise-bn": precise_bn_table,
    "transfer-lr": transfer_lr_table,
    "quant-accuracy": quant_table,
    "int8-weight-range": weight_range_table,
    "qat-fidelity": qat_fidelity_table,
    **{f"inference-{m}": partial(inference_table, f) for m, f in
       (("zen4", "inference.json"), ("avx2", "inference_avx2.json"), ("intel", "inference_intel.json"))},
    **{f"train-throughput-{m}": partial(train_throughput_table, f) for m, f in
       (("zen4", "train_throughput.json"), ("avx2", "train_throughput_avx2.json"),
        ("intel", "train_throughput_intel.json"))},
    "malloc-avx2": partial(malloc_table, "malloc_avx2_layout.json"),
    "malloc-avx2-compile": partial(malloc_table, "malloc_avx2_v2_compile.json"),
    "malloc-intel": partial(malloc_table, "malloc_intel_smallmap.json"),
    "memory-format-avx2": memory_format_table,
    "cpu-kernels-zen4": partial(depthwise_bf16_table, "cpu_kernels.json"),
    "cpu-kernels-intel-bf16": partial(depthwise_bf16_table, "cpu_kernels_intel.json"),
    "cpu-kernels-avx2": partial(small_map_table, "cpu_kernels_avx2.json"),
    "cpu-kernels-intel": partial(small_map_table, "cpu_kernels_intel.json"),
    "compile-options-avx2": partial(compile_options_table, "compile_options_avx2_fp32.json"),
    "eval-malloc-avx2": eval_malloc_table,
    "serve-load": serve_load_table,
    "onnx-consumers": onnx_consumers_table,
    "runtimes": runtimes_table,
    "runtime-accuracy": runtime_accuracy_table,
    "pick-quick": pick_quick_table,
}
