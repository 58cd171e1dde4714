"""The mobile and edge runtimes people ship MobileNets with, behind one interface.

Each runtime is one module here, written with that runtime's own converter and quantizer,
and exposing the same four names, which :mod:`mobilenets.deploy.export` (write, reload,
check), :mod:`mobilenets.io.artifact` (load) and :mod:`mobilenets.deploy.bench` (time) call:

* ``convert(model, example, output, calibration) -> list[Path]``: write the BN-folded,
  eval-mode ``model`` to ``output`` (and any companion files, returned after it), float32
  when ``calibration`` is ``None``, else int8 calibrated on that float32 NCHW batch
  (already preprocessed). ``example`` is a float32 batch of 2 with the input's shape.
* ``load(path, threads) -> Callable[[np.ndarray], np.ndarray]``: float32 NCHW batch of any
  size in, float32 logits out.
* ``companions(path) -> list[Path]``: the files that travel with ``path`` (OpenVINO's
  ``.bin`` beside its ``.xml``).
* ``INT8_NOTE``: how int8 is made, for the artifact's metadata.

The runtimes are optional extras (``pip install 'mobilenets[openvino]'``): :func:`require`
imports a runtime's module and, if its packages are missing, says which extra to install.
The preprocessing and class names travel in a sidecar ``<file>.json`` (as for ``.pt2``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ...errors import MobilenetsError
from ...logs import captured_descriptors, captured_logs


@dataclass(frozen=True)
class Runtime:
    """One runtime: the export format's name (its file suffix is in
    :data:`mobilenets.io.artifact.EXTENSIONS`) and the extra that installs it."""

    format: str
    extra: str
    packages: tuple[str, ...]  # importable names the module needs
    description: str


RUNTIMES: dict[str, Runtime] = {r.format: r for r in (
    Runtime("openvino", "openvino", ("openvino", "nncf"),
            "OpenVINO IR (.xml graph + .bin weights) on the CPU plugin; int8 through NNCF"),
    Runtime("executorch", "executorch", ("executorch", "torchao"),
            "ExecuTorch program (.pte) lowered to the XNNPACK delegate; int8 through the "
            "XNNPACK PT2E quantizer"),
    # LiteRT: the interpreter is all that loading needs; the converter (litert_torch, 7 s to
    # import) is checked when converting, with the same message (runtimes/litert.py).
    Runtime("litert", "litert", ("ai_edge_litert",),
            "LiteRT (formerly TensorFlow Lite) .tflite on its interpreter with XNNPACK; int8 "
            "through litert-torch's PT2E quantizer"),
)}


def require(fmt: str) -> ModuleType:
    """The module of runtime ``fmt``, once its packages import; else one error naming the extra."""
    runtime = RUNTIMES[fmt]
    # Importing is quiet: torchao logs that it cannot load its CUDA kernels on a CPU machine,
    # torch logs deprecations (shown at debug level, mobilenets --verbose).
    label = f"while importing the {fmt} runtime"
    with captured_logs((*runtime.packages, "torch"), label), captured_descriptors(label):
        for package in runtime.packages:
            try:
                importlib.import_module(package)
            except ImportError as e:
                raise MobilenetsError(f"the {fmt} runtime needs the {runtime.extra} extra ({package} does "
                                      f"not import: {e}): pip install 'mobilenets[{runtime.extra}]'") from e
    return importlib.import_module(f"{__name__}.{fmt}")
