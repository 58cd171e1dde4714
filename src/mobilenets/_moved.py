"""Import paths from before the package layout (issue 27), kept working.

``import mobilenets.train`` and friends resolve to the module's new home, so code written
against the flat layout keeps running. ``mobilenets.profile`` is now the function
``profile(model, resolution)``, so its old module path fails with a message naming the new one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: old module (below ``mobilenets.``) -> its new home
MOVED: dict[str, str] = {
    "base": "models.base", "layers": "models.layers", "blocks": "models.blocks",
    "mobilenet_v1": "models.mobilenet_v1", "mobilenet_v2": "models.mobilenet_v2",
    "mobilenet_v3": "models.mobilenet_v3", "registry": "models.registry",
    "conventions": "models.conventions", "cpu": "ops.cpu", "augment": "data.augment",
    "checkpoint": "io.checkpoint", "convert": "io.convert", "train": "training",
    "qat": "training.qat", "bench": "deploy.bench", "predict": "deploy.predict",
    "paper": "analysis.paper",
}
#: old modules whose name is now taken by a function at the top level
REPLACED: dict[str, str] = {"profile": "analysis.profile"}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported under its own name; the import system has
        just set its ``__spec__`` to the old name's, so give it back its own."""
        module.__spec__ = self.own_spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``mobilenets.<old>`` for the names in :data:`MOVED` and :data:`REPLACED`."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        package, _, name = fullname.partition(".")
        if package != "mobilenets" or "." in name:
            return None
        if name in REPLACED:
            raise ModuleNotFoundError(
                f"mobilenets.{name} is now the function mobilenets.{name}(model, resolution); "
                f"the module moved to mobilenets.{REPLACED[name]}", name=fullname)
        if name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(f"mobilenets.{MOVED[name]}"))


def module_attribute(name: str) -> ModuleType:
    """``mobilenets.<old>`` as an attribute of the package (its ``__getattr__``, PEP 562):
    before the layout ``import mobilenets`` alone made ``mobilenets.blocks`` and the other
    model modules reachable, so old names are imported on first use."""
    if name in MOVED:
        return importlib.import_module(f"mobilenets.{name}")
    raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (idempotent)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
