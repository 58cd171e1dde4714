"""Topic ``memory``: V2 Table 3 (the largest tensor per resolution) from the real V1 and V2,
and V2's peak activation memory with its bottlenecks computed whole or in groups (V2 §5.1,
eq. 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import MobilenetsError
from ...models.base import MobileNet
from ...models.blocks import InvertedResidual
from ...models.layers import ConvNormAct, SqueezeExcite
from ...models.registry import create_model
from .common import example_input, profile_cached
from .published import V2_TABLE_3
from .split import SplitInvertedResidual, split_memory_bound, split_network


@dataclass
class LargestTensor:
    """The widest tensor at one spatial size: ``kb`` = channels·H·W·2 bytes / 1000 (fp16)."""

    size: int
    channels: int
    kb: float
    layer: str


def largest_tensors(model: MobileNet, input_size: int = 224, *, level: str = "blocks",
                    exclude: Sequence[str] = ()) -> dict[int, LargestTensor]:
    """The largest output tensor per spatial size of one forward pass (batch 1).

    ``level="blocks"``: outputs of the stem, each block, the last conv, the pool and the
    classifier, i.e. the tensors that must exist whole between blocks (V2 Table 3's
    view: a bottleneck's expansion need not, §5.1). ``level="ops"``: every leaf module's
    output, expansions included. ``exclude``: module names left out (the V2 caption's
    "first layer" trick).
    """
    if level not in ("blocks", "ops"):
        raise MobilenetsError(f"level must be 'blocks' or 'ops', got {level!r}")
    if level == "blocks":
        targets = [(f"features.{i}", m) for i, m in enumerate(model.features)]
        targets += [("pool", model.pool), ("classifier", model.classifier)]
    else:
        targets = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    best: dict[int, LargestTensor] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            size = out.shape[-1] if out.ndim == 4 else 1
            area = out.shape[-1] * out.shape[-2] if out.ndim == 4 else 1
            if size not in best or out.shape[1] > best[size].channels:
                best[size] = LargestTensor(size, out.shape[1], out.shape[1] * area * 2 / 1000, name)
        return fn

    hooks = [m.register_forward_hook(hook(n)) for n, m in targets if n not in exclude]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return dict(sorted(best.items(), reverse=True))


@dataclass
class ResolutionRow:
    """One row of V2 Table 3: the real networks' largest tensors and the published
    ((channels, Kb)) cells.

    ``v2_bottlenecks`` leaves out V2's first conv (32 channels at 112², which the caption
    says can be computed in pieces, §5) and its last 1×1 conv (1280 channels at 7²,
    reduced by the pool right after), i.e. it looks at the bottleneck tensors only.
    ``v2_all_ops`` also sees the expansions that a block computed whole materialises.
    """

    size: int
    v1: LargestTensor
    v2: LargestTensor
    v2_bottlenecks: LargestTensor
    v2_all_ops: LargestTensor
    published_v1: tuple[int, int]
    published_v2: tuple[int, int]


_OPS = (ConvNormAct, SqueezeExcite, nn.AdaptiveAvgPool2d, nn.Linear, SplitInvertedResidual)


def op_memory(model: nn.Module, input_size: int = 224) -> tuple[dict[str, int], torch.Tensor]:
    """V2 §5.1 eq. 2 per operation: the size of its inputs + outputs (batch 1).

    Conv-BN-activation is one operation (BN folds into the conv at inference), each
    residual addition is one (two inputs, one output, keyed by its block's name), and a
    :class:`SplitInvertedResidual` is one of its measured ``peak_elements``. Returns
    ({operation: elements}, logits); the network's memory is the max of the values.
    """
    sizes: dict[str, int] = {}

    def hook(name: str):
        def fn(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if isinstance(m, SplitInvertedResidual):
                sizes[name] = m.peak_elements
            elif isinstance(m, InvertedResidual):
                sizes[name] = 3 * out.numel()  # the residual addition: x, F(x) -> y
            else:
                sizes[name] = sum(t.numel() for t in inp) + out.numel()
        return fn

    hooks, ops = [], []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in ops):
            continue
        if isinstance(m, _OPS):
            hooks.append(m.register_forward_hook(hook(name)))
            ops.append(name)
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            hooks.append(m.register_forward_hook(hook(name)))
    model.eval()
    try:
        with torch.no_grad():
            logits = model(example_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
    return sizes, logits


def split_bound(model: MobileNet, t: int, input_size: int = 224,
                sizes: dict[str, int] | None = None) -> tuple[int, str]:
    """The network's memory with every bottleneck split in ``min(t, channels)`` groups,
    from :func:`split_memory_bound` alone (nothing split is run): the max over the other
    operations (``sizes`` from :func:`op_memory` of the unsplit model) and the blocks'
    bounds. Returns (elements, where)."""
    if sizes is None:
        sizes, _ = op_memory(model, input_size)
    inputs: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, inp, i=i: inputs.__setitem__(i, tuple(inp[0].shape[-2:])))
        for i, m in enumerate(model.features) if isinstance(m, InvertedResidual)]
    try:
        with torch.no_grad():
            model.features(example_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
    blocks = [f"features.{i}" for i in inputs]
    best = max(((v, k) for k, v in sizes.items()
                if not any(k == b or k.startswith(b + ".") for b in blocks)), default=(0, ""))
    for i, (h, w) in inputs.items():
        block = model.features[i]
        best = max(best, (split_memory_bound(block, min(t, block.exp_channels), h, w), f"features.{i}"))
    return best


@dataclass
class PeakRow:
    """Peak activation memory of V2 with its bottlenecks in ``t`` groups.

    ``t = 1``: unsplit, eq. 2 over the fused operations. For ``t > 1``: ``bound`` from
    :func:`split_bound`; ``measured`` from running the split network (``None`` where it
    was not run) and ``same_logits`` whether it computes the unsplit network's logits.
    ``t = 0`` stands for one channel per group (the paper's n = t).
    """

    t: int
    bound: int
    where: str
    measured: int | None
    same_logits: bool | None

    @property
    def kb16(self) -> float:
        return self.bound * 2 / 1000


@dataclass
class MemoryResult:
    resolution: int
    rows: list[ResolutionRow]
    peaks: list[PeakRow]
    profiler_peak_elements: int  # mobilenets.analysis.profile: every leaf op (BN, ReLU6 separately)
    profiler_peak_layer: str


def memory(input_size: int = 224, run: Sequence[int] = (2, 3, 4, 5, 6),
           bound_only: Sequence[int] = (0,)) -> MemoryResult:
    """V2 Table 3 from the real V1 and V2, and V2's peak memory with and without splitting.

    ``run``: group counts whose split network is built and run (and checked against the
    unsplit logits); ``bound_only``: group counts reported from the formula alone, ``0``
    meaning one channel per group (running that builds thousands of one-channel layers).
    """
    v1 = create_model("mobilenet_v1")
    v2 = create_model("mobilenet_v2")
    t1 = largest_tensors(v1, input_size)
    t2 = largest_tensors(v2, input_size)
    last = f"features.{len(v2.features) - 1}"
    t2_bottlenecks = largest_tensors(v2, input_size, exclude=("features.0", last))
    t2_ops = largest_tensors(v2, input_size, level="ops")
    rows = [ResolutionRow(s, t1[s], t2[s], t2_bottlenecks[s], t2_ops[s], pub["mobilenet_v1"],
                          pub["mobilenet_v2"])
            for s, pub in V2_TABLE_3.items() if s in t1 and s in t2]
    sizes, logits = op_memory(v2, input_size)
    where = max(sizes, key=sizes.__getitem__)
    peaks = [PeakRow(1, sizes[where], where, sizes[where], True)]
    for t in run:
        bound, where = split_bound(v2, t, input_size, sizes)
        split_sizes, split_logits = op_memory(split_network(v2, t), input_size)
        same = bool(torch.allclose(split_logits, logits, rtol=1e-4, atol=1e-5))
        peaks.append(PeakRow(t, bound, where, max(split_sizes.values()), same))
    for t in bound_only:
        bound, where = split_bound(v2, t if t > 0 else max(m.exp_channels for m in v2.features
                                                          if isinstance(m, InvertedResidual)),
                                   input_size, sizes)
        peaks.append(PeakRow(t, bound, where, None, None))
    prof = profile_cached("mobilenet_v2", input_size, ())
    return MemoryResult(input_size, rows, peaks, prof.peak_activation_elements,
                        prof.peak_activation_layer)

