"""``mobilenets train | eval | predict | demo``: thin wrappers over train.py and predict.py."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import MobilenetsError


def add_commands(sub: argparse._SubParsersAction) -> None:
    from ..cli.main import add_model_options, add_reuse_memory_option
    from ..training.trainer import RECIPES

    p = sub.add_parser("train", help="train a model on Fashion-MNIST, MNIST, CIFAR or an image folder")
    p.add_argument("--model", help="model name (default mobilenet_v3_small; with --init, the checkpoint's)")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, mnist, or a directory (IDX files, CIFAR pickles, image folder)")
    p.add_argument("--out", default="runs/train", help="run directory (checkpoints, metrics, plots)")
    p.add_argument("--recipe", default="small-images", choices=sorted(RECIPES),
                   help="defaults for everything not given (README: Training recipes)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--optimizer", choices=("sgd", "rmsprop", "adamw"))
    p.add_argument("--schedule", choices=("cosine", "step"))
    p.add_argument("--warmup", type=float, help="warm-up epochs")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--ema", type=float, help="EMA decay of the weights (e.g. 0.999); 0 disables")
    p.add_argument("--weight-decay", type=float, help="on conv/linear weights (not BN, not biases)")
    p.add_argument("--erasing", type=float, help="random-erasing probability")
    p.add_argument("--no-aug-epochs", type=int,
                   help="train the last N epochs without crops or erasing (flips kept)")
    p.add_argument("--image-size", type=int,
                   help="input size in px (default: the data's, photos capped at 224); in-memory data "
                        "(IDX, CIFAR, small-image folders) is resized once, up front")
    p.add_argument("--val-fraction", type=float, help="hold out this fraction of train for validation")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for image folders")
    p.add_argument("--strict", action="store_true",
                   help="image folders: stop at unreadable image files instead of skipping them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: on a CPU with native bf16, whichever of bf16 autocast and fp32 trains "
                        "this model faster (timed at the start); fp32 on other CPUs")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    add_reuse_memory_option(p, "CPU training steps up to 40 %% faster")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (a minute or two of compiling first; "
                        "no faster on the CPUs measured, README: Results)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (model and options come from it)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning of --init for int8 export (README: Deployment)")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch (smoke tests)")
    p.add_argument("--stop-after-epoch", type=int, help="stop resumably after this epoch")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when present, else the CPU")
    p.add_argument("--accum-steps", type=int, default=1,
                   help="gradient accumulation: micro-batches per optimizer step")
    d = p.add_argument_group("distributed (PyTorch DDP launched with torchrun)")
    d.add_argument("--nproc-per-node", type=int, help="processes on this machine (one per GPU)")
    d.add_argument("--nnodes", help="number of machines (torchrun --nnodes, e.g. 2 or 1:4)")
    d.add_argument("--node-rank", type=int, help="this machine's rank (static rendezvous)")
    d.add_argument("--rdzv-endpoint", help="host:port of the rendezvous (multi-machine)")
    d.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    add_model_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a checkpoint")
    p.add_argument("checkpoint", help="a .safetensors checkpoint, a run directory, or an exported "
                                      ".onnx/.pt/.pt2 file (int8 included)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--out", help="directory for confusion.png (default: next to the checkpoint)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the logits of each image and its "
                        "horizontal mirror (for models trained with flips; twice the time)")
    p.add_argument("--strict", action="store_true",
                   help="image folders: stop at unreadable image files instead of skipping them")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: score the model with bf16 weights and activations (the network "
                        "`bench --backends compile-bf16` times, uncompiled) to see what bf16 "
                        "costs in accuracy")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_reuse_memory_option(p, "scoring Fashion-MNIST's test set 1.7-2.1x faster measured")
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="classify images with a checkpoint or an exported model")
    p.add_argument("checkpoint", help="a .safetensors checkpoint, a run directory (its best "
                                      "checkpoint) or an exported .onnx/.pt/.pt2 file")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="auto: onnxruntime for .onnx files, PyTorch otherwise")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_reuse_memory_option(p, "which pays when classifying many images")
    p.set_defaults(func=_predict)

    p = sub.add_parser("demo", help="the main job: train MobileNetV3-Small on Fashion-MNIST, evaluate, predict")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    p.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's, 256)")
    p.set_defaults(func=_demo)


#: The demo's schedule: 6-10 minutes on 2 CPU cores for ~91% test top-1 (README: Results).
DEMO_EPOCHS = 3


def _config_from_args(args: argparse.Namespace):
    from ..cli.main import model_kwargs_from_args
    from ..training.trainer import TrainConfig

    keys = ("epochs", "batch_size", "lr", "optimizer", "schedule", "warmup", "label_smoothing",
            "ema", "weight_decay", "erasing", "no_aug_epochs", "image_size", "val_fraction", "max_steps",
            "stop_after_epoch")
    given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    given.update(device=args.device, accum_steps=args.accum_steps, sync_bn=args.sync_bn)
    return TrainConfig(model=args.model, model_kwargs=model_kwargs_from_args(args), data=args.data,
                       out=args.out, recipe=args.recipe, workers=args.workers, seed=args.seed,
                       precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                       reuse_memory=args.reuse_memory,
                       resume=args.resume, strict=args.strict, init=args.init, qat=args.qat, **given)


_LAUNCHER_FLAGS = {"--nproc-per-node": True, "--nnodes": True, "--node-rank": True, "--rdzv-endpoint": True}


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this very command under torchrun with ``--nproc-per-node`` processes."""
    from torch.distributed.run import main as torchrun

    from ..training.trainer import preflight

    if args.nproc_per_node < 1:
        raise MobilenetsError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    preflight(_config_from_args(args))
    rest, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in _LAUNCHER_FLAGS:
            skip = "=" not in a
            continue
        rest.append(a)
    launch = ["--nproc-per-node", str(args.nproc_per_node)]
    if args.nnodes:
        launch += ["--nnodes", str(args.nnodes)]
        if args.rdzv_endpoint:
            launch += ["--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", "mobilenets"]
        if args.node_rank is not None:
            launch += ["--node-rank", str(args.node_rank)]
    else:
        launch += ["--standalone"]
    try:
        torchrun(launch + ["-m", "mobilenets", *rest])
    except Exception as e:  # noqa: BLE001 - torchrun raises ChildFailedError with the worker's log
        raise MobilenetsError("distributed training failed: a worker stopped with an error (printed "
                              "above) and torchrun ended the others; the last good checkpoint in "
                              f"{args.out} is intact") from e
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..training.trainer import TrainingInterrupted, train

    if args.nproc_per_node is not None and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args)
    try:
        result = train(_config_from_args(args))
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {result.epochs_done} epochs in {result.seconds / 60:.1f} min; final top-1 "
              f"{result.final_acc:.4f}, best {result.best_acc:.4f}; checkpoints in {result.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..io.checkpoint import load_model
    from ..data.datasets import load_dataset
    from ..deploy.export import EXTENSIONS, bf16_inference, load_artifact
    from ..training.trainer import evaluate
    from ..cli.main import reuse_memory

    reuse_memory(args)

    if Path(args.checkpoint).suffix in EXTENSIONS.values():  # an export scores as it will serve
        if args.precision != "fp32":
            raise MobilenetsError(f"--precision {args.precision} applies to checkpoints; an exported "
                                  "file is scored as it was exported")
        artifact = load_artifact(args.checkpoint)
        model, meta = artifact.as_module(), artifact.meta
        precision = "int8" if meta.get("int8") else "fp32"  # what the file computes in
    else:
        model, meta = load_model(args.checkpoint)
        precision = args.precision
    pre = meta.get("preprocessing")
    if not isinstance(pre, dict):
        raise MobilenetsError(f"{args.checkpoint} has no preprocessing metadata; was it made by "
                              "`mobilenets train`?")
    # Converted checkpoints store no channel count: their model's input channels decide.
    pre = {**pre, "channels": pre.get("channels", meta.get("model_kwargs", {}).get("in_chans", 3))}
    if "input_size" not in pre or "mean" not in pre or "std" not in pre:
        raise MobilenetsError(f"{args.checkpoint}: preprocessing metadata lacks input_size, mean or std")
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else None
    # The images are prepared as `predict` prepares them (size, channels, centre crop, no
    # augmentation), labelled by the checkpoint's classes, and a folder without train/ and
    # val/ is split as it was for training (seed and fraction stored in the checkpoint).
    ds = load_dataset(args.data, args.split, image_size=pre["input_size"], channels=pre["channels"],
                      classes=classes, strict=args.strict, augment=False, holdout=meta.get("holdout"))
    if getattr(model, "num_classes", len(ds.classes)) != len(ds.classes):  # e.g. converted weights
        raise MobilenetsError(f"{args.checkpoint} predicts {model.num_classes} classes, {args.data} "
                              f"has {len(ds.classes)}; evaluate on a dataset with the model's classes")
    if pre["channels"] != ds.channels:
        raise MobilenetsError(f"{args.checkpoint} expects {pre['channels']}-channel images, "
                              f"{args.data} has {ds.channels}")
    if args.batch_size < 1:
        raise MobilenetsError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out:  # asked for explicitly: a bad directory is an error, found before the work
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MobilenetsError(f"cannot write to {args.out}: {e.strerror or e}; choose a writable "
                                  "output directory") from e
    if args.precision == "bf16":
        model = bf16_inference(model)
    res = evaluate(model, ds, pre, batch_size=args.batch_size, tta=args.tta)
    ckpt = Path(args.checkpoint)
    out_dir = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent)
    try:  # the metrics matter more than the picture: a plot that cannot be written only warns
        png: Path | None = plot_confusion(res.confusion, res.classes, out_dir / "confusion.png")
    except MobilenetsError as e:
        if args.out:
            raise
        png = None
        print(f"warning: confusion matrix plot not written: {e} (--out)", file=sys.stderr)
    if args.json:
        print(json.dumps(_finite({**res.as_dict(), "checkpoint": str(args.checkpoint), "tta": args.tta,
                                  "precision": precision,
                                  "confusion_png": str(png) if png else None}), allow_nan=False))
        return 0
    tta = ", flip test-time augmentation" if args.tta else ""
    bf16 = ", bf16 weights and activations" if args.precision == "bf16" else ""
    print(f"{args.checkpoint} on {args.data} ({args.split}, {res.count} images{tta}{bf16})")
    print(f"top-1 {res.top1:.4f}   top-5 {res.top5:.4f}   loss {res.loss:.4f}\n")
    width = max(len(c) for c in res.classes)
    print(f"{'class':{width}s}  accuracy")
    for c, a in zip(res.classes, res.per_class):
        print(f"{c:{width}s}  {'-  (no images)' if a is None else f'{a:.4f}'}")
    if len(res.classes) <= MAX_TEXT_CONFUSION:
        print("\nconfusion matrix (rows: true class, columns: predicted)")
        print(format_confusion(res.confusion, res.classes))
    else:  # a 100×100 table is 50 KB of text nobody reads in a terminal
        print(f"\nconfusion matrix: {len(res.classes)}×{len(res.classes)}, in the plot and in --json")
    if png:
        print(f"\nconfusion matrix plot: {png}")
    return 0


