"""Core ML (``.mlpackage``) for iPhone, iPad and Mac apps: conversion only.

coremltools converts on Linux, but Core ML runs only on Apple's operating systems, so
unlike every other export this one cannot be loaded back and compared with PyTorch here:
:func:`convert` writes it and :func:`describe` checks what can be checked without running
it (the input, the class labels, the metadata). The docs (docs/deployment.md) say so, and
show how to check it on a Mac.

The package is the image classifier that Apple's Vision framework expects:

* input ``image``: an ``ImageType`` of the model's size (RGB, or grayscale for one-channel
  models). Core ML turns pixels into ``scale * pixel + bias`` with one scale for every
  channel, so it does ``pixel / 255 - mean`` and the converted graph starts by dividing
  by the per-channel std (:class:`ImageInput`): exactly the preprocessing's
  ``(pixel / 255 - mean) / std``. Resizing and centre-cropping are the app's (Vision's
  ``imageCropAndScaleOption``), from the metadata.
* outputs ``classLabel`` and ``classLabel_probs`` (softmax probabilities per class name).
* metadata: ours (``mobilenets``: model, preprocessing, classes) in ``user_defined_metadata``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import MobilenetsError
from ..logs import quiet_third_party

EXTRA = "coreml"
#: The oldest OS the package runs on: iOS 17 / macOS 14 (ML programs with every operation
#: the MobileNets use).
DEPLOYMENT_TARGET = "iOS17"
INPUT = "image"
OUTPUT = "classLabel"
PROBABILITIES = "classLabel_probs"
META_KEY = "mobilenets"
NOT_RUN = ("Core ML runs only on Apple devices (macOS, iOS), so this export was converted but "
           "not run here; check it on a Mac (docs/deployment.md, Core ML)")


class ImageInput(nn.Module):
    """``model`` fed with ``pixel / 255 - mean`` (what Core ML's ``ImageType`` gives), softmax
    out: the division by std is the one step of the preprocessing Core ML cannot do."""

    def __init__(self, model: nn.Module, std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x * self.inv_std), dim=1)


def require_coremltools() -> Any:
    """coremltools, imported quietly, or one error naming the extra."""
    with _quiet("while importing coremltools"):
        try:
            import coremltools
        except ImportError as e:
            raise MobilenetsError(f"Core ML export needs the {EXTRA} extra (coremltools does not "
                                  f"import: {e}): pip install 'mobilenets[{EXTRA}]'") from e
    return coremltools


def _quiet(label: str) -> contextlib.AbstractContextManager[None]:
    """coremltools draws progress bars on ``sys.stderr``, warns that it was tested with an
    older torch and logs through torch's loggers: all to the debug log (``--verbose``)."""
    return quiet_third_party(("coremltools", "torch"), label)


def convert(model: nn.Module, preprocessing: dict[str, Any], classes: Sequence[str] | None,
            meta: dict[str, Any], output: Path) -> Path:
    """Write the BN-folded, eval-mode ``model`` as an ML program package at ``output``."""
    ct = require_coremltools()
    channels, size = preprocessing["channels"], preprocessing["input_size"]
    if channels not in (1, 3):
        raise MobilenetsError(f"Core ML image inputs are RGB or grayscale; this model takes "
                              f"{channels} channels")
    wrapped = ImageInput(model, preprocessing["std"]).eval()
    example = torch.zeros(1, channels, size, size)
    labels = list(classes) if classes else [str(i) for i in range(num_outputs(model, preprocessing))]
    image = ct.ImageType(name=INPUT, shape=example.shape, scale=1 / 255,
                         bias=[-m for m in preprocessing["mean"]],
                         color_layout=ct.colorlayout.RGB if channels == 3 else ct.colorlayout.GRAYSCALE)
    with _quiet("while converting to Core ML"), torch.no_grad():
        program = torch.export.export(wrapped, (example,)).run_decompositions({})
        package = ct.convert(program, inputs=[image], classifier_config=ct.ClassifierConfig(labels),
                             convert_to="mlprogram",
                             minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
    package.short_description = (f"{meta.get('model', 'MobileNet')} image classifier "
                                 f"({size}x{size}, {len(labels)} classes), exported by mobilenets")
    package.user_defined_metadata[META_KEY] = json.dumps(meta)
    if output.exists():
        shutil.rmtree(output)
    package.save(str(output))
    return output


def num_outputs(model: nn.Module, preprocessing: dict[str, Any]) -> int:
    """How many classes ``model`` scores, from one forward pass on a blank image."""
    c, size = preprocessing["channels"], preprocessing["input_size"]
    with torch.no_grad():
        return int(model(torch.zeros(1, c, size, size)).shape[1])


def describe(path: Path) -> dict[str, Any]:
    """What a Core ML package says about itself, read without running it: its input (name,
    colour space, size), the normalization its program applies (``scale * pixel + bias``,
    then ``* inv_std``), class labels and our metadata."""
    ct = require_coremltools()
    with _quiet("while reading a Core ML package"):
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    image = spec.description.input[0]
    consts = _input_consts(spec)
    return {"input": image.name, "color": ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(
                image.type.imageType.colorSpace),
            "size": (image.type.imageType.height, image.type.imageType.width),
            "scale": consts.get(f"{INPUT}__scaled__"), "bias": consts.get(f"{INPUT}__biased__"),
            "inv_std": consts.get("inv_std"),
            "outputs": [o.name for o in spec.description.output], "classes": _labels(spec),
            "meta": json.loads(spec.description.metadata.userDefined.get(META_KEY, "{}"))}


def _operations(spec: Any) -> Iterator[Any]:
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            yield from block.operations


def _input_consts(spec: Any) -> dict[str, list[float]]:
    """The constants of the input's normalization: Core ML's scale and bias (float32) and
    :class:`ImageInput`'s ``inv_std`` (float16 bytes, as the program computes in float16)."""
    found: dict[str, list[float]] = {}
    for op in _operations(spec):
        name = op.outputs[0].name if op.type == "const" else ""
        key = next((k for k in (f"{INPUT}__scaled__", f"{INPUT}__biased__", "inv_std") if k in name), None)
        if key is None or key in found:
            continue
        tensor = op.attributes["val"].immediateValue.tensor
        found[key] = (list(tensor.floats.values) if tensor.WhichOneof("value") == "floats"
                      else np.frombuffer(tensor.bytes.values, dtype=np.float16).astype(float).tolist())
    return found


def _labels(spec: Any) -> list[str]:
    """The class labels of the program's ``classify`` operation (an immediate list of strings)."""
    for op in _operations(spec):
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


def check(path: Path, preprocessing: dict[str, Any], classes: Sequence[str] | None,
          num_classes: int) -> None:
    """What can be checked of a package on Linux: it reads back, takes the model's image,
    names every class, and carries the preprocessing."""
    found = describe(path)
    expected_color = "RGB" if preprocessing["channels"] == 3 else "GRAYSCALE"
    size = preprocessing["input_size"]
    problems = []
    if (found["input"], found["color"], found["size"]) != (INPUT, expected_color, (size, size)):
        problems.append(f"input {found['input']} {found['color']} {found['size']}, expected "
                        f"{INPUT} {expected_color} ({size}, {size})")
    if len(found["classes"]) != num_classes or (classes and found["classes"] != list(classes)):
        problems.append(f"{len(found['classes'])} class labels for {num_classes} outputs")
    if not _normalizes(found, preprocessing):
        problems.append(f"its input normalization (scale {found['scale']}, bias {found['bias']}, "
                        f"1/std {found['inv_std']}) is not the preprocessing's")
    if found["meta"].get("preprocessing") != preprocessing:
        problems.append("the preprocessing metadata did not survive the conversion")
    if problems:
        raise MobilenetsError(f"the Core ML export {path} is not right: {'; '.join(problems)}")


def _normalizes(found: dict[str, Any], preprocessing: dict[str, Any]) -> bool:
    """Whether the package computes ``(pixel / 255 - mean) / std`` (1/std in float16)."""
    channels = preprocessing["channels"]
    if None in (found["scale"], found["bias"], found["inv_std"]):
        return False
    scale, bias = np.asarray(found["scale"]), np.asarray(found["bias"])
    inv_std = np.asarray(found["inv_std"])
    return (scale.size == 1 and bias.size == inv_std.size == channels
            and np.allclose(scale * 255, 1, rtol=1e-6)
            and np.allclose(bias, -np.asarray(preprocessing["mean"]), rtol=1e-6, atol=1e-7)
            and np.allclose(inv_std, 1 / np.asarray(preprocessing["std"]), rtol=1e-3))
