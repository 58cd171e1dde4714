"""``mobilenets train | eval | predict | demo``: thin handlers over :mod:`mobilenets.training`
and :mod:`mobilenets.deploy.predict`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from PIL import Image
from torch import nn

from ..data.datasets import load_dataset
from ..deploy.export import bf16_inference
from ..deploy.predict import predict_files
from ..errors import MobilenetsError
from ..io.artifact import Artifact, artifact_kind, check_runner, load
from ..io.checkpoint import load_model
from ..training import EvalResult, TrainConfig, TrainingInterrupted, evaluate, preflight, train
from .confusion import MAX_TEXT_CONFUSION, format_confusion, plot_confusion
from . import torchrun, weights
from .options import model_kwargs_from_args, reuse_memory
from .text import printable

#: ``train`` options whose ``None`` means "the recipe's value".
_RECIPE_OVERRIDES = ("epochs", "batch_size", "lr", "optimizer", "schedule", "warmup", "label_smoothing",
                     "ema", "weight_decay", "erasing", "no_aug_epochs", "image_size", "val_fraction",
                     "max_steps", "stop_after_epoch", "freeze", "head_epochs", "head_lr", "layer_decay")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run ``train`` asks for; options left out stay ``None`` so the recipe fills them."""
    given = {k: getattr(args, k) for k in _RECIPE_OVERRIDES if getattr(args, k) is not None}
    given.update(device=args.device, accum_steps=args.accum_steps, sync_bn=args.sync_bn)
    return TrainConfig(model=args.model, model_kwargs=model_kwargs_from_args(args), data=args.data,
                       out=args.out, recipe=args.recipe, workers=args.workers, seed=args.seed,
                       precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                       reuse_memory=args.reuse_memory,
                       resume=args.resume, strict=args.strict, init=args.init, qat=args.qat,
                       linear_probe=args.linear_probe, precise_bn=args.precise_bn, **given)


#: ``train`` flags that torchrun consumes; the workers must not see them (they would launch again).
_LAUNCHER_FLAGS = frozenset({"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint"})


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line without the launcher's flags (and their values), for each worker."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in _LAUNCHER_FLAGS:
            skip = "=" not in a
            continue
        rest.append(a)
    return rest


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this very command under torchrun with ``--nproc-per-node`` processes."""
    if args.nproc_per_node < 1:
        raise MobilenetsError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    preflight(_config_from_args(args))
    launch = ["--nproc-per-node", str(args.nproc_per_node)]
    if args.nnodes:
        launch += ["--nnodes", str(args.nnodes)]
        if args.rdzv_endpoint:
            launch += ["--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", "mobilenets"]
        if args.node_rank is not None:
            launch += ["--node-rank", str(args.node_rank)]
    else:
        launch += ["--standalone"]
    torchrun.launch(launch + ["-m", "mobilenets", *_worker_argv(args.argv)], args.out)
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Train (or, with ``--nproc-per-node``, launch the workers that train)."""
    if args.pretrained:
        args.init = _pretrained_init(args)
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


def _pretrained_init(args: argparse.Namespace) -> str:
    """``train --pretrained TAG``: the published weights, converted once into a checkpoint in
    the weights cache, become the ``--init`` checkpoint, so they take the same path (a new
    classifier for other classes, the stem adapted to other channels, strict elsewhere)."""
    if args.init or args.resume:
        raise MobilenetsError(f"--pretrained {args.pretrained} starts a new run from published weights; "
                              f"it does not combine with {'--init' if args.init else '--resume'}")
    from ..io.download import cache_dir
    from ..io.checkpoint import save_model

    model, meta = weights.pretrained_checkpoint(args.pretrained)
    path = cache_dir() / "converted" / f"{args.pretrained.replace('/', '_')}.safetensors"
    if not path.is_file() and os.environ.get("RANK", "0") == "0":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, path, preprocessing=meta["preprocessing"], classes=meta["classes"],
                   pretrained=meta["pretrained"])
    return str(path)


