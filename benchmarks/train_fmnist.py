"""Fashion-MNIST test accuracy from scratch on this machine's CPU, model by model.

Each model trains with the ``small-images`` recipe (or the options given) for a fixed
number of epochs; after every epoch the full 10,000-image test set is evaluated. Recorded
per model: the test top-1 of the last epoch (the number to quote: no model selection on
the test set), the best epoch, minutes of training (evaluation excluded), the minutes at
which 93% was first reached, parameters and MAdds at 28×28. The last epoch's weights are
then scored again in fp32, with and without flip test-time augmentation (what `mobilenets
eval RUN [--tta]` reports), since training evaluates under its own precision.

Writes ``benchmarks/results/fmnist.json`` (merged with earlier results, keyed by run name)
and prints the README's Markdown tables (``--table`` prints them alone).

    python benchmarks/train_fmnist.py --models mobilenet_v3_small --epochs 10
    python benchmarks/train_fmnist.py --models mobilenet_v2 --epochs 8 --width-mult 0.5
    python benchmarks/train_fmnist.py --rescore     # fp32/TTA scores for runs recorded before
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import time
from pathlib import Path

import torch

import mobilenets
from mobilenets.deploy.bench import machine_info
from mobilenets.io.checkpoint import load_model
from mobilenets.data.datasets import load_dataset
from mobilenets.analysis.profile import profile
from mobilenets.training import TrainConfig, evaluate, train

RESULTS = Path(__file__).parent / "results"


def run_name(name: str, args: argparse.Namespace) -> str:
    """The run's directory under --runs and its key in the JSON. Only the width and epochs
    are in it: runs that differ in other options need their own --tag."""
    return f"{name}" + (f"_w{args.width_mult}" if args.width_mult else "") + f"_e{args.epochs}" + \
        (f"_{args.tag}" if args.tag else "")


def run(name: str, args: argparse.Namespace) -> dict:
    kwargs = {"width_mult": args.width_mult} if args.width_mult else {}
    if args.dropout is not None:
        kwargs["dropout"] = args.dropout
    if args.output_stride is not None:
        kwargs["output_stride"] = args.output_stride
    tag = run_name(name, args)
    cfg = TrainConfig(model=name, model_kwargs=kwargs, data=args.data, out=str(Path(args.runs) / tag),
                      recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      warmup=args.warmup, ema=args.ema, weight_decay=args.weight_decay,
                      erasing=args.erasing, label_smoothing=args.label_smoothing,
                      no_aug_epochs=args.no_aug_epochs, precision=args.precision, seed=args.seed, progress=False)
    t0 = time.time()
    result = train(cfg)
    hist = result.history
    train_minutes = [sum(h["train_seconds"] for h in hist[:i + 1]) / 60 for i in range(len(hist))]
    accs = [max(h["val_acc"], h.get("ema_val_acc") or 0) for h in hist]
    reach93 = next((m for m, a in zip(train_minutes, accs) if a >= 0.93), None)
    wall_minutes = (time.time() - t0) / 60
    model = mobilenets.create_model(name, num_classes=10, in_chans=1, small_input=True, **kwargs)
    prof = profile(model, 28)
    return {"run": tag, "model": name, "model_kwargs": kwargs, "recipe": args.recipe,
            "epochs": args.epochs, "warmup_epochs": args.warmup, "weight_decay": args.weight_decay,
            "erasing": args.erasing, "label_smoothing": args.label_smoothing, "lr": args.lr,
            "batch_size": args.batch_size, "ema": args.ema, "seed": args.seed,
            "no_aug_epochs": args.no_aug_epochs, **({"group": args.group} if args.group else {}),
            "final_top1": accs[-1], **rescore(result.run_dir, load_dataset(args.data, "val")), "best_top1": max(accs),
            "best_epoch": accs.index(max(accs)) + 1, "train_minutes": train_minutes[-1],
            "wall_minutes": wall_minutes, "minutes_to_93": reach93,
            "per_epoch_top1": accs, "params": prof.params, "madds_28px": prof.madds,
            "images_per_sec": sum(h["images_per_sec"] for h in hist) / len(hist),
            "precision": result.precision, "threads": torch.get_num_threads(), "machine": machine_info()}


def rescore(run_dir: Path, test) -> dict[str, float]:
    """The last epoch's weights scored on ``test`` in fp32, without and with flip TTA, as
    `mobilenets eval RUN/last.safetensors [--tta]` scores them."""
    model, meta = load_model(run_dir / "last.safetensors")
    return {key: evaluate(model, test, meta["preprocessing"], tta=tta).top1
            for key, tta in (("fp32_top1", False), ("tta_top1", True))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v3_small")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width-mult", type=float)
    p.add_argument("--dropout", type=float,
                   help="before the classifier (default: the model's, 0.2 for V3)")
    p.add_argument("--output-stride", type=int,
                   help="total downsampling (default 8, the small-input stem's; 4 keeps the last "
                        "stage at 7×7 instead of 4×4)")
    p.add_argument("--recipe", default="small-images")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=float, help="warm-up epochs (recipe default 1; use less for 1-3 epoch runs)")
    p.add_argument("--ema", type=float)
    p.add_argument("--weight-decay", type=float, help="on conv/linear weights (default: the recipe's)")
    p.add_argument("--erasing", type=float, help="random-erasing probability (default: the recipe's)")
    p.add_argument("--label-smoothing", type=float, help="default: the recipe's")
    p.add_argument("--no-aug-epochs", type=int, default=0,
                   help="the last N epochs without crops or erasing (flips kept)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--runs", default="runs/bench-fmnist")
    p.add_argument("--tag", default="")
    p.add_argument("--group", help="print this run in its own table with the runs of the same group "
                                   "(e.g. models compared at an equal training time)")
    p.add_argument("--out", default=str(RESULTS / "fmnist.json"))
    p.add_argument("--table", action="store_true", help="train nothing: print the tables of --out")
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: add the fp32 and TTA scores to recorded runs whose "
                        "last.safetensors is still under --runs")
    args = p.parse_args()

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.rescore:
        test = load_dataset(args.data, "val")
        for row in results.values():
            if (Path(args.runs) / row["run"] / "last.safetensors").is_file():
                row.update(rescore(Path(args.runs) / row["run"], test))
                print(f"{row['run']}: fp32 {row['fp32_top1']:.4f}, flip TTA {row['tta_top1']:.4f}")
        out.write_text(json.dumps(results, indent=2))
    elif not args.table:
        # A recorded run is an hour of training: never replace it by accident.
        taken = [run_name(name, args) for name in args.models.split(",") if run_name(name, args) in results]
        if taken:
            raise SystemExit(f"error: {', '.join(taken)} already recorded in {out}; give this "
                             "run its own --tag (or delete the row to measure it again)")
        for name in args.models.split(","):
            row = run(name, args)
            results[row["run"]] = row
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
    print_table(results)


@functools.cache
def _doc_tables():
    """``tools/doc_tables.py`` (standard library only), loaded once."""
    spec = importlib.util.spec_from_file_location("doc_tables", Path(__file__).parents[1] / "tools" / "doc_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(row: dict) -> str:
    """The command-line options that reproduce a recorded run (``--models`` first): one
    definition, in ``tools/doc_tables.py``, which the docs use too."""
    return _doc_tables().fmnist_options(row)


def print_table(results: dict[str, dict]) -> None:
    """The README's tables, each sorted by test top-1: the goal's setting (2 threads, in the
    precision ``auto`` chose: bf16 on the Zen 4 machine, whose runs predate the ``machine``
    record), the goal's setting on each other CPU recorded (``machine``),
    then one table per ``--group``, then the older one-thread fp32 model-against-model runs
    (recorded before the fp32 and TTA scores were, so without those columns)."""
    tables: dict[str, list[dict]] = {"goal": []}
    for r in results.values():
        goal = "goal" if "machine" not in r else f"machine {r['machine']['cpu']}"
        key = f"group {r['group']}" if "group" in r else (goal if r["threads"] == 2 else "older")
        tables.setdefault(key, []).append(r)
    tables["older"] = tables.pop("older", [])  # last
    for key, rows in tables.items():
        if not rows:
            continue
        extra = key != "older"
        print("| `python benchmarks/train_fmnist.py ...` | params | MAdds @28 | test top-1 |"
              + (" fp32 | flip TTA |" if extra else "") + " train min | min to 93 % | images/s |")
        print("|---|" + "---:|" * (8 if extra else 6))
        for r in sorted(rows, key=lambda r: -r["final_top1"]):
            epoch93 = next((i + 1 for i, a in enumerate(r["per_epoch_top1"]) if a >= 0.93), None)
            t93 = f"{r['minutes_to_93']:.1f} (epoch {epoch93})" if r["minutes_to_93"] is not None else "–"
            scores = "".join(f" {r[k] * 100:.2f} % |" if k in r else " – |" for k in ("fp32_top1", "tta_top1"))
            print(f"| `{options(r)}` | {r['params']:,} | "
                  f"{r['madds_28px'] / 1e6:.1f} M | {r['final_top1'] * 100:.2f} % |" + (scores if extra else "")
                  + f" {r['train_minutes']:.1f} | {t93} | {r['images_per_sec']:.0f} |")
        print()


if __name__ == "__main__":
    main()
