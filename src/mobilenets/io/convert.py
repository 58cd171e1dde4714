"""Weight converters from torchvision, timm and Keras: the proof that the networks are the same.

Each converter builds our model with the conventions its source needs (BatchNorm eps and
momentum, TF 'same' padding, width rounding; SPEC §7) and copies the source's tensors into
it. PyTorch state dicts and Keras weight lists are ordered by layer, exactly as our modules
are registered (stem, blocks in paper order with expand → depthwise → SE → project, last
conv, head, classifier), so tensors are paired in order, transposed from the source layout
and checked shape by shape; any disagreement is one :class:`MobilenetsError` naming the
first offending tensors. Only plain data is read: ``.pth`` files with
``torch.load(weights_only=True)``, Keras ``.h5`` files with h5py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.conventions import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD
from ..errors import MobilenetsError, did_you_mean
from ..models.registry import check_model_name, create_model, list_models
from .checkpoint import check_finite

SOURCES = ("torchvision", "timm", "keras")

_TORCHVISION_NAMES = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
_KERAS_NAMES = {"MobileNet": "mobilenet_v1", "MobileNetV2": "mobilenet_v2",
                "MobileNetV3Large": "mobilenet_v3_large", "MobileNetV3Small": "mobilenet_v3_small"}
_TIMM_NAME = re.compile(r"^(?P<tf>tf_)?mobilenetv(?P<v>[123])_(?P<size>large_|small_)?"
                        r"(?P<minimal>minimal_)?(?P<width>\d{3})$")
_KERAS_BN = dict(bn_eps=1e-3, bn_momentum=1 - 0.999)  # Keras BatchNormalization(momentum=0.999)
_TF_BN = dict(bn_eps=1e-3, bn_momentum=1 - 0.99)  # TF-slim / timm BN_ARGS_TF (decay 0.99)


def _version(name: str) -> str:
    return "v1" if name == "mobilenet_v1" else "v2" if name == "mobilenet_v2" else "v3"


def resolve_name(source: str, name: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Map a source's own model name and options to ours: ``(our_name, our_kwargs)``."""
    kwargs = dict(kwargs)
    if kwargs.get("minimalistic") and source != "keras":
        raise MobilenetsError(f"--minimalistic is Keras's option; {source} names the variant instead "
                              "(timm: tf_mobilenetv3_small_minimal_100; ours: mobilenet_v3_small_minimal)")
    if name in list_models():
        return name, kwargs
    if source == "timm":
        name = name.split(".", 1)[0]  # Hugging Face tags: mobilenetv3_large_100.ra_in1k
        m = _TIMM_NAME.match(name)
        if m and m["width"]:
            v, size = m["v"], (m["size"] or "").rstrip("_")
            if (v == "3") != bool(size) or (m["minimal"] and v != "3"):
                m = None
        if m:
            ours = f"mobilenet_v{m['v']}" + (f"_{size}" if size else "") + ("_minimal" if m["minimal"] else "")
            kwargs.setdefault("width_mult", int(m["width"]) / 100)
            if m["tf"]:
                kwargs.setdefault("padding", "same")
                for k, val in _TF_BN.items():
                    kwargs.setdefault(k, val)
            return ours, kwargs
    if source == "keras" and name in _KERAS_NAMES:
        ours = _KERAS_NAMES[name]
        if "alpha" in kwargs:
            kwargs["width_mult"] = kwargs.pop("alpha")
        if "classes" in kwargs:
            kwargs["num_classes"] = kwargs.pop("classes")
        if kwargs.pop("minimalistic", False):
            if ours == "mobilenet_v1" or ours == "mobilenet_v2":
                raise MobilenetsError(f"{name} has no minimalistic variant")
            ours += "_minimal"
        return ours, kwargs
    hint = {"torchvision": ", ".join(_TORCHVISION_NAMES),
            "timm": "e.g. mobilenetv1_100, mobilenetv2_035, mobilenetv3_small_075, "
                    "tf_mobilenetv3_large_minimal_100",
            "keras": ", ".join(_KERAS_NAMES)}[source]
    raise MobilenetsError(f"unknown model {name!r} for source {source}"
                          f"{did_you_mean(name, list_models() + list(_KERAS_NAMES))}; "
                          f"use one of ours ({', '.join(list_models())}) or {source}'s: {hint}")