def _load_scored(args: argparse.Namespace) -> tuple[Artifact, str]:
    """What ``eval`` scores (a checkpoint, an export, pretrained weights) and the precision it
    computes in; an export scores as it will serve."""
    if args.pretrained or args.checkpoint is None:
        model, meta = _pretrained(args, args.data)
        return Artifact.from_model(model, meta, args.pretrained), args.precision
    if args.precision != "fp32" and artifact_kind(args.checkpoint) != "checkpoint":  # before loading
        raise MobilenetsError(f"--precision {args.precision} applies to checkpoints; an exported "
                              "file is scored as it was exported")
    artifact = load(args.checkpoint, trust_code=args.trust_code)
    if artifact.format == "checkpoint":
        return artifact, args.precision
    return artifact, "int8" if artifact.int8 else "fp32"


def _eval_dataset(args: argparse.Namespace, artifact: Artifact) -> Any:
    """The images prepared as ``predict`` prepares them (size, channels, centre crop, no
    augmentation), labelled by the checkpoint's classes; a folder without train/ and val/ is
    split as it was for training (seed and fraction stored in the checkpoint)."""
    pre = artifact.preprocessing
    ds = load_dataset(args.data, args.split, image_size=pre.input_size, channels=pre.channels,
                      classes=artifact.classes, strict=args.strict, augment=False,
                      holdout=artifact.meta.get("holdout"), crop_fraction=pre.crop_fraction,
                      interpolation=pre.interpolation)
    outputs = getattr(artifact.model, "num_classes", len(ds.classes))
    if outputs != len(ds.classes):  # e.g. converted weights
        raise MobilenetsError(f"{args.checkpoint} predicts {outputs} classes, {args.data} "
                              f"has {len(ds.classes)}; evaluate on a dataset with the model's classes")
    if pre.channels != ds.channels:
        raise MobilenetsError(f"{args.checkpoint} expects {pre.channels}-channel images, "
                              f"{args.data} has {ds.channels}")
    return ds


def _check_eval_options(args: argparse.Namespace) -> None:
    """Checked before scoring, so a typo costs no minutes of evaluation."""
    if args.batch_size < 1:
        raise MobilenetsError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out:  # asked for explicitly: a bad directory is an error, found before the work
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MobilenetsError(f"cannot write to {args.out}: {e.strerror or e}; choose a writable "
                                  "output directory") from e


def _plot_eval(args: argparse.Namespace, res: EvalResult) -> Path | None:
    """The confusion plot in ``--out`` (else beside the checkpoint); the metrics matter more
    than the picture, so a plot that cannot be written beside the checkpoint only warns."""
    ckpt = Path(args.checkpoint)
    out_dir = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent)
    try:
        return plot_confusion(res.confusion, res.classes, out_dir / "confusion.png")
    except MobilenetsError as e:
        if args.out:
            raise
        print(f"warning: confusion matrix plot not written: {e} (--out)", file=sys.stderr)
        return None


def _print_eval(args: argparse.Namespace, res: EvalResult, png: Path | None) -> None:
    """Top-1/top-5, per-class accuracy and (up to 20 classes) the confusion matrix as text."""
    tta = ", flip test-time augmentation" if args.tta else ""
    bf16 = ", bf16 weights and activations" if args.precision == "bf16" else ""
    print(f"{args.checkpoint} on {args.data} ({args.split}, {res.count} images{tta}{bf16})")
    print(f"top-1 {res.top1:.4f}   top-5 {res.top5:.4f}   loss {res.loss:.4f}\n")
    classes = [printable(c) for c in res.classes]  # names from an untrusted file or folder
    width = max(len(c) for c in classes)
    print(f"{'class':{width}s}  accuracy")
    for c, a in zip(classes, res.per_class):
        print(f"{c:{width}s}  {'-  (no images)' if a is None else f'{a:.4f}'}")
    if len(classes) <= MAX_TEXT_CONFUSION:
        print("\nconfusion matrix (rows: true class, columns: predicted)")
        print(format_confusion(res.confusion, classes))
    else:  # a 100×100 table is 50 KB of text nobody reads in a terminal
        print(f"\nconfusion matrix: {len(res.classes)}×{len(res.classes)}, in the plot and in --json")
    if png:
        print(f"\nconfusion matrix plot: {png}")


