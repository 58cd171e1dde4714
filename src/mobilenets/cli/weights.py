"""``mobilenets weights`` and the ``--pretrained`` of ``predict``/``eval``: published weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MobilenetsError, did_you_mean
from ..io.download import cache_path
from ..io.weights import (default_weights, entry_options, entry_preprocessing, find_weights,
                          imagenet_wnids, list_weights, pretrained_model)
from ..io.weights_table import SKIPPED, WeightsEntry
from ..models.registry import create_model, list_models


def count_madds(model: nn.Module, size: int) -> int:
    """Multiply-adds of one RGB ``size``² image, counted as ``mobilenets models`` counts them
    (convolutions and linear layers, biases aside), on the meta device: no memory, no time,
    so that listing 66 checkpoints takes a second instead of minutes of profiling."""
    total = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * k
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.to("meta").eval()(torch.empty(1, 3, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total


def weights_row(w: WeightsEntry) -> dict[str, Any]:
    """One checkpoint as ``mobilenets weights --json`` prints it."""
    options = entry_options(w)
    with torch.device("meta"):
        model = create_model(w.model, **options)
    params = sum(p.numel() for p in model.parameters())
    size = w.preprocessing.crop
    return {"tag": w.tag, "short_tag": w.short, "source": w.source, "source_name": w.name,
            "model": w.model, "options": options, "default": default_weights(w.model, w.width_mult) == w,
            "top1": w.top1, "top5": w.top5, "top1_source": w.top1_source, "params": params,
            "madds": count_madds(model, size), "resolution": size, "licence": w.licence,
            "url": w.url, "sha256": w.sha256, "md5": w.md5,
            "preprocessing": entry_preprocessing(w), "cache_path": str(cache_path(w.url))}


def _hash_text(r: dict[str, Any]) -> str:
    return f"sha256:{r['sha256']}" if r["sha256"] else f"md5:{r['md5']}" if r["md5"] else "none published"


def _print_table(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        o = r["options"]
        extra = {k: v for k, v in o.items() if k in ("padding", "bn_eps", "stem_channels") and
                 not (k == "padding" and v == "symmetric")}
        top = "-" if r["top1"] is None else f"{r['top1']:.2f}" + (f" / {r['top5']:.2f}" if r["top5"] else "")
        p = r["preprocessing"]
        print(f"{r['tag']}{'  (default)' if r['default'] else ''}\n"
              f"    {r['model']} width_mult={o['width_mult']} {extra or ''}  short tag: {r['short_tag']}\n"
              f"    top-1/top-5 {top} ({r['top1_source']})   params {r['params']:,}   "
              f"MAdds {r['madds'] / 1e6:.1f} M @{r['resolution']}\n"
              f"    eval: resize {p['resize_size']} {p['interpolation']}, crop {p['input_size']}, "
              f"mean {p['mean']}, std {p['std']}\n"
              f"    {r['url']}  [{_hash_text(r)}]\n    licence: {r['licence']}")
    print(f"\n{len(rows)} checkpoints. Not listed (no model here builds them): "
          + "; ".join(f"{what} ({why})" for what, why in SKIPPED))


def run_weights(args: argparse.Namespace) -> int:
    """Every published checkpoint our models load (or those of one model)."""
    if args.model and args.model not in list_models():
        raise MobilenetsError(f"unknown model {args.model!r}{did_you_mean(args.model, list_models())}; "
                              f"available: {', '.join(list_models())}")
    rows = [weights_row(w) for w in list_weights(args.model)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows)
    return 0


# ----------------------------------------------------------------------------- --pretrained

def resolve_cli_spec(spec: str) -> tuple[str, str | bool]:
    """``--pretrained`` names a full tag, or one of our models (its default weights)."""
    if spec in list_models():
        return spec, True
    if any(w.tag == spec for w in list_weights()):
        return find_weights(spec).model, spec
    names = [w.tag for w in list_weights()] + list_models()
    raise MobilenetsError(f"--pretrained {spec!r} is neither a weights tag nor a model"
                          f"{did_you_mean(spec, names)}; `mobilenets weights` lists the tags")


def pretrained_checkpoint(spec: str, data: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model and checkpoint-style metadata for ``--pretrained``. For ``eval`` on an
    ImageNet-style folder whose class folders are WordNet IDs, those IDs are the classes."""
    name, pretrained = resolve_cli_spec(spec)
    model = pretrained_model(name, pretrained, {})
    classes = getattr(model, "classes", None)
    if data and classes and _wnid_folders(Path(data)):
        classes = imagenet_wnids()
    meta = {"model": model.model_name, "model_kwargs": dict(model.model_kwargs),
            "preprocessing": dict(model.preprocessing), "classes": classes,
            "pretrained": model.pretrained}
    return model, meta


def _wnid_folders(root: Path) -> bool:
    """Whether ``root`` (or its ``val``/``train``) holds ImageNet's ``n01440764``-style folders."""
    for folder in (root / "val", root / "train", root):
        if folder.is_dir():
            names = [d.name for d in folder.iterdir() if d.is_dir()]
            if names:
                return all(len(n) == 9 and n[0] == "n" and n[1:].isdigit() for n in names)
    return False


def pretrained_inputs(args: argparse.Namespace) -> None:
    """``predict --pretrained TAG a.jpg b.jpg``: every positional is an image."""
    if args.checkpoint is not None:
        args.images = [args.checkpoint, *args.images]
    args.checkpoint = None
