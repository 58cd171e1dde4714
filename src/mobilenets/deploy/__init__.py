"""Ship a model: export formats, int8, parity checks, latency, prediction.

One module per job: :mod:`.fold` (BatchNorm folding, the bf16 copy), :mod:`.onnx`,
:mod:`.torchscript`, :mod:`.pt2` (the exporters), :mod:`.int8` and :mod:`.int8_rewrite`
(quantization), :mod:`.calibration`, :mod:`.parity`, :mod:`.preprocess`, :mod:`.export`
(the checked export of a model or checkpoint), :mod:`.bench`, :mod:`.candidates` and
:mod:`.pick` (the model for a latency budget), :mod:`.predict`.
"""

from ..io.artifact import Artifact, load_artifact
from .calibration import load_calibration_images
from .export import ExportResult, export_checkpoint, export_model
from .fold import bf16_inference, fold_batchnorm, prepare_for_inference
from .int8 import quantize_onnx
from .int8_rewrite import int8_friendly
from .parity import Parity, check_parity
from .preprocess import preprocess

__all__ = ["Artifact", "ExportResult", "Parity", "bf16_inference", "check_parity",
           "export_checkpoint", "export_model", "fold_batchnorm", "int8_friendly",
           "load_artifact", "load_calibration_images", "prepare_for_inference", "preprocess",
           "quantize_onnx"]
