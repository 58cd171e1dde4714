"""Ship a trained MobileNet: write an export, load it back, and refuse it unless it
reproduces the model.

The path from a checkpoint to a deployed file is

1. :func:`~mobilenets.deploy.fold.prepare_for_inference`: a copy in eval mode with every
   BatchNorm folded into the convolution before it and dropout removed (:mod:`.fold`).
2. :func:`export_model`: write ONNX (:mod:`.onnx`), TorchScript (:mod:`.torchscript`) or a
   ``torch.export`` program (:mod:`.pt2`), all with a dynamic batch dimension. The file is
   then loaded back with the runtime that will serve it and compared with the PyTorch model
   (:func:`~mobilenets.deploy.parity.check_parity`): an export that does not reproduce the
   model is an error, not a warning, and never replaces the file that was there.
3. Optionally int8 (:func:`~mobilenets.deploy.int8.quantize_onnx`), calibrated on real
   images (:mod:`.calibration`).

Core ML (:mod:`.coreml`) is the exception: it runs only on Apple devices, so its package is
converted and checked as far as Linux allows (input, normalization, labels, metadata), not run.

The preprocessing (input size, channels, mean/std) and class names travel with every
artifact: inside the ONNX file (``metadata_props["mobilenets"]``), in a sidecar
``<file>.json`` for TorchScript and ``.pt2``.
:func:`~mobilenets.io.artifact.load_artifact` reads any of them back as a callable on
float32 NCHW arrays.

The names that lived here before the split (``fold_batchnorm``, ``quantize_onnx``,
``check_parity``, ...) are re-exported, so ``mobilenets.deploy.export.X`` keeps working.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import MobilenetsError
from ..data.preprocessing import Preprocessing, as_preprocessing
from ..io.artifact import (EXTENSIONS, META_KEY, Artifact, load_artifact, onnx_session,
                           require_checkpoint, require_onnx, sidecar_path, torchscript_quietly)
from ..io.checkpoint import atomic_write_bytes, checkpoint_file, load_model
from ..models.conventions import check_choice
from . import coreml
from .calibration import ImageCalibrationReader, batches, load_calibration_images
from .fold import Bf16Inference, bf16_inference, fold_batchnorm, fold_conv_bn_, prepare_for_inference
from .int8 import INT8_NOTE, quantize_onnx
from .int8_rewrite import int8_friendly
from .onnx import ONNX_OPSET, onnx_bytes
from .parity import FLOAT_TOLERANCE, INT8_TOLERANCE, Parity, check_parity, top1_agreement
from .preprocess import input_channels, preprocess, resolve_preprocessing
from .pt2 import pt2_bytes
from .runtimes import RUNTIMES, require
from .torchscript import torchscript_bytes
from .tracing import INPUT_NAME, OUTPUT_NAME

__all__ = [
    "EXTENSIONS", "FLOAT_TOLERANCE", "FORMATS", "INPUT_NAME", "INT8_NOTE", "INT8_TOLERANCE",
    "META_KEY", "ONNX_OPSET", "OUTPUT_NAME", "Artifact", "Bf16Inference", "ExportResult",
    "ImageCalibrationReader", "Parity", "artifact_metadata", "batches", "bf16_inference",
    "check_parity", "default_output", "export_checkpoint", "export_model", "fold_batchnorm",
    "fold_conv_bn_", "input_channels", "int8_friendly", "load_artifact",
    "load_calibration_images", "onnx_bytes", "onnx_session", "prepare_for_inference",
    "preprocess", "pt2_bytes", "quantize_onnx", "require_onnx", "resolve_preprocessing",
    "sidecar_path", "torchscript_bytes", "torchscript_quietly",
]

#: ``coreml`` is converted but not run: Core ML runs only on Apple devices (:mod:`.coreml`).
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "pt2", *RUNTIMES, "coreml")
#: The formats that ``int8=True`` quantizes: ONNX through onnxruntime, the runtimes through
#: their own quantizers.
INT8_FORMATS: tuple[str, ...] = ("onnx", *RUNTIMES)


def artifact_metadata(model: nn.Module, preprocessing: dict[str, Any],
                      classes: Sequence[str] | None, fmt: str, **extra: Any) -> dict[str, Any]:
    """What an artifact carries besides its graph: enough to feed it and read its output."""
    meta = {"format": fmt, "model": getattr(model, "model_name", type(model).__name__),
            "model_kwargs": dict(getattr(model, "model_kwargs", {})),
            "preprocessing": preprocessing, "classes": list(classes) if classes else None,
            "input": INPUT_NAME, "output": OUTPUT_NAME, "mobilenets_version": __version__}
    meta.update(extra)
    return meta


def _write_sidecar(path: Path, meta: dict[str, Any], data: bytes,
                   companions: Sequence[Path] = ()) -> None:
    """The sidecar records the SHA-256 of the artifact (and of its companion files, keyed by
    suffix), so that a model file later replaced beside it is refused instead of served
    with another model's classes and normalization."""
    meta = {**meta, "artifact_sha256": hashlib.sha256(data).hexdigest()}
    if companions:
        meta["companions_sha256"] = {p.suffix: hashlib.sha256(p.read_bytes()).hexdigest()
                                     for p in companions}
    atomic_write_bytes(sidecar_path(path), (json.dumps(meta, indent=2) + "\n").encode())


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how well it reproduces the model."""

    path: Path
    format: str
    int8: bool
    #: None for Core ML, which cannot run here (:data:`.coreml.NOT_RUN`).
    parity: Parity | None
    files: list[Path]
    #: int8 ONNX only: whether the weights were rounded to 7 bits (:func:`quantize_onnx`).
    reduce_range: bool | None = None
    #: int8 only: top-1 agreement with the float model on every calibration image.
    agreement: float | None = None

    def summary(self) -> str:
        kind = {"onnx": "ONNX", "coreml": "Core ML"}.get(self.format, self.format)
        if self.int8:
            kind = f"int8 {kind}" + (" (7-bit weights, for x86 CPUs without VNNI)" if self.reduce_range else "")
        lines = [f"exported {kind} -> {self.path}",
                 f"parity: {self.parity.summary() if self.parity else 'not checked: ' + coreml.NOT_RUN}"]
        if self.agreement is not None:
            lines.append(f"int8 top-1 agreement with the float model: {self.agreement:.1%} of the "
                         "calibration images (accuracy on held-out data: mobilenets eval FILE --data ...)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- checks

def _check_request(fmt: str, int8: bool, reduce_range: bool | None = None) -> None:
    check_choice("format", fmt, FORMATS)
    if int8 and fmt not in INT8_FORMATS:
        hint = ("; Core ML compresses weights on the .mlpackage itself (coremltools.optimize, "
                "docs/deployment.md)") if fmt == "coreml" else ""
        raise MobilenetsError(f"int8 export is for {', '.join(INT8_FORMATS)}, not {fmt}{hint}")
    if reduce_range is not None and not (int8 and fmt == "onnx"):
        raise MobilenetsError("--reduce-range chooses onnxruntime's int8 weight range; it needs "
                              "--format onnx --int8")
    if fmt in RUNTIMES:
        require(fmt)  # a missing extra is said before any work
    if fmt == "coreml":
        coreml.require_coremltools()


def default_output(checkpoint: str | os.PathLike, fmt: str, int8: bool = False) -> Path:
    """``run/best.safetensors`` (or ``run``) → ``run/best.onnx`` (``.int8.onnx``, ``.pt``,
    ``.pt2``, ``.xml``, ...)."""
    base = checkpoint_file(checkpoint).with_suffix("")
    return base.with_name(base.name + (".int8" if int8 else "") + EXTENSIONS[fmt])


def _check_output(output: Path, fmt: str) -> None:
    """Before anything is written: a file name whose suffix fits the format, so that a
    slip (``-o best.safetensors``, ``-o photo.png``) cannot replace another file."""
    if output.is_dir() and fmt != "coreml":  # an .mlpackage is a directory
        raise MobilenetsError(f"output {output} is a directory; give a file name")
    if output.suffix != EXTENSIONS[fmt]:
        raise MobilenetsError(f"output {output}: a {fmt} export is a {EXTENSIONS[fmt]} file; "
                              f"give a name ending in {EXTENSIONS[fmt]}")


def _check_tolerance(tolerance: float | None) -> None:
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise MobilenetsError(f"tolerance must be a positive number, got {tolerance}")


# ----------------------------------------------------------------------------- export

def _write(ready: nn.Module, fmt: str, staged: Path, meta: dict[str, Any],
           preprocessing: dict[str, Any], calibration_images: torch.Tensor | None,
           reduce_range: bool | None, int8: bool) -> None:
    """Write the artifact (and its sidecar) to ``staged``, int8 when ``int8``."""
    if fmt == "onnx":
        data = onnx_bytes(ready, preprocessing, meta)
        if not int8:
            atomic_write_bytes(staged, data)
            return
        with tempfile.TemporaryDirectory(prefix="mobilenets-export-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            fp32.write_bytes(data)
            quantize_onnx(fp32, staged, calibration_images, preprocessing, reduce_range=reduce_range)
        return
    if fmt in RUNTIMES:
        _write_runtime(ready, fmt, staged, meta, preprocessing, calibration_images if int8 else None)
        return
    data = torchscript_bytes(ready, preprocessing) if fmt == "torchscript" \
        else pt2_bytes(ready, preprocessing)
    atomic_write_bytes(staged, data)
    _write_sidecar(staged, meta, data)


def _write_runtime(ready: nn.Module, fmt: str, staged: Path, meta: dict[str, Any],
                   preprocessing: dict[str, Any], calibration_images: torch.Tensor | None) -> None:
    """A runtime's artifact through its own converter (:mod:`.runtimes`), then the sidecar."""
    runtime = require(fmt)
    c, s = preprocessing["channels"], preprocessing["input_size"]
    example = torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(0))
    calibration = None
    if calibration_images is not None:
        calibration = preprocess(calibration_images, preprocessing)
        meta = {**meta, "int8": {"method": runtime.INT8_NOTE, "calibration_images": len(calibration)}}
    files = runtime.convert(ready, example, staged, calibration)
    _write_sidecar(staged, meta, staged.read_bytes(), files[1:])


