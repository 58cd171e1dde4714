"""mobilenets: the MobileNet family (V1, V2, V3-Large/Small), faithful to the papers."""

from .base import FeatureInfo, FeatureMaps, MobileNet
from .conventions import make_divisible
from .errors import MobilenetsError
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3
from .registry import create_model, list_models, model_options

__version__ = "0.1.0"

__all__ = [
    "FeatureInfo", "FeatureMaps", "MobileNet", "MobileNetV1", "MobileNetV2", "MobileNetV3",
    "MobilenetsError", "create_model", "list_models", "make_divisible", "model_options",
]
