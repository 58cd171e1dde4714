"""mobilenets: the MobileNet family (V1, V2, V3-Large/Small), faithful to the papers.

The public API is here; each job has its own package: ``models`` (the networks), ``ops``
(CPU speed-ups), ``data``, ``io`` (checkpoints, converters, the artifact loader),
``training``, ``deploy``, ``analysis`` and ``cli``.
"""

from . import _moved
from .analysis.profile import Profile, profile
from .errors import MobilenetsError
from .io.checkpoint import load_model, save_model
from .io.convert import from_keras, from_timm, from_torchvision
from .models import (FeatureInfo, FeatureMaps, MobileNet, MobileNetV1, MobileNetV2, MobileNetV3,
                     create_model, list_models, make_divisible, model_options)

__version__ = "0.1.0"

__all__ = [
    "FeatureInfo", "FeatureMaps", "MobileNet", "MobileNetV1", "MobileNetV2", "MobileNetV3",
    "MobilenetsError", "Profile", "create_model", "from_keras", "from_timm", "from_torchvision",
    "list_models", "load_model", "make_divisible", "model_options", "profile", "save_model",
]

_moved.install()
__getattr__ = _moved.module_attribute