def _parity_inputs(calibration_images: torch.Tensor | None,
                   preprocessing: dict[str, Any]) -> tuple[np.ndarray, bool]:
    """Real images when there are two or more (they exercise the int8 ranges that matter),
    otherwise standard-normal inputs, which is what normalised images look like; and
    whether they are images."""
    if calibration_images is not None and len(calibration_images) >= 2:
        return preprocess(calibration_images[:8], preprocessing), True
    c, s = preprocessing["channels"], preprocessing["input_size"]
    return torch.randn(4, c, s, s, generator=torch.Generator().manual_seed(1)).numpy(), False


def _accept(staged: Path, output: Path, fmt: str, reference: nn.Module,
            parity_inputs: tuple[np.ndarray, bool], tolerance: float,
            agreement_inputs: np.ndarray | None) -> tuple[Parity, float | None, list[Path]]:
    """Move ``staged`` to ``output`` if it reproduces ``reference``; otherwise keep it
    beside ``output`` as ``*.rejected*`` and raise. Returns the parity, the top-1 agreement
    with ``reference`` on ``agreement_inputs`` (int8: every calibration image) and the files."""
    inputs, are_images = parity_inputs
    try:
        artifact = load_artifact(staged, trust_code=True)
        parity = check_parity(artifact, reference, inputs, tolerance)
        agreement = (top1_agreement(artifact, reference, agreement_inputs)
                     if agreement_inputs is not None and parity.ok else None)
    except BaseException:
        _discard(staged)
        raise
    if not parity.ok:
        on_noise = "" if are_images else " (on random inputs: give two or more calibration images)"
        rejected = output.with_name(f"{output.stem}.rejected{output.suffix}")
        _move(staged, rejected)
        raise MobilenetsError(f"the {fmt} export does not reproduce the PyTorch model{on_noise}: "
                              f"{parity.summary()}; it is kept for inspection as {rejected}"
                              + (f", and {output} is unchanged" if output.exists() else ""))
    return parity, agreement, _move(staged, output)


