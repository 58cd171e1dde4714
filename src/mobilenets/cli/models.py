"""``mobilenets models | summary | convert``: networks and weights, without data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis.profile import profile
from ..errors import MobilenetsError
from ..io.checkpoint import save_model
from ..io.convert import convert
from ..models.registry import create_model, list_models
from .options import model_kwargs_from_args


def run_models(args: argparse.Namespace) -> int:
    """Every registered model with its parameters and MAdds, as text, Markdown or JSON."""
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


def run_summary(args: argparse.Namespace) -> int:
    """One model's per-layer table (shapes, parameters, MAdds)."""
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


def run_convert(args: argparse.Namespace) -> int:
    """torchvision/timm/Keras weights to a mobilenets checkpoint, its preprocessing recorded."""
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
