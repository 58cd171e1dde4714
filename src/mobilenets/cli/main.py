"""The ``mobilenets`` command: a thin layer over the Python API.

Every user mistake becomes one ``error: ...`` line and exit status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import MobilenetsError

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}

#: Modules that add their own sub-commands: each has ``add_commands(subparsers)``, which
#: registers parsers whose ``set_defaults(func=handler)`` names the handler.
COMMAND_MODULES: tuple[str, ...] = ("mobilenets.cli.train", "mobilenets.cli.paper", "mobilenets.cli.deploy")


def _command(name: str):
    def deco(fn):
        _COMMANDS[name] = fn
        return fn
    return deco


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model options")
    g.add_argument("--width-mult", type=float, help="width multiplier (α)")
    g.add_argument("--num-classes", type=int, help="classifier outputs (0: none)")
    g.add_argument("--in-chans", type=int, help="input channels (1 for grayscale)")
    g.add_argument("--depth-multiplier", type=int, help="V1 depthwise channel multiplier")
    g.add_argument("--padding", choices=("symmetric", "same"), help="padding convention")
    g.add_argument("--width-convention", choices=("torchvision", "tf"),
                   help="channel rounding convention (SPEC §7.2)")
    g.add_argument("--small-input", action="store_true", default=None,
                   help="stem for 28-64 px images (8x downsampling instead of 32x)")
    g.add_argument("--output-stride", type=int,
                   help="total downsampling, a power of 2 (default 32, or 8 with --small-input): "
                        "the last stride-2 blocks go to stride 1")
    g.add_argument("--dropout", type=float, help="dropout before the classifier")


def add_reuse_memory_option(p: argparse.ArgumentParser, gain: str) -> None:
    """``--no-reuse-memory``; ``gain`` says what keeping freed memory measured here."""
    p.add_argument("--no-reuse-memory", dest="reuse_memory", action="store_false",
                   help="leave glibc's malloc returning freed memory to the kernel (by default "
                        f"it is kept for reuse: no page faults per batch, {gain})")


def reuse_memory(args: argparse.Namespace) -> None:
    """Apply ``--no-reuse-memory``'s default: :func:`mobilenets.ops.cpu.keep_freed_memory`, for
    the rest of the process (it cannot be undone), before the command's own work."""
    if getattr(args, "reuse_memory", True):
        from ..ops.cpu import keep_freed_memory

        keep_freed_memory()


def model_kwargs_from_args(args: argparse.Namespace) -> dict:
    keys = ("width_mult", "num_classes", "in_chans", "depth_multiplier", "padding",
            "width_convention", "small_input", "output_stride", "dropout")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilenets",
        description="MobileNet V1/V2/V3: build, profile, convert, train, evaluate, predict.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


@_command("models")
def _models(args: argparse.Namespace) -> int:
    from .. import create_model
    from .. import list_models
    from ..analysis.profile import profile
    rows = []
    for name in list_models():
        prof = profile(create_model(name, num_classes=args.num_classes), args.resolution)
        rows.append({"model": name, "params": prof.params, "madds": prof.madds,
                     "resolution": args.resolution})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(f"| model | params | MAdds @{args.resolution} |\n|---|---:|---:|")
        for r in rows:
            print(f"| `{r['model']}` | {r['params']:,} | {r['madds'] / 1e6:.2f} M |")
    else:
        print(f"{'model':28s} {'params':>12s} {'MAdds':>10s}  (at {args.resolution} px, "
              f"{args.num_classes} classes)")
        for r in rows:
            print(f"{r['model']:28s} {r['params']:>12,} {r['madds'] / 1e6:>9.2f}M")
    return 0


@_command("summary")
def _summary(args: argparse.Namespace) -> int:
    from .. import create_model
    from ..analysis.profile import profile
    model = create_model(args.name, **model_kwargs_from_args(args))
    prof = profile(model, args.resolution)
    if args.json:
        print(json.dumps({"model": args.name, "params": prof.params, "madds": prof.madds,
                          "peak_activation_elements": prof.peak_activation_elements,
                          "largest_activation": list(prof.largest_activation),
                          "layers": [vars(layer) for layer in prof.layers]}, indent=2))
    else:
        print(f"{args.name} {model_kwargs_from_args(args) or ''}".rstrip())
        print(prof.table())
    return 0


@_command("convert")
def _convert(args: argparse.Namespace) -> int:
    from ..io.checkpoint import save_model
    from ..io.convert import convert
    kwargs = model_kwargs_from_args(args)
    if args.minimalistic:
        kwargs["minimalistic"] = True
    out = Path(args.output)
    if out.suffix != ".safetensors":  # checked before writing: -o model.pth would replace weights
        raise MobilenetsError(f"-o must name a .safetensors file, got {args.output}")
    if out.exists() and Path(args.file).exists() and out.resolve() == Path(args.file).resolve():
        raise MobilenetsError(f"-o {args.output} is the input file; choose another output")
    model = convert(args.source, args.file, args.model, **kwargs)
    meta = {"preprocessing": model.preprocessing, "converted_from": model.converted_from}
    path = save_model(model, args.output, **meta)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.source} {args.model} -> {model.model_name} "
          f"{model.model_kwargs} ({n:,} parameters) -> {path}")
    return 0


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_show_python_warning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Our own warnings as one ``warning: ...`` line, like errors; others as Python shows them."""
    if os.path.abspath(filename).startswith(_PACKAGE_DIR) and issubclass(category, UserWarning):
        print(f"warning: {message}", file=sys.stderr if file is None else file)
    else:
        _show_python_warning(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not args.command:
        parser.print_help()
        return 2
    try:
        handler = getattr(args, "func", None) or _COMMANDS[args.command]
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(handler(args) or 0)
    except MobilenetsError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mobilenets models | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
