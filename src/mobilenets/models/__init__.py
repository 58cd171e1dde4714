"""The networks: plain ``torch.nn`` modules built from the papers' tables."""

from .base import FeatureInfo, FeatureMaps, MobileNet
from .conventions import make_divisible
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3
from .registry import create_model, list_models, model_options

__all__ = ["FeatureInfo", "FeatureMaps", "MobileNet", "MobileNetV1", "MobileNetV2", "MobileNetV3",
           "create_model", "list_models", "make_divisible", "model_options"]
