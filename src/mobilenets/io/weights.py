"""Pretrained weights: find a published checkpoint, download it, convert it, label it.

``create_model(name, pretrained=...)`` lands here (:func:`pretrained_model`). A request is a
registry tag (:mod:`mobilenets.io.weights_table`), ``True`` (the default checkpoint for the
model and width), a local weights file or an http(s) URL. The file's format decides the
converter (:mod:`mobilenets.io.convert`); the registry (or the file) decides the options, and
an option the caller gave that disagrees is an error naming both, raised before any download.
The model comes back carrying its evaluation preprocessing and, for ImageNet-1k heads, the
class names, so ``save_model`` and every export keep them.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import MobilenetsError, did_you_mean
from ..models.registry import check_model_name, model_options
from .download import ExpectedHash, download, expected_hash
from .weights_table import WEIGHTS, WeightsEntry

#: Options that leave the weights untouched, so a caller may set them with any checkpoint.
FREE_OPTIONS = ("dropout",)
IMAGENET_CLASSES = 1000
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".h5")


@functools.lru_cache(maxsize=None)
def _data_lines(name: str) -> tuple[str, ...]:
    text = resources.files("mobilenets.data").joinpath(name).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (torchvision's ``_IMAGENET_CATEGORIES``)."""
    return list(_data_lines("imagenet_classes.txt"))


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet IDs in index order (timm's ``imagenet_synsets.txt``):
    the folder names of an ImageNet-style ``train/``/``val/`` tree."""
    return list(_data_lines("imagenet_wnids.txt"))


# ----------------------------------------------------------------------------- the registry

def list_weights(model: str | None = None) -> list[WeightsEntry]:
    """Every registered checkpoint, or those for one of our model names."""
    if model is not None:
        check_model_name(model)
    return [w for w in WEIGHTS if model is None or w.model == model]


def find_weights(tag: str) -> WeightsEntry:
    """The row with this full tag (``timm.mobilenetv2_140.ra_in1k``)."""
    for w in list_weights():
        if w.tag == tag:
            return w
    raise MobilenetsError(f"unknown weights tag {tag!r}{did_you_mean(tag, [w.tag for w in list_weights()])}; "
                          "`mobilenets weights` lists them")


def _rank(w: WeightsEntry) -> tuple:
    """Default order: torchvision's DEFAULT, then published top-1 (to 0.1), then a hash to
    check (SHA-256 before MD5), then the 224 px file."""
    return (w.torchvision_default, round(w.top1 or 0.0, 1), w.sha256 is not None, w.md5 is not None,
            w.preprocessing.crop == 224)


def default_weights(model: str, width_mult: float = 1.0) -> WeightsEntry:
    """What ``pretrained=True`` loads: torchvision's DEFAULT where it exists, else the best
    published top-1 for this model and width."""
    rows = [w for w in list_weights(model) if w.width_mult == width_mult]
    if not rows:
        widths = sorted({w.width_mult for w in list_weights(model)})
        raise MobilenetsError(f"no published weights for {model} at width_mult {width_mult}; "
                              f"published widths: {', '.join(map(str, widths)) or 'none'}")
    return max(rows, key=_rank)


def default_tags() -> dict[str, WeightsEntry]:
    """Each model's default checkpoint at width 1.0 (the README's model table)."""
    return {m: default_weights(m) for m in sorted({w.model for w in list_weights()})}


def resolve_tag(model: str, spec: str, width_mult: float | None) -> WeightsEntry:
    """A full tag, or a short one (``timm.ra_in1k``) for this model at the caller's width
    (else width 1.0, else the only width that has it)."""
    rows = [w for w in list_weights(model) if spec in (w.tag, w.short)]
    if not rows:
        other = next((w for w in list_weights() if w.tag == spec), None)
        if other:
            raise MobilenetsError(f"weights {spec} are for {other.model}, not {model}")
        tags = [w.short for w in list_weights(model)] + [w.tag for w in list_weights(model)]
        raise MobilenetsError(f"no weights {spec!r} for {model}{did_you_mean(spec, tags)}; "
                              f"`mobilenets weights {model}` lists them")
    if width_mult is not None:
        exact = [w for w in rows if w.width_mult == width_mult]
        if not exact:
            raise MobilenetsError(f"weights {spec} for {model} have width_mult="
                                  f"{' or '.join(str(w.width_mult) for w in rows)}, but you gave "
                                  f"width_mult={width_mult}")
        rows = exact
    if len(rows) > 1:
        rows = [w for w in rows if w.width_mult == 1.0] or rows
    if len(rows) > 1:
        raise MobilenetsError(f"{spec} names {len(rows)} checkpoints of {model}; give width_mult "
                              f"({', '.join(str(w.width_mult) for w in rows)}) or a full tag")
    return rows[0]


def entry_options(entry: WeightsEntry) -> dict[str, Any]:
    """Our constructor options for ``entry``, exactly as its converter will set them."""
    from .convert import _fixed_stem, _source_defaults, resolve_name

    ours, kwargs = resolve_name(entry.source, entry.name, dict(entry.kwargs))
    for k, v in _source_defaults(entry.source, ours).items():
        kwargs.setdefault(k, v)
    _fixed_stem(entry.source, ours, kwargs)
    kwargs.setdefault("width_mult", entry.width_mult)
    return {"num_classes": IMAGENET_CLASSES, "in_chans": 3, **kwargs}


def entry_preprocessing(entry: WeightsEntry) -> dict[str, Any]:
    """The checkpoint metadata's ``preprocessing`` for ``entry``."""
    from ..data.preprocessing import Preprocessing

    p = entry.preprocessing
    return Preprocessing(p.crop, 3, p.mean, p.std, p.resize, p.interpolation).record()