def _source_defaults(source: str, name: str) -> dict[str, Any]:
    """The conventions a source's weights were built with (SPEC §7)."""
    version = _version(name)
    if source == "torchvision":
        if name not in _TORCHVISION_NAMES:
            raise MobilenetsError(f"torchvision has no {name}; it has {', '.join(_TORCHVISION_NAMES)}")
        bn = (1e-3, 0.01) if version == "v3" else (1e-5, 0.1)
        return dict(bn_eps=bn[0], bn_momentum=bn[1], padding="symmetric",
                    width_convention="torchvision")
    if source == "timm":
        return dict(bn_eps=1e-5, bn_momentum=0.1, padding="symmetric", width_convention="tf")
    return dict(**_KERAS_BN, padding="same", width_convention="tf")


def _fixed_stem(source: str, name: str, kwargs: dict[str, Any]) -> None:
    """Keras fixes V3's stem at 16 filters; timm does below width 0.75 (``fix_stem``)."""
    if _version(name) != "v3" or "stem_channels" in kwargs:
        return
    if source == "keras" or (source == "timm" and kwargs.get("width_mult", 1.0) < 0.75):
        kwargs["stem_channels"] = 16


def _preprocessing(source: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    tf_style = source == "keras" or kwargs.get("padding") == "same"
    mean, std = (TF_MEAN, TF_STD) if tf_style else (IMAGENET_MEAN, IMAGENET_STD)
    return {"mean": list(mean), "std": list(std), "input_size": 224}


# ----------------------------------------------------------------------------- reading

def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32) if value.is_floating_point() else value
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


#: Converters pair tensors with ours by position, and a safetensors file keeps no order (its
#: names come back sorted). These are the orders of the modules that torchvision's and
#: timm's MobileNets register; each group of siblings takes the first list that holds all
#: of its names. timm's depthwise-separable block (no ``conv_pwl``) is listed before its
#: inverted residual, whose list holds the same names and more.
_MODULE_ORDERS: tuple[tuple[str, ...], ...] = (
    ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
    ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "features", "classifier"),  # the model
    ("conv_dw", "bn1", "se", "conv_pw", "bn2"),  # timm DepthwiseSeparableConv
    ("conv_pw", "bn1", "conv_dw", "bn2", "se", "conv_pwl", "bn3"),  # timm InvertedResidual
    ("conv", "bn1"),  # timm ConvBnAct
    ("conv_reduce", "conv_expand"),  # timm SqueezeExcite
    ("fc1", "fc2"),  # torchvision SqueezeExcitation
)


def registration_order(names: list[str], source: str = "weights") -> list[str]:
    """``names`` (dotted state-dict keys) in the order torchvision/timm register them."""
    parts = {n: n.split(".") for n in names}
    siblings: dict[tuple[str, ...], set[str]] = {}
    for p in parts.values():
        for i, c in enumerate(p):
            siblings.setdefault(tuple(p[:i]), set()).add(c)
    rank: dict[tuple[str, ...], dict[str, int]] = {}
    for prefix, group in siblings.items():
        words = {c for c in group if not c.isdigit()}
        order = tuple(words) if len(words) <= 1 else next((o for o in _MODULE_ORDERS if words <= set(o)), None)
        if order is None:
            raise MobilenetsError(f"{source}: cannot restore the order of {sorted(words)} under "
                                  f"{'.'.join(prefix) or 'the top level'} (a safetensors file keeps "
                                  "none, and this is not a torchvision or timm MobileNet layout); "
                                  "convert the .pth file instead")
        rank[prefix] = {c: order.index(c) for c in words}

    def key(name: str) -> list[tuple[int, int]]:
        p = parts[name]
        return [(0, int(c)) if c.isdigit() else (1, rank[tuple(p[:i])][c]) for i, c in enumerate(p)]

    return sorted(names, key=key)