def run_eval(args: argparse.Namespace) -> int:
    """Accuracy, per-class accuracy and confusion matrix of a checkpoint or an export."""
    reuse_memory(args)
    artifact, precision = _load_scored(args)
    ds = _eval_dataset(args, artifact)
    _check_eval_options(args)
    model = artifact.as_module()
    if args.precision == "bf16":
        model = bf16_inference(model)
    res = evaluate(model, ds, artifact.preprocessing, batch_size=args.batch_size, tta=args.tta)
    png = _plot_eval(args, res)
    if args.json:
        print(json.dumps(_finite({**res.as_dict(), "checkpoint": str(args.checkpoint), "tta": args.tta,
                                  "precision": precision,
                                  "confusion_png": str(png) if png else None}), allow_nan=False))
    else:
        _print_eval(args, res, png)
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


def _check_backend(args: argparse.Namespace, kind: str) -> None:
    """``--backend`` against the kind of file ``predict`` runs."""
    check_runner(args.checkpoint, kind, args.backend)


def _pretrained(args: argparse.Namespace, data: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``--pretrained TAG`` (every positional then is an image), or the error for neither."""
    if not args.pretrained:
        raise MobilenetsError("give a checkpoint (or exported model), or --pretrained TAG")
    if args.command == "eval" and args.checkpoint is not None:
        raise MobilenetsError(f"give either {args.checkpoint} or --pretrained {args.pretrained}, not both")
    model, meta = weights.pretrained_checkpoint(args.pretrained, data)
    args.checkpoint = args.pretrained
    return model, meta


def run_predict(args: argparse.Namespace) -> int:
    """The top-k classes of each image."""
    reuse_memory(args)
    if args.pretrained:
        weights.pretrained_inputs(args)
    if args.top_k < 1:
        raise MobilenetsError(f"--top-k must be >= 1, got {args.top_k}")
    for p in args.images:
        if Path(p).is_dir():
            raise MobilenetsError(f"{p} is a directory; give image files (e.g. {p}/*.png)")
        if not Path(p).is_file():
            raise MobilenetsError(f"image not found: {p}")
    if args.pretrained or args.checkpoint is None:
        model, meta = _pretrained(args)
        artifact = Artifact.from_model(model, meta, args.checkpoint)
    else:
        artifact = load(args.checkpoint, trust_code=args.trust_code)
        _check_backend(args, artifact.format)
    preds = artifact.predict(args.images, args.top_k)
    if args.json:
        print(json.dumps(_finite([p.as_dict() for p in preds]), allow_nan=False))  # NaN is not JSON
        return 0
    for p in preds:
        print(f"{printable(p.path)}: " + ", ".join(f"{printable(c)} {prob:.3f}" for c, prob in p.top))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Train, evaluate on the 10,000 test images, predict a few of them."""
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
    paths = _save_samples(test, out / "samples")
    print("\npredictions (file name = true class):")
    for p in predict_files(model, meta, paths, top_k=2):
        print(f"  {Path(p.path).name}: " + ", ".join(f"{printable(c)} {prob:.2f}" for c, prob in p.top))
    return 0


def _save_samples(test: Any, samples: Path) -> list[Path]:
    """Six spread-out test images as PNGs named by their true class, for the demo to predict."""
    samples.mkdir(exist_ok=True)
    paths = []
    for i in sorted({round(j * (len(test) - 1) / 5) for j in range(6)}):
        img, label = test[i]
        path = samples / f"test{i:05d}_{test.classes[label].replace('/', '-').replace(' ', '_')}.png"
        Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths
