"""Parameters, multiply-adds and activation memory, counted the way the papers count them.

MAdds are multiply-adds of convolutions and fully connected layers only (SPEC "What
matches means"), taken from PyTorch's own ``FlopCounterMode`` (which counts convolutions,
including grouped/depthwise ones, and matrix products, and reports FLOPs = 2 × MAdds).
Activation memory follows V2 §5.1: the peak is the largest total size of the inputs and
outputs of any single operation (eq. 2, exact for graphs whose only parallel structure is
residual connections).
"""

from __future__ import annotations

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


def _size(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (list, tuple)):
        return sum(_size(t) for t in x)
    return 0


def profile(model: nn.Module, input_size: int | tuple[int, int] = 224,
            in_chans: int | None = None) -> Profile:
    """Count parameters, MAdds and activation memory of ``model`` on one image.

    ``input_size`` is the side (or ``(H, W)``) of the input; ``in_chans`` defaults to the
    model's first convolution's input channels.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if in_chans is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        in_chans = first.in_channels
    root = type(model).__name__

    rows: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if name and isinstance(m, _ROW_TYPES) and not any(name.startswith(r + ".") for r in rows):
            rows[name] = m

    shapes: dict[str, tuple[int, ...]] = {}
    largest: list = ["input", (1, in_chans, h, w), in_chans * h * w]
    peak: list = [0, ""]
    hooks = []

    def row_hook(name: str):
        def fn(_m, _inp, out):
            shapes[name] = tuple(out.shape)
        return fn

    def leaf_hook(name: str):
        def fn(_m, inp, out):
            n_out = _size(out)
            if n_out > largest[2]:
                largest[:] = [name, tuple(out.shape), n_out]
            total = _size(inp) + n_out
            if total > peak[0]:
                peak[:] = [total, name]
        return fn

    for name, m in model.named_modules():
        if name in rows:
            hooks.append(m.register_forward_hook(row_hook(name)))
        if name and not list(m.children()):
            hooks.append(m.register_forward_hook(leaf_hook(name)))
    was_training = model.training
    model.eval()
    try:
        if min(h, w) < 1:
            raise MobilenetsError(f"resolution must be >= 1 px, got {h}x{w}")
        # The input takes the weights' dtype and device (a bf16 model, a skeleton on "meta").
        weight = next((p for p in model.parameters() if p.is_floating_point()), None)
        like = dict(dtype=weight.dtype, device=weight.device) if weight is not None else {}
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, in_chans, h, w, **like))
    except RuntimeError as e:  # e.g. a map smaller than a kernel after the strided layers
        raise MobilenetsError(f"cannot run {getattr(model, 'model_name', root)} on {in_chans}x{h}x{w} "
                              f"inputs ({str(e).splitlines()[0]}); "
                              f"{'use a larger resolution' if min(h, w) < 64 else 'too large for this machine'}") from e
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)

    counts = counter.get_flop_counts()
    layers = []
    for name, m in rows.items():
        if name not in shapes:
            continue
        madds = sum(counts.get(f"{root}.{name}", {}).values()) // 2
        layers.append(LayerStats(name, type(m).__name__, shapes[name],
                                 sum(p.numel() for p in m.parameters()), madds))
    return Profile(
        input_size=(in_chans, h, w),
        params=sum(p.numel() for p in model.parameters()),
        madds=sum(counts.get("Global", {}).values()) // 2,
        largest_activation=(largest[0], largest[1], largest[2]),
        peak_activation_elements=peak[0],
        peak_activation_layer=peak[1],
        layers=layers,
    )