# ----------------------------------------------------------------------------- loading

def _check_conflicts(what: str, model: str, have: dict[str, Any], given: dict[str, Any]) -> None:
    """An option the caller gave must equal the weights' (or the model's default)."""
    defaults = {k: p.default for k, p in model_options(model).items()}
    for key, value in given.items():
        if key in FREE_OPTIONS:
            continue
        theirs = have.get(key, defaults.get(key))
        same = theirs == value or (isinstance(theirs, float) and isinstance(value, (int, float))
                                   and abs(theirs - value) <= 1e-9 * max(1.0, abs(theirs)))
        if not same:
            raise MobilenetsError(f"{what} has {key}={theirs!r}, but you gave {key}={value!r}; "
                                  f"leave {key} out (the weights set it) or choose other weights")


def _label(model: nn.Module, preprocessing: dict[str, Any], origin: dict[str, Any]) -> nn.Module:
    """Attach what ``save_model`` and the exports carry on: preprocessing, class names."""
    model.preprocessing = preprocessing
    if getattr(model, "num_classes", None) == IMAGENET_CLASSES:
        model.classes = imagenet_classes()
    model.pretrained = origin
    model.eval()
    return model


def _load_entry(entry: WeightsEntry, name: str, kwargs: dict[str, Any], progress: bool) -> nn.Module:
    from .convert import convert

    if entry.model != name:
        raise MobilenetsError(f"weights {entry.tag} are for {entry.model}, not {name}")
    _check_conflicts(f"weights {entry.tag}", name, entry_options(entry), kwargs)
    path = download(entry.url, ExpectedHash(entry.sha256, entry.md5), progress=progress)
    free = {k: v for k, v in kwargs.items() if k in FREE_OPTIONS}
    model = convert(entry.source, path, entry.name, **dict(entry.kwargs), **free)
    return _label(model, entry_preprocessing(entry),
                  {"tag": entry.tag, "url": entry.url, "source": entry.source, "file": str(path)})


def _file_source(path: Path, tensors: dict[str, Any]) -> str:
    """torchvision or timm, told apart by their state-dict names."""
    first = next(iter(tensors))
    if first.startswith("features."):
        return "torchvision"
    if first.startswith(("conv_stem.", "blocks.")):
        return "timm"
    raise MobilenetsError(f"{path}: neither a torchvision nor a timm MobileNet state dict (first "
                          f"tensor {first!r}); convert it with mobilenets.io.convert.convert")