def read_torch_weights(obj: Mapping[str, Any] | str | os.PathLike) -> dict[str, torch.Tensor]:
    """A PyTorch state dict from a mapping, a ``.pth``/``.pt`` file or a ``.safetensors`` file.

    Pickled files load with ``weights_only=True``: a file that would execute code (or store
    anything but tensors and containers) is refused. Checkpoints that wrap the state dict
    under ``state_dict``, ``model`` or ``model_state_dict`` are unwrapped.
    """
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise MobilenetsError(f"weights file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            try:
                obj = load_file(str(path))
            except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
                raise MobilenetsError(f"{path} is not a readable safetensors file: {e}") from e
            obj = {k: obj[k] for k in registration_order(list(obj), str(path))}
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
                lines = str(e).strip().splitlines()
                raise MobilenetsError(
                    f"refused to load {path}: not a PyTorch weights file, or one that stores more "
                    f"than tensors (loaded with weights_only=True, which never runs code): "
                    f"{lines[0] if lines else type(e).__name__}") from e
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise MobilenetsError("expected a non-empty state dict (a mapping of names to tensors)")
    try:
        return {str(k): _to_tensor(v) for k, v in obj.items()}
    except (TypeError, ValueError, RuntimeError) as e:
        raise MobilenetsError(f"expected a state dict of tensors; found a value that is not "
                              f"numbers ({type(e).__name__}: {e})") from e


def read_keras_weights(obj: Mapping[str, Any] | str | os.PathLike) -> dict[str, torch.Tensor]:
    """Keras weights in layer order, named ``'<layer>/<weight>'``.

    Accepts a mapping of such names to arrays (in ``model.weights`` order) or a legacy
    Keras ``.h5`` file (``model.save_weights('x.h5')`` or a full-model ``.h5``), whose
    ``layer_names``/``weight_names`` attributes give the order. Read as data only.
    """
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise MobilenetsError(f"weights file not found: {path}")
        try:
            import h5py
        except ImportError as e:
            raise MobilenetsError("reading Keras .h5 files needs h5py: "
                                  "pip install 'mobilenets[keras]'") from e
        out: dict[str, Any] = {}
        try:
            with h5py.File(path, "r") as f:
                root = f["model_weights"] if "model_weights" in f else f
                if "layer_names" not in root.attrs:
                    raise MobilenetsError(f"{path} is not a legacy Keras weights file (no "
                                          "layer_names); save it with model.save_weights('x.h5')")
                for layer in root.attrs["layer_names"]:
                    layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                    group = root[layer]
                    for wname in group.attrs.get("weight_names", []):
                        wname = wname.decode() if isinstance(wname, bytes) else str(wname)
                        short = wname.split(":")[0]
                        short = short[len(layer) + 1:] if short.startswith(layer + "/") else short
                        out[f"{layer}/{short.split('/')[-1]}"] = np.asarray(group[wname])
        except MobilenetsError:
            raise
        except Exception as e:  # noqa: BLE001 - corrupt HDF5 raises many types
            raise MobilenetsError(f"{path} is not a readable Keras .h5 file: {e}") from e
        obj = out
    if not isinstance(obj, Mapping) or not obj:
        raise MobilenetsError("expected non-empty Keras weights (a mapping '<layer>/<weight>' -> array)")
    return {str(k): _to_tensor(v) for k, v in obj.items()}


def _keras_to_torch_layout(t: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """Keras layouts → PyTorch: conv (kh, kw, in, out) → (out, in, kh, kw); depthwise
    (kh, kw, in, m) → (in·m, 1, kh, kw); dense (in, out) → (out, in)."""
    if t.ndim == 4:
        kh, kw, cin, cout = t.shape
        if len(target) == 4 and target[1] == 1 and target[0] == cin * cout and cin > 1:
            return t.permute(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw)
        return t.permute(3, 2, 0, 1)
    if t.ndim == 2:
        return t.t()
    return t


def _pair(source: str, src: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Pair source tensors with the model's state dict in order; check every shape."""
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    own_items = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    new_state = dict(model.state_dict())
    for i, ((sk, sv), (ok, ov)) in enumerate(zip(src_items, own_items)):
        t = _keras_to_torch_layout(sv, ov.shape) if source == "keras" else sv
        if t.shape != ov.shape and t.numel() == ov.numel() and t.ndim == 4 and t.shape[2:] == (1, 1):
            t = t.reshape(ov.shape)  # a 1×1 conv head is our Linear (SPEC §7.10)
        if t.shape != ov.shape:
            raise MobilenetsError(
                f"{source} tensor #{i} {sk!r} has shape {tuple(sv.shape)}, but {model.model_name} "
                f"expects {ok!r} with shape {tuple(ov.shape)}: wrong model or options "
                f"(width_mult, num_classes, minimalistic?)")
        if t.is_floating_point() != ov.is_floating_point() or t.is_complex():
            raise MobilenetsError(f"{source} tensor #{i} {sk!r} holds {t.dtype} values where "
                                  f"{model.model_name} has {ov.dtype} weights ({ok!r}): not weights")
        new_state[ok] = t.to(ov.dtype).clone()
    if len(src_items) != len(own_items):
        if len(src_items) > len(own_items):
            detail = f"extra source tensors starting at {src_items[len(own_items)][0]!r}"
        else:
            detail = f"missing tensors for {own_items[len(src_items)][0]!r} onwards"
        raise MobilenetsError(f"{source} weights have {len(src_items)} tensors, {model.model_name} "
                              f"has {len(own_items)}: {detail}")
    return new_state


def _count(weights: torch.nn.Module | dict[str, torch.Tensor]) -> int:
    """Tensors that pair up (BatchNorm's step counter is not a weight)."""
    keys = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    return sum(not k.endswith("num_batches_tracked") for k in keys)


def _infer_shape_kwargs(source: str, src: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> None:
    """Take ``num_classes`` and ``in_chans`` from the weights unless given."""
    tensors = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    first, last = tensors[0], tensors[-1]
    if "in_chans" not in kwargs and first.ndim == 4:
        kwargs["in_chans"] = int(first.shape[2] if source == "keras" else first.shape[1])
    if "num_classes" not in kwargs and last.ndim == 1:
        kwargs["num_classes"] = int(last.shape[0])


def _convert(source: str, src: dict[str, torch.Tensor], name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    ours, kwargs = resolve_name(source, name, kwargs)
    check_model_name(ours)
    for k, v in _source_defaults(source, ours).items():
        kwargs.setdefault(k, v)
    _fixed_stem(source, ours, kwargs)
    classes_given = "num_classes" in kwargs
    _infer_shape_kwargs(source, src, kwargs)
    check_finite(src, f"{source} weights")  # a NaN source would make a NaN checkpoint
    model = create_model(ours, **kwargs)
    if not classes_given and kwargs.get("num_classes") != 0 and _count(model) == _count(src) + 2:
        # Weights saved without a classifier (timm's num_classes=0, Keras include_top=False):
        # the last 1-D tensor was not a classifier bias, and the model is two tensors short.
        kwargs["num_classes"] = 0
        model = create_model(ours, **kwargs)
    model.load_state_dict(_pair(source, src, model))
    model.eval()
    model.preprocessing = _preprocessing(source, kwargs)
    model.converted_from = {"source": source, "name": name}
    return model


def from_torchvision(state_dict_or_path: Mapping[str, Any] | str | os.PathLike, name: str,
                     **model_kwargs: Any) -> torch.nn.Module:
    """Our model carrying torchvision weights (``mobilenet_v2``, ``mobilenet_v3_large/small``)."""
    return _convert("torchvision", read_torch_weights(state_dict_or_path), name, model_kwargs)


def from_timm(state_dict_or_path: Mapping[str, Any] | str | os.PathLike, name: str,
              **model_kwargs: Any) -> torch.nn.Module:
    """Our model carrying timm weights; timm names such as ``mobilenetv3_small_075`` or
    ``tf_mobilenetv3_large_minimal_100`` set the width and the TF conventions."""
    return _convert("timm", read_torch_weights(state_dict_or_path), name, model_kwargs)


def from_keras(weights_or_path: Mapping[str, Any] | str | os.PathLike, name: str,
               **model_kwargs: Any) -> torch.nn.Module:
    """Our model carrying Keras weights; Keras names (``MobileNetV3Small``) and options
    (``alpha``, ``minimalistic``, ``classes``) are mapped to ours."""
    return _convert("keras", read_keras_weights(weights_or_path), name, model_kwargs)


def convert(source: str, weights: Mapping[str, Any] | str | os.PathLike, name: str,
            **model_kwargs: Any) -> torch.nn.Module:
    """Dispatch to :func:`from_torchvision`, :func:`from_timm` or :func:`from_keras`."""
    fns = {"torchvision": from_torchvision, "timm": from_timm, "keras": from_keras}
    if source not in fns:
        raise MobilenetsError(f"unknown source {source!r}{did_you_mean(source, fns)}; "
                              f"use one of {', '.join(fns)}")
    return fns[source](weights, name, **model_kwargs)
