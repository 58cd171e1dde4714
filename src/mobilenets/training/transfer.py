"""Starting a run from another model's weights (``--init FILE``, and ``--pretrained TAG``
once a tag resolves to a file): the classifier is re-initialised when the classes differ,
the stem convolution adapted when the input channels differ, and everything else loaded
strictly, so that a checkpoint of another architecture is an error and never a partial load.

:func:`load_transfer` takes the source's tensors and metadata, not a path: any way of
obtaining a checkpoint (a local file, a downloaded registry entry) reuses it unchanged."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import MobilenetsError
from ..io.checkpoint import load_state, model_weights

#: The stem convolution's weight: the only tensor whose input channels depend on the data.
STEM_KEY = "features.0.conv.weight"

#: The tensors re-initialised when the classes differ: the last linear layer only. V3's
#: ``head.fc`` (the 1024/1280-wide layer after pooling) is a learned feature and is kept.
CLASSIFIER_PREFIX = "classifier."


def source_classes(meta: dict[str, Any]) -> list[str] | None:
    """The class names a checkpoint records, if it does."""
    classes = meta.get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None


def source_channels(meta: dict[str, Any]) -> int | None:
    """The input channels a checkpoint was made for: its preprocessing's, else its model's."""
    pre = meta.get("preprocessing")
    if isinstance(pre, dict) and isinstance(pre.get("channels"), int):
        return pre["channels"]
    chans = (meta.get("model_kwargs") or {}).get("in_chans")
    return chans if isinstance(chans, int) else None


def keeps_classifier(meta: dict[str, Any], classes: list[str]) -> bool:
    """Whether the source's classifier means the data's classes: same names in the same
    order (or, for a checkpoint that names none, the same number)."""
    named = source_classes(meta)
    if named is not None:
        return named == list(classes)
    return (meta.get("model_kwargs") or {}).get("num_classes") == len(classes)


def adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """The stem kernel for ``in_chans`` inputs. One channel: the sum over the source's
    channels, so a grey image gives exactly the output the source gave for that image
    replicated into every channel. More: the source's channels repeated cyclically and
    scaled by ``source / in_chans``, so the expected activation stays the same (timm's
    ``adapt_input_conv`` does both the same way)."""
    source = weight.shape[1]
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / source)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (source / in_chans)


def adapt_normalization(values: list[float], channels: int) -> list[float]:
    """The source's per-channel mean (or std) for ``channels`` inputs, as :func:`adapt_stem`
    maps the channels: their average for one, repeated cyclically for more."""
    if len(values) == channels:
        return list(values)
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(channels)]


def _split_head(model: nn.Module, tensors: dict[str, torch.Tensor], keep_head: bool
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The source without its classifier when it is re-initialised, and a line per tensor."""
    if keep_head:
        return tensors, []
    own = model.state_dict()
    notes = []
    for key in sorted(k for k in set(own) | set(tensors) if k.startswith(CLASSIFIER_PREFIX)):
        old = tuple(tensors[key].shape) if key in tensors else "absent"
        new = tuple(own[key].shape) if key in own else "absent"
        notes.append(f"{key} {old} -> {new}")
    return {k: v for k, v in tensors.items() if not k.startswith(CLASSIFIER_PREFIX)}, notes


def load_transfer(model: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                  classes: list[str], source: str, *, same_classes: bool = False) -> list[str]:
    """Load the source's weights into ``model`` (built for the data's classes and channels)
    and return what was changed, as log lines. The classifier keeps its fresh initialisation
    where the classes differ (unless ``same_classes``: QAT makes the model int8-ready as it
    is); every other tensor must be present and fit, else one error."""
    if same_classes and not keeps_classifier(meta, classes):
        raise MobilenetsError(f"{source} was trained on classes {source_classes(meta)} but the data "
                              f"has {classes}; --qat prepares that very model for int8: fine-tune it "
                              "on the new classes first (--init), then run --qat on the result")
    tensors = dict(model_weights(tensors))
    tensors, head_notes = _split_head(model, tensors, keeps_classifier(meta, classes))
    lines = []
    if head_notes:
        lines.append(f"{source}: classifier re-initialised for the data's {len(classes)} classes: "
                     + ", ".join(head_notes))
    stem = model.state_dict().get(STEM_KEY)
    if stem is not None and STEM_KEY in tensors and tensors[STEM_KEY].shape[1] != stem.shape[1]:
        old = tensors[STEM_KEY]
        tensors[STEM_KEY] = adapt_stem(old, stem.shape[1])
        how = "summed over its input channels" if stem.shape[1] == 1 else \
            f"repeated and scaled by {old.shape[1]}/{stem.shape[1]}"
        lines.append(f"{source}: stem {STEM_KEY} {tuple(old.shape)} -> {tuple(stem.shape)} for "
                     f"{stem.shape[1]}-channel data ({how})")
    own = model.state_dict()
    for key, value in own.items():  # the re-initialised classifier, as the model made it
        if key.startswith(CLASSIFIER_PREFIX) and key not in tensors:
            tensors[key] = value
    load_state(model, tensors, source=source)
    return lines


def transfer_model_kwargs(kwargs: dict[str, Any], classes: list[str], channels: int) -> dict[str, Any]:
    """The source's model options with the data's classes and channels (a source without a
    classifier, ``num_classes=0``, gets a new one)."""
    return {**kwargs, "num_classes": len(classes), "in_chans": channels}