def _load_file(path: Path, name: str, kwargs: dict[str, Any], origin: dict[str, Any]) -> nn.Module:
    """A local weights file: a mobilenets checkpoint, torchvision/timm weights or Keras .h5."""
    from .convert import _infer_shape_kwargs, convert, read_keras_weights, read_torch_weights

    if path.suffix not in WEIGHT_SUFFIXES:
        raise MobilenetsError(f"{path}: pretrained weights must be {', '.join(WEIGHT_SUFFIXES)}")
    if path.suffix == ".safetensors" and _is_mobilenets_checkpoint(path):
        return _load_own(path, name, kwargs, origin)
    source = "keras" if path.suffix == ".h5" else None
    tensors = read_keras_weights(path) if source else read_torch_weights(path)
    source = source or _file_source(path, tensors)
    found: dict[str, Any] = {}
    _infer_shape_kwargs(source, tensors, found)
    shape_given = {k: v for k, v in kwargs.items() if k in found and not (k == "num_classes" and v == 0)}
    _check_conflicts(f"{path}", name, found, shape_given)
    model = convert(source, tensors, name, **kwargs)
    pre = dict(model.preprocessing)
    return _label(model, pre, {**origin, "source": source, "file": str(path)})


def _is_mobilenets_checkpoint(path: Path) -> bool:
    from safetensors import safe_open

    from .checkpoint import META_KEY

    try:
        with safe_open(str(path), framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - not readable here; the converter's reader says why
        return False


def _load_own(path: Path, name: str, kwargs: dict[str, Any], origin: dict[str, Any]) -> nn.Module:
    """A mobilenets checkpoint: its own metadata rebuilds it."""
    from .checkpoint import load_model

    model, meta = load_model(path)
    if meta["model"] != name:
        raise MobilenetsError(f"{path} holds {meta['model']}, not {name}")
    _check_conflicts(str(path), name, meta.get("model_kwargs", {}), kwargs)
    if meta.get("classes"):
        model.classes = list(meta["classes"])
    if isinstance(meta.get("preprocessing"), dict):
        model.preprocessing = meta["preprocessing"]
    model.pretrained = {**origin, "file": str(path)}
    return model


def _load_url(url: str, name: str, kwargs: dict[str, Any], progress: bool) -> nn.Module:
    """A URL: a registry row when it is one (its hash and options), else any weights file."""
    base = url.partition("#")[0]
    entry = next((w for w in list_weights(name) if w.url == base), None)
    if entry is not None:
        return _load_entry(entry, name, kwargs, progress)
    path = download(url, expected_hash(url), progress=progress)
    return _load_file(path, name, kwargs, {"url": base})


def pretrained_model(name: str, pretrained: bool | str | os.PathLike, kwargs: dict[str, Any],
                     progress: bool = True) -> nn.Module:
    """The model ``create_model(name, pretrained=..., **kwargs)`` returns."""
    check_model_name(name)
    kwargs = dict(kwargs)
    if pretrained is True:
        entry = default_weights(name, float(kwargs.get("width_mult", 1.0)))
        return _load_entry(entry, name, kwargs, progress)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise MobilenetsError(f"pretrained must be True, a tag, a file or a URL, got {pretrained!r}")
    spec = os.fspath(pretrained)
    if spec.startswith(("http://", "https://")):
        return _load_url(spec, name, kwargs, progress)
    if isinstance(pretrained, os.PathLike) or Path(spec).suffix in WEIGHT_SUFFIXES or Path(spec).exists():
        if not Path(spec).is_file():
            raise MobilenetsError(f"weights file not found: {spec}")
        return _load_file(Path(spec), name, kwargs, {})
    entry = resolve_tag(name, spec, kwargs.get("width_mult"))
    return _load_entry(entry, name, kwargs, progress)