def export_model(model: nn.Module, fmt: str, output: str | os.PathLike, *,
                 preprocessing: Preprocessing | dict[str, Any], classes: Sequence[str] | None = None,
                 int8: bool = False, calibration_images: torch.Tensor | None = None,
                 tolerance: float | None = None, extra_meta: dict[str, Any] | None = None,
                 reduce_range: bool | None = None) -> ExportResult:
    """Export ``model`` as ``fmt`` to ``output``, reload it and check it against ``model``.

    ``calibration_images`` (uint8 ``(N, C, H, W)``) are required for ``int8`` and, when
    given, also serve as the parity inputs. ``classes`` default to ``preprocessing``'s.
    Raises :class:`MobilenetsError` when the
    artifact differs from the model by more than ``tolerance`` (default
    :data:`FLOAT_TOLERANCE`, :data:`INT8_TOLERANCE`). ``reduce_range``: 7-bit int8 weights,
    see :func:`quantize_onnx`.
    """
    _check_request(fmt, int8, reduce_range)
    pre = as_preprocessing(preprocessing)
    classes = classes if classes is not None else pre.classes
    preprocessing = pre.record()
    if int8 and (calibration_images is None or len(calibration_images) == 0):
        raise MobilenetsError("int8 needs calibration images (--calibration-data PATH)")
    output = Path(output)
    _check_output(output, fmt)
    _check_tolerance(tolerance)
    if int8 and fmt == "onnx" and reduce_range is None:
        from ..ops.cpu import reduce_range_default
        reduce_range = reduce_range_default()
    reference = copy.deepcopy(model).eval()
    meta = artifact_metadata(model, preprocessing, classes, fmt, **(extra_meta or {}))
    if fmt == "coreml":
        return _export_coreml(prepare_for_inference(model), output, meta, preprocessing, classes)
    # Written under a staging name and moved into place only once the parity check passes:
    # a failed export never replaces the artifact that was there.
    staged = output.with_name(f".{output.stem}.staging{output.suffix}")
    _write(prepare_for_inference(model), fmt, staged, meta, preprocessing, calibration_images,
           reduce_range if int8 else None, int8)
    if tolerance is None:
        tolerance = INT8_TOLERANCE if int8 else FLOAT_TOLERANCE
    parity, agreement, files = _accept(
        staged, output, fmt, reference, _parity_inputs(calibration_images, preprocessing),
        tolerance, preprocess(calibration_images, preprocessing) if int8 else None)
    return ExportResult(output, fmt, int8, parity, files, reduce_range if int8 else None, agreement)


