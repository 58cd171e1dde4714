"""The whole ``mobilenets`` argument tree, one function per command group.

Only flags, defaults and help live here; :data:`mobilenets.cli.main.COMMANDS` maps each
command to its handler.
"""

from __future__ import annotations

import argparse

from ..analysis.paper import TOPICS
from ..deploy.bench import BACKENDS, DEFAULT_BACKENDS
from ..deploy.export import FORMATS
from ..io.artifact import EXTENSIONS, RUNNERS
from ..training.recipes import RECIPES
from .arguments import Parser
from .options import add_model_options, add_reuse_memory_option

#: The demo's schedule: 6-10 minutes on 2 CPU cores for ~91% test top-1 (README: Results).
DEMO_EPOCHS = 3

_Commands = argparse._SubParsersAction


def build_parser() -> argparse.ArgumentParser:
    """The ``mobilenets`` parser; ``args.command`` names the chosen sub-command."""
    parser = Parser(
        prog="mobilenets",
        description="MobileNet V1/V2/V3: build, profile, convert, train, evaluate, predict.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--verbose", action="store_true",
                        help="show what third-party libraries log (torch's loading warnings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_model_commands(sub)
    _add_weights(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_demo(sub)
    _add_paper(sub)
    _add_export(sub)
    _add_bench(sub)
    _add_pick(sub)
    _add_serve(sub)
    return parser


def _add_model_commands(sub: _Commands) -> None:
    """``models``, ``summary`` and ``convert``: networks without data."""
    p = sub.add_parser("models", help="every model with parameters and MAdds")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("summary", help="per-layer table of one model (shapes, params, MAdds)")
    p.add_argument("name")
    p.add_argument("--resolution", type=int, default=224)
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("convert", help="convert torchvision/timm/Keras weights to a mobilenets checkpoint")
    p.add_argument("file", help="weights file (.pth, .safetensors, Keras .h5)")
    p.add_argument("--from", dest="source", required=True, choices=("torchvision", "timm", "keras"))
    p.add_argument("--model", required=True,
                   help="our model name or the source's (mobilenetv3_small_075, MobileNetV3Small)")
    p.add_argument("--minimalistic", action="store_true", help="Keras minimalistic variant")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    add_model_options(p)


def _add_weights(sub: _Commands) -> None:
    p = sub.add_parser("weights", help="published ImageNet weights our models load (tag, source, "
                                       "top-1, URL, hash, preprocessing)")
    p.add_argument("model", nargs="?", help="only this model's weights")
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    """What else names the model of eval and predict, beside their checkpoint argument."""
    _add_pretrained(p)
    p.add_argument("--trust-code", action="store_true",
                   help="load a TorchScript .pt file, which is a program: only one you trust")


def _add_pretrained(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", metavar="TAG",
                   help="published weights instead of a checkpoint: a tag from `mobilenets weights` "
                        "or a model name (its default weights); downloaded once, then cached")


def _add_train(sub: _Commands) -> None:
    p = sub.add_parser("train", help="train a model on Fashion-MNIST, MNIST, CIFAR or an image folder")
    p.add_argument("--model", help="model name (default mobilenet_v3_small; with --init, the checkpoint's)")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, mnist, or a directory (IDX files, CIFAR pickles, image folder)")
    p.add_argument("--out", default="runs/train", help="run directory (checkpoints, metrics, plots)")
    p.add_argument("--recipe", default="small-images", choices=sorted(RECIPES),
                   help="defaults for everything not given (README: Training recipes)")
    _add_recipe_overrides(p)
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
    p.add_argument("--pretrained", metavar="TAG",
                   help="start from published ImageNet weights (a tag from `mobilenets weights`, or a "
                        "model name for its default weights), as --init does from a checkpoint")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (model and options come from it; a new "
                        "classifier for other classes, the stem adapted to other channels)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning of --init for int8 export (README: Deployment)")
    t = p.add_argument_group("transfer learning (docs/training.md: Transfer learning)")
    t.add_argument("--freeze", metavar="backbone|stages:N|none",
                   help="keep these layers frozen: no gradient, BatchNorm statistics unchanged (default none)")
    t.add_argument("--linear-probe", action="store_true", help="train the classifier alone")
    t.add_argument("--head-epochs", type=int,
                   help="train the head alone for the first N epochs (--recipe finetune: 2)")
    t.add_argument("--head-lr", type=float, help="learning rate while the head trains alone (default --lr)")
    t.add_argument("--layer-decay", type=float, metavar="F",
                   help="layer-wise learning-rate decay: each stage below the head gets F times the next's")
    t.add_argument("--no-precise-bn", dest="precise_bn", action="store_false",
                   help="keep the running BatchNorm statistics instead of recomputing them with the "
                        "current weights before each validation and save")
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


def _add_recipe_overrides(p: argparse.ArgumentParser) -> None:
    """``train`` options whose default (``None``) means "the recipe's"."""
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


def _add_eval(sub: _Commands) -> None:
    p = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a checkpoint")
    p.add_argument("checkpoint", nargs="?", help="a .safetensors checkpoint, a run directory, or an "
                                                 "exported model file (int8 included)")
    _add_model_source(p)
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


def _add_predict(sub: _Commands) -> None:
    p = sub.add_parser("predict", help="classify images with a checkpoint or an exported model")
    p.add_argument("checkpoint", nargs="?", help="a .safetensors checkpoint, a run directory (its "
                                                 "best checkpoint) or an exported .onnx/.pt/.pt2 file")
    _add_model_source(p)
    p.add_argument("--backend", choices=RUNNERS, default="auto",
                   help="auto: the file's own (onnxruntime for .onnx, OpenVINO for .xml, ExecuTorch "
                        "for .pte, LiteRT for .tflite, PyTorch otherwise); another is an error")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_reuse_memory_option(p, "which pays when classifying many images")


def _add_demo(sub: _Commands) -> None:
    p = sub.add_parser("demo", help="the main job: train MobileNetV3-Small on Fashion-MNIST, evaluate, predict")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    p.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's, 256)")


def _add_paper(sub: _Commands) -> None:
    p = sub.add_parser(
        "paper", help="reproduce the papers' tables and figures from the real networks",
        description="Recompute the MobileNet papers' tables and analyses on this project's "
                    "networks, beside the published figures. Topics: "
                    f"{', '.join(TOPICS)}; without one, all but ablation (which trains).")
    p.add_argument("topic", nargs="?", help="one topic (default: all but ablation)")
    p.add_argument("--out", default="runs/paper", help="directory for JSON and PNG files")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    g = p.add_argument_group("cost options (standard vs depthwise-separable layer)")
    g.add_argument("--dk", type=int, default=3, help="kernel size D_K")
    g.add_argument("--m", type=int, default=512, help="input channels M")
    g.add_argument("--n", type=int, default=512, help="output channels N")
    g.add_argument("--df", type=int, default=14, help="feature map size D_F")
    g = p.add_argument_group("ablation options (trains two V2 networks)")
    g.add_argument("--data", default="fashion-mnist", help="dataset name or IDX directory")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")


def _add_export(sub: _Commands) -> None:
    p = sub.add_parser("export", help="export a checkpoint (ONNX, TorchScript, pt2, OpenVINO, "
                                      "ExecuTorch, LiteRT; optional int8), checked against PyTorch",
                       description="BatchNorm is folded and dropout removed; the batch size "
                                   "stays dynamic. The file is reloaded in its runtime and "
                                   "compared with the PyTorch model; a mismatch is an error.")
    p.add_argument("checkpoint", help="a mobilenets .safetensors checkpoint (or its run directory)")
    p.add_argument("--format", default="onnx", help=f"{' | '.join(FORMATS)} (default onnx)")
    p.add_argument("-o", "--output", help="output file (default: next to the checkpoint, "
                                          f"{' / '.join(EXTENSIONS[f] for f in FORMATS)}, "
                                          "with .int8 before the suffix for int8)")
    p.add_argument("--int8", action="store_true",
                   help="post-training static int8 quantization with the format's own "
                        "quantizer (onnxruntime, NNCF, ...: docs/deployment.md)")
    p.add_argument("--calibration-data", metavar="PATH",
                   help="dataset name or directory whose training images (or a flat folder of images) calibrate int8 "
                        "(and serve as parity inputs)")
    p.add_argument("--calibration-size", type=int, default=256, metavar="N",
                   help="calibration images drawn from the training split (default 256)")
    p.add_argument("--tolerance", type=float,
                   help="largest allowed max|Δ| / max|logit| (default 1e-4 float, 0.25 int8)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="int8 weights in 7 bits, which onnxruntime needs on x86 CPUs without "
                        "VNNI to avoid int16 saturation (default: on exactly when this machine "
                        "is such a CPU)")


def _add_bench(sub: _Commands) -> None:
    p = sub.add_parser("bench", help="latency, throughput and fraction of peak per backend",
                       description="Times the model per backend and batch size on this "
                                   "machine (median and p90 of single calls) and compares "
                                   "its MAdds per second with a measured fp32 matmul peak.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                   help="a model name (random weights) or a checkpoint file")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--resolution", type=int,
                   help="input side (default: the checkpoint's input size, else 224)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated, from {', '.join(BACKENDS)} "
                        f"(default {','.join(DEFAULT_BACKENDS)})")
    p.add_argument("--seconds", type=float, default=1.5,
                   help="timed seconds per backend and batch size (default 1.5)")
    p.add_argument("--calibration-data", metavar="PATH",
                   help="with a checkpoint: real images (dataset name or folder) on which int8 "
                        "backends calibrate (half) and measure top-1 agreement with float "
                        "(half); the ranking leaves out those below 99%%")
    p.add_argument("--calibration-size", type=int, default=512, metavar="N",
                   help="images drawn for --calibration-data (default 512)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_reuse_memory_option(p, "eager PyTorch 1.9-3.0x faster at batch 32 measured")
    add_model_options(p)


def _add_pick(sub: _Commands) -> None:
    p = sub.add_parser("pick", help="the best MobileNet for a latency budget on this machine",
                       description="Times every MobileNet configuration with a published ImageNet "
                                   "top-1 (the weights registry and the papers' width x resolution "
                                   "tables) on this machine with random weights, prints the Pareto "
                                   "front (published top-1 against measured median latency, per "
                                   "backend) and the most accurate one within the budget.")
    p.add_argument("--budget-ms", type=float, required=True,
                   help="latency budget per call (one batch), in milliseconds")
    p.add_argument("--backends", default="onnxruntime",
                   help=f"comma-separated, from {', '.join(BACKENDS)} (default onnxruntime)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's)")
    p.add_argument("--quick", action="store_true",
                   help="8 networks (per family the smallest width and 1.0), 0.3 s of timing each")
    p.add_argument("--seconds", type=float,
                   help="timed seconds per candidate and backend (default 1.0, --quick 0.3)")
    p.add_argument("--json", metavar="FILE", help="write candidates, latencies, fronts, the choice, "
                                                  "the machine and the command as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the front (needs matplotlib)")


def _add_serve(sub: _Commands) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: JSON API, web page, metrics (docs/serving.md)",
                       description="Serve a checkpoint, an exported model or published weights over "
                                   "HTTP: POST /v1/predict, a web page at /, /metrics. Needs the serve "
                                   "extra: pip install 'mobilenets[serve]'.")
    p.add_argument("model", nargs="?", help="a .safetensors checkpoint, a run directory or an exported "
                                            ".onnx/.pt2/.pt file")
    _add_pretrained(p)
    p.add_argument("--trust-code", action="store_true",
                   help="load a TorchScript .pt file, which is a program: only one you trust")
    p.add_argument("--backend", choices=RUNNERS, default="auto",
                   help="auto: the file's own (onnxruntime for .onnx, OpenVINO for .xml, ExecuTorch "
                        "for .pte, LiteRT for .tflite, PyTorch otherwise); another is an error")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens "
                        "it to the network, without authentication)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the model")
    p.add_argument("--threads", type=int, help="PyTorch threads per worker (default: cores / workers)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="most images in one forward pass (1: no dynamic batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more images after its first")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body (413 above)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_reuse_memory_option(p, "which pays under load")
