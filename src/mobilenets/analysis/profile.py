"""Parameters, multiply-adds and activation memory, counted the way the papers count them.

MAdds are multiply-adds of convolutions and fully connected layers only (SPEC "What
matches means"), taken from PyTorch's own ``FlopCounterMode`` (which counts convolutions,
including grouped/depthwise ones, and matrix products, and reports FLOPs = 2 × MAdds).
Activation memory follows V2 §5.1: the peak is the largest total size of the inputs and
outputs of any single operation (eq. 2, exact for graphs whose only parallel structure is
residual connections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import MobilenetsError
from ..models.layers import ConvNormAct, SqueezeExcite

#: Modules shown as one row of the per-layer table (a ConvNormAct is one paper "layer").
_ROW_TYPES = (ConvNormAct, SqueezeExcite, nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)


@dataclass
class LayerStats:
    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    madds: int


@dataclass
class Profile:
    """What :func:`profile` measured for one input size (batch 1)."""

    input_size: tuple[int, int, int]
    params: int
    madds: int
    largest_activation: tuple[str, tuple[int, ...], int]  # (layer, shape, elements)
    peak_activation_elements: int
    peak_activation_layer: str
    layers: list[LayerStats] = field(default_factory=list)

    def peak_activation_bytes(self, bytes_per_element: int = 4) -> int:
        return self.peak_activation_elements * bytes_per_element

    def table(self) -> str:
        """The per-layer table and totals as aligned text."""
        rows = [("layer", "type", "output", "params", "MAdds")]
        for s in self.layers:
            rows.append((s.name, s.type, "×".join(map(str, s.output_shape[1:])),
                         f"{s.params:,}", f"{s.madds:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths)))
        lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows[1:]]
        name, shape, n = self.largest_activation
        c, h, w = self.input_size
        lines += ["",
                  f"input              {c}×{h}×{w}",
                  f"parameters         {self.params:,}",
                  f"MAdds              {self.madds:,} ({self.madds / 1e6:.2f} M)",
                  f"largest activation {name} {'×'.join(map(str, shape[1:]))} "
                  f"({n:,} values, {n * 4 / 1024:.0f} KiB fp32)",
                  f"peak activations   {self.peak_activation_elements:,} values "
                  f"({self.peak_activation_bytes(4) / 1024:.0f} KiB fp32) at {self.peak_activation_layer}"]
        return "\n".join(lines)


def _size(x: object) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (list, tuple)):
        return sum(_size(t) for t in x)
    return 0


def _row_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that get a row of the table: the outermost of :data:`_ROW_TYPES`, so a
    ConvNormAct is one row and its inner conv is not another."""
    rows: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if name and isinstance(m, _ROW_TYPES) and not any(name.startswith(r + ".") for r in rows):
            rows[name] = m
    return rows


class _ActivationRecorder:
    """Forward hooks that record each row's output shape, the largest single output, and
    the peak of inputs + outputs over the leaf operations (V2 §5.1, eq. 2)."""

    def __init__(self, model: nn.Module, rows: dict[str, nn.Module], input_shape: tuple[int, ...]) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        n_in = math.prod(input_shape)
        self.largest: tuple[str, tuple[int, ...], int] = ("input", input_shape, n_in)
        self.peak: tuple[int, str] = (0, "")
        self.handles = []
        for name, m in model.named_modules():
            if name in rows:
                self.handles.append(m.register_forward_hook(self._row_hook(name)))
            if name and not list(m.children()):
                self.handles.append(m.register_forward_hook(self._leaf_hook(name)))

    def _row_hook(self, name: str):
        def fn(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self.shapes[name] = tuple(out.shape)
        return fn

    def _leaf_hook(self, name: str):
        def fn(_m: nn.Module, inp: object, out: object) -> None:
            n_out = _size(out)
            if n_out > self.largest[2]:
                self.largest = (name, tuple(out.shape), n_out)
            total = _size(inp) + n_out
            if total > self.peak[0]:
                self.peak = (total, name)
        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _count_flops(model: nn.Module, in_chans: int, h: int, w: int) -> dict[str, dict]:
    """Run ``model`` once in eval mode on zeros under ``FlopCounterMode``; returns the
    counter's FLOPs per module path. A network that cannot run at this size becomes one
    :class:`MobilenetsError` saying what to change."""
    if min(h, w) < 1:
        raise MobilenetsError(f"resolution must be >= 1 px, got {h}x{w}")
    was_training = model.training
    model.eval()
    # The input takes the weights' dtype and device (a bf16 model, a skeleton on "meta").
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    like = dict(dtype=weight.dtype, device=weight.device) if weight is not None else {}
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, in_chans, h, w, **like))
    except RuntimeError as e:  # e.g. a map smaller than a kernel after the strided layers
        name = getattr(model, "model_name", type(model).__name__)
        hint = "use a larger resolution" if min(h, w) < 64 else "too large for this machine"
        raise MobilenetsError(f"cannot run {name} on {in_chans}x{h}x{w} inputs "
                              f"({str(e).splitlines()[0]}); {hint}") from e
    finally:
        model.train(was_training)
    return counter.get_flop_counts()


def profile(model: nn.Module, input_size: int | tuple[int, int] = 224,
            in_chans: int | None = None) -> Profile:
    """Count parameters, MAdds and activation memory of ``model`` on one image.

    ``input_size`` is the side (or ``(H, W)``) of the input; ``in_chans`` defaults to the
    model's first convolution's input channels.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if in_chans is None:
        in_chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    rows = _row_modules(model)
    recorder = _ActivationRecorder(model, rows, (1, in_chans, h, w))
    try:
        counts = _count_flops(model, in_chans, h, w)
    finally:
        recorder.remove()
    root = type(model).__name__
    layers = [LayerStats(name, type(m).__name__, recorder.shapes[name],
                         sum(p.numel() for p in m.parameters()),
                         sum(counts.get(f"{root}.{name}", {}).values()) // 2)  # FLOPs = 2 MAdds
              for name, m in rows.items() if name in recorder.shapes]
    return Profile(
        input_size=(in_chans, h, w),
        params=sum(p.numel() for p in model.parameters()),
        madds=sum(counts.get("Global", {}).values()) // 2,
        largest_activation=recorder.largest,
        peak_activation_elements=recorder.peak[0],
        peak_activation_layer=recorder.peak[1],
        layers=layers,
    )
