"""OpenVINO IR: ``ov.convert_model`` from the PyTorch model, int8 through NNCF's
post-training quantization, run on OpenVINO's CPU plugin.

Two settings matter on this kind of CPU (../shared/RUNTIMES.md): the IR is saved with
float32 weights (``save_model`` compresses to fp16 by default), and the CPU plugin is asked
for float32 inference (``INFERENCE_PRECISION_HINT``), because on CPUs with bf16 instructions
it otherwise runs in bf16, 2-8 % of the largest logit off and slower.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...logs import captured_logs

INT8_NOTE = ("NNCF post-training quantization (default preset: symmetric int8 weights and "
             "activations, fast bias correction), MinMax ranges from the calibration images")

_LOGGERS = ("nncf", "openvino")


def companions(path: Path) -> list[Path]:
    """The weights file that ``read_model`` finds beside the graph."""
    return [path.with_suffix(".bin")]


def convert(model: nn.Module, example: torch.Tensor, output: Path,
            calibration: np.ndarray | None) -> list[Path]:
    """Write ``model`` as IR (batch dimension dynamic), int8 when ``calibration`` is given."""
    import openvino as ov

    with captured_logs(_LOGGERS, "while converting to OpenVINO"):
        graph = ov.convert_model(model, example_input=example,
                                 input=[(-1, *example.shape[1:])])
        if calibration is not None:
            graph = _quantize(graph, calibration)
        ov.save_model(graph, str(output), compress_to_fp16=False)
    return [output, *companions(output)]


def _quantize(graph: object, calibration: np.ndarray) -> object:
    """NNCF on the IR, one calibration image per sample. NNCF draws its progress bars with
    ``rich`` on ``sys.stderr``: they go to the debug log instead (``--verbose``)."""
    import nncf

    samples = [calibration[i:i + 1] for i in range(len(calibration))]
    shown = io.StringIO()
    try:
        with contextlib.redirect_stderr(shown), contextlib.redirect_stdout(shown):
            return nncf.quantize(graph, nncf.Dataset(samples), subset_size=len(samples))
    finally:
        if shown.getvalue():
            logging.getLogger("mobilenets").debug("NNCF:\n%s", shown.getvalue())


def load(path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The IR compiled for this CPU in float32 (int8 layers stay int8), latency-tuned."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    output = compiled.outputs[0]
    return lambda x: np.asarray(compiled(x)[output], dtype=np.float32)