def _finite(value: Any) -> Any:
    """NaN/inf as ``null``: JSON has no such numbers, and strict parsers reject Python's."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


#: Above this many classes, `eval` leaves the confusion matrix out of its text output.
MAX_TEXT_CONFUSION = 20


def format_confusion(confusion: list[list[int]], classes: list[str]) -> str:
    k = len(classes)
    cell = max(5, max(len(str(v)) for row in confusion for v in row) + 1)
    label = max(len(c) for c in classes)
    head = " " * (label + 1) + "".join(f"{i:>{cell}d}" for i in range(k))
    rows = [f"{c:>{label}s} " + "".join(f"{v:>{cell}d}" for v in row) for c, row in zip(classes, confusion)]
    legend = "columns: " + ", ".join(f"{i}={c}" for i, c in enumerate(classes))
    return "\n".join([head, *rows, legend])


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..io.checkpoint import atomic_write_bytes

    m = np.asarray(confusion, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = min(max(4.0, 0.5 * len(classes) + 2), 40.0)  # 1000 classes must not make a 6 GB image
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _predict(args: argparse.Namespace) -> int:
    from ..io.checkpoint import load_model
    from ..deploy.predict import predict_files
    from ..cli.main import reuse_memory

    reuse_memory(args)

    if args.top_k < 1:
        raise MobilenetsError(f"--top-k must be >= 1, got {args.top_k}")
    for p in args.images:
        if Path(p).is_dir():
            raise MobilenetsError(f"{p} is a directory; give image files (e.g. {p}/*.png)")
        if not Path(p).is_file():
            raise MobilenetsError(f"image not found: {p}")
    # A run directory means its checkpoint (best, then model, then last), as for eval.
    suffix = ".safetensors" if Path(args.checkpoint).is_dir() else Path(args.checkpoint).suffix
    backend = args.backend if args.backend != "auto" else ("onnxruntime" if suffix == ".onnx" else "torch")
    if (backend == "onnxruntime") != (suffix == ".onnx"):
        raise MobilenetsError(f"--backend {backend} cannot run {args.checkpoint}: onnxruntime runs .onnx "
                              "files (make one with `mobilenets export CHECKPOINT --format onnx`), "
                              "torch runs .safetensors, .pt and .pt2 files")
    if suffix == ".safetensors":
        model, meta = load_model(args.checkpoint)
        preds = predict_files(model, meta, args.images, args.top_k)
    else:
        from ..deploy.export import load_artifact
        from ..deploy.predict import predict_with

        artifact = load_artifact(args.checkpoint)
        preds = predict_with(artifact.as_module(), artifact.meta, args.images, args.top_k)
    if args.json:
        print(json.dumps([p.as_dict() for p in preds]))
        return 0
    for p in preds:
        print(f"{p.path}: " + ", ".join(f"{c} {prob:.3f}" for c, prob in p.top))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Train, evaluate on the 10,000 test images, predict a few of them."""
    from PIL import Image

    from ..io.checkpoint import load_model
    from ..data.datasets import load_dataset
    from ..deploy.predict import predict_files
    from ..training.trainer import TrainConfig, TrainingInterrupted, evaluate, train

    out = Path(args.out)
    cfg = TrainConfig(model="mobilenet_v3_small", data=args.data, out=str(out), recipe="small-images",
                      epochs=args.epochs, batch_size=args.batch_size)
    try:
        result = train(cfg)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    model, meta = load_model(out / "best.safetensors")
    test = load_dataset(args.data, "test")
    res = evaluate(model, test, meta["preprocessing"])
    png = plot_confusion(res.confusion, res.classes, out / "confusion.png")
    print(f"\nMobileNetV3-Small (small-input stem) on {args.data}: test top-1 {res.top1:.4f} "
          f"({res.count} images), top-5 {res.top5:.4f}; trained {result.epochs_done} epochs in "
          f"{result.seconds / 60:.1f} min")
    print(f"checkpoint: {out / 'best.safetensors'}\ncurves: {out / 'curves.png'}\nconfusion: {png}")
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    paths = []
    for i in sorted({round(j * (len(test) - 1) / 5) for j in range(6)}):  # 6 spread-out images
        img, label = test[i]
        path = samples / f"test{i:05d}_{test.classes[label].replace('/', '-').replace(' ', '_')}.png"
        Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    print("\npredictions (file name = true class):")
    for p in predict_files(model, meta, paths, top_k=2):
        print(f"  {Path(p.path).name}: " + ", ".join(f"{c} {prob:.2f}" for c, prob in p.top))
    return 0
