"""ExecuTorch with the XNNPACK delegate: ``torch.export`` -> ``to_edge_transform_and_lower``
with :class:`XnnpackPartitioner` -> a ``.pte`` program; int8 through the XNNPACK quantizer
(PT2E, symmetric, per-channel weights) calibrated on the given images.

Any batch size, how: the program is exported with a bounded dynamic batch dimension
(``Dim("batch", max=MAX_BATCH)``), which XNNPACK runs without re-planning, and a larger
batch is cut into runs of :data:`MAX_BATCH`. The bound is kept small because ExecuTorch
plans (and allocates at load) every intermediate tensor for the largest batch: 32 V3-Large
images at 224 pixels need about 100 MB, 1024 would need gigabytes.

ExecuTorch 1.5.1's XNNPACK lowering leaves the batch symbol's range at a bound it derives
itself (15 for our models, whatever ``Dim`` said), and the memory planner then sizes the
input for 15 images: a batch of 16 fails with "Attempted to resize a bounded tensor".
:func:`_plan_for` sets the symbol's range back to the one exported before the program is
emitted.

Quiet: torchao warns that it cannot load its CUDA kernels, torch logs deprecations while
tracing; both loggers are captured (``mobilenets --verbose`` shows them). ExecuTorch's C++
prints cpuinfo lines ("manual query on # of cpus dont match") on file descriptor 2 when it
creates its thread pool or loads a program: :func:`mobilenets.logs.captured_descriptors` sends descriptors 1 and 2 to a
file around those calls and passes what came to the debug log. A failing run can still print
ExecuTorch's own C++ error lines before our error, as wrapping every call would cost time.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...io.checkpoint import atomic_write_bytes
from ...logs import captured_descriptors, captured_logs

INT8_NOTE = ("ExecuTorch XNNPACKQuantizer (PT2E): symmetric int8 activations, per-channel "
             "symmetric int8 weights, ranges from the calibration images; run by XNNPACK")

#: The largest batch one call runs; larger batches are cut into runs of this size.
MAX_BATCH = 32
_LOGGERS = ("torchao", "torch", "executorch")
_LOG = logging.getLogger("mobilenets")


def companions(path: Path) -> list[Path]:
    """A ``.pte`` is self-contained: weights and delegate blobs are inside."""
    return []


@contextlib.contextmanager
def _quiet(label: str) -> Iterator[None]:
    """Python loggers captured, known-harmless warnings dropped, C++ prints on fds 1-2 captured.
    The root logger is restored afterwards: XNNPACK's partitioner calls ``logging.basicConfig``
    on import and ExecuTorch logs through the root logger (which configures it too), after
    which every library's warnings would print on the user's terminal."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with captured_logs(_LOGGERS, label), warnings.catch_warnings(), captured_descriptors(label):
            # torch's pytree spec deprecation (raised while torchao/executorch copy specs),
            # torchao's and executorch's own deprecations.
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        root.handlers[:], root.level = handlers, level


def convert(model: nn.Module, example: torch.Tensor, output: Path,
            calibration: np.ndarray | None) -> list[Path]:
    """Write ``model`` as a ``.pte`` lowered to XNNPACK, int8 when ``calibration`` is given."""
    with _quiet("while converting to ExecuTorch"):
        from executorch.exir import to_edge_transform_and_lower
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        if calibration is not None:
            model = _quantize(model, example, calibration)
        program = torch.export.export(model, (example,), dynamic_shapes=_batch_dim())
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        _plan_for(lowered.exported_program())
        delegation = _delegation(lowered.exported_program())
        data = lowered.to_executorch().buffer
    _LOG.debug("ExecuTorch: %s", delegation)  # outside the capture of fd 2, where logs go
    atomic_write_bytes(output, data)
    return [output]


def _batch_dim() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _quantize(model: nn.Module, example: torch.Tensor, calibration: np.ndarray) -> nn.Module:
    """PT2E int8 for XNNPACK: observers inserted, the calibration images run through them in
    runs of :data:`MAX_BATCH`, then folded into quantize/dequantize pairs that the
    partitioner turns into XNNPACK int8 operators."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model, (example,), dynamic_shapes=_batch_dim()).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), MAX_BATCH):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + MAX_BATCH])))
    return convert_pt2e(prepared)


def _delegation(program: Any) -> str:
    """How many operators XNNPACK did not take (they run in ExecuTorch's portable kernels);
    the flatten between pooling and classifier is a view, which costs nothing."""
    names = [str(n.target).split(">: schema")[0].removeprefix("<EdgeOpOverload: ")
             for n in program.graph_module.graph.nodes if n.op == "call_function"]
    delegates = sum("executorch_call_delegate" in name for name in names)
    ops = [name for name in names
           if not any(s in name for s in ("executorch_call_delegate", "getitem", "sym_size"))]
    listed = f": {', '.join(sorted(set(ops)))}" if ops else ""
    return f"{delegates} XNNPACK partition(s), {len(ops)} operator(s) not delegated{listed}"


def _plan_for(lowered: Any) -> None:
    """Give the lowered program's batch symbol the range it was exported with, so that
    memory planning sizes the tensors for :data:`MAX_BATCH` images (see the module's note)."""
    from torch.utils._sympy.value_ranges import ValueRanges

    inputs = [n for n in lowered.graph_module.graph.nodes if n.op == "placeholder"
              and n.name in lowered.graph_signature.user_inputs]
    batch = inputs[0].meta["val"].shape[0]
    if isinstance(batch, torch.SymInt):
        env, symbol = batch.node.shape_env, batch.node.expr
        env.var_to_range[symbol] = ValueRanges(1, MAX_BATCH)


def load(path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The program's ``forward``, on ``threads`` XNNPACK threads (ExecuTorch's thread pool is
    process-wide), run on at most :data:`MAX_BATCH` images at a time (the size the program
    was planned for, read from its metadata) and the runs' logits joined."""
    with _quiet("while loading an ExecuTorch program"):
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        if threads:
            _unsafe_reset_threadpool(threads)
        method = Runtime.get().load_program(Path(path)).load_method("forward")
        if method is None:
            raise ValueError("the program has no forward method")
        sizes = [int(s) for s in method.metadata.input_tensor_meta(0).sizes()]
        # The first run creates the thread pool, whose C++ cpuinfo lines belong in the debug log.
        method.execute([torch.zeros(1, *sizes[1:])])
    limit = sizes[0]

    def run(x: np.ndarray) -> np.ndarray:
        outs = [method.execute([torch.from_numpy(np.ascontiguousarray(x[i:i + limit]))])[0].numpy()
                for i in range(0, len(x), limit)]
        return np.concatenate(outs).astype(np.float32, copy=False)

    return run