def _export_coreml(ready: nn.Module, output: Path, meta: dict[str, Any],
                   preprocessing: dict[str, Any], classes: Sequence[str] | None) -> ExportResult:
    """Core ML: converted under a staging name, read back and checked as far as Linux can
    (:func:`.coreml.check`), then swapped in for any package that was there."""
    staged = output.with_name(f".{output.stem}.staging{output.suffix}")
    try:
        coreml.convert(ready, preprocessing, classes, meta, staged)
        coreml.check(staged, preprocessing, classes, coreml.num_outputs(ready, preprocessing))
        old = output.with_name(f".{output.stem}.old{output.suffix}")
        shutil.rmtree(old, ignore_errors=True)  # left by a process killed mid-swap
        if output.exists():
            os.replace(output, old)
        os.replace(staged, output)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return ExportResult(output, "coreml", False, None, [output])


def _staged_files(staged: Path) -> list[Path]:
    """Everything written under the staging name: the artifact, its sidecar, its companions."""
    return sorted(p for p in staged.parent.glob(f"{glob.escape(staged.stem)}.*")
                  if p.name.startswith(staged.stem + "."))


def _move(src: Path, dst: Path) -> list[Path]:
    """An artifact and the files written with it (sidecar, companions) renamed together:
    ``.best.staging.xml.json`` -> ``best.xml.json``. Returns the new paths, artifact first."""
    moved = []
    for p in _staged_files(src):
        target = dst.with_name(dst.stem + p.name[len(src.stem):])
        os.replace(p, target)
        moved.append(target)
    return sorted(moved, key=lambda p: p != dst)


def _discard(path: Path) -> None:
    for p in _staged_files(path):
        p.unlink(missing_ok=True)


def export_checkpoint(checkpoint: str | os.PathLike, fmt: str,
                      output: str | os.PathLike | None = None, *, int8: bool = False,
                      calibration_data: str | os.PathLike | None = None,
                      calibration_size: int = 256,
                      tolerance: float | None = None,
                      reduce_range: bool | None = None) -> ExportResult:
    """:func:`export_model` for a checkpoint file (or run directory), with its preprocessing
    and classes. An ``output`` that is a directory (or ends in ``/``) gets the default name."""
    _check_request(fmt, int8, reduce_range)
    _check_tolerance(tolerance)
    require_checkpoint(checkpoint, "export")
    folder = output is not None and (Path(output).is_dir() or str(output).endswith(("/", os.sep)))
    if folder and Path(str(output).rstrip("/" + os.sep)).suffix != EXTENSIONS["coreml"]:
        output = Path(output) / default_output(checkpoint, fmt, int8).name
    if output is not None:
        _check_output(Path(output), fmt)
    model, meta = load_model(checkpoint)
    preprocessing = resolve_preprocessing(model, meta)
    if int8 and calibration_data is None:
        raise MobilenetsError("--int8 needs --calibration-data (a dataset name such as "
                              "fashion-mnist, or a directory of training images)")
    images = (load_calibration_images(calibration_data, calibration_size, preprocessing.record(),
                                      holdout=meta.get("holdout"))
              if calibration_data is not None else None)
    return export_model(model, fmt, output or default_output(checkpoint, fmt, int8),
                        preprocessing=preprocessing, classes=meta.get("classes"), int8=int8,
                        calibration_images=images, tolerance=tolerance, reduce_range=reduce_range,
                        extra_meta={"holdout": meta["holdout"]} if "holdout" in meta else None)
