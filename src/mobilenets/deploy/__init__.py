"""Ship a model: export formats, int8, parity checks, latency, prediction."""

from ..io.artifact import Artifact, load_artifact
from .export import (bf16_inference, export_checkpoint, export_model, fold_batchnorm,
                     prepare_for_inference, preprocess, quantize_onnx)

__all__ = ["Artifact", "bf16_inference", "export_checkpoint", "export_model", "fold_batchnorm",
           "load_artifact", "prepare_for_inference", "preprocess", "quantize_onnx"]
