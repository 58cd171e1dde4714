"""Quantization-aware fine-tuning that simulates the int8 model onnxruntime will run.

``mobilenets export --int8`` quantizes a float checkpoint after training
(:func:`mobilenets.deploy.export.quantize_onnx`): BatchNorm folded into the convolutions,
per-output-channel symmetric int8 weights (scale ``max|w|/127``, or ``max|w|/64`` with
``reduce_range`` on x86 CPUs without VNNI, see :func:`mobilenets.ops.cpu.reduce_range_default`), per-tensor uint8
activations whose range is the calibration min/max (always containing 0). Where that
rounding costs too much accuracy, ``train --qat`` fine-tunes the float weights with the same
rounding in the forward pass, so that they learn to sit well on the int8 grid (Jacob et al.
2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", §3):

- weights: the BN-folded weight ``w·γ/√(σ²+ε)`` is rounded per output channel, exactly as
  the exporter will fold and round it; BN uses its running statistics ("frozen" BN, §3.2),
  so the statistics the deployed model folds are the ones trained against;
- activations: the input and the output of every convolution and linear layer (after a
  ReLU/ReLU6, which onnxruntime fuses into the rounding, before a hard-swish) are rounded
  to 256 levels of a range tracked as a moving average of batch min/max while training and
  frozen in eval;
- gradients pass straight through the rounding inside the range and stop outside it (the
  semantics of ``torch.fake_quantize_*``, whose CPU kernels are slower; see :class:`_RoundTrip`).

The network keeps its parameters and state-dict keys, so a QAT run writes an ordinary
float checkpoint that ``export --int8`` quantizes the usual way; the observed ranges are
training state only (saved with ``last.safetensors`` for ``--resume``). The rounding of
hard-swish's gate ``Clip(x + 3, 0, 6)`` is simulated in the convolution layers (not after
the head's linear layer), that of squeeze-excite's folded hard-sigmoid gate is not.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cpu import reduce_range_default
from ..errors import MobilenetsError
from ..models.layers import Conv2dSame, ConvNormAct

#: onnxruntime's symmetric int8 weight range (``QuantType.QInt8`` with symmetric=True).
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
#: Its range with ``reduce_range`` (7-bit weights; see :func:`mobilenets.ops.cpu.reduce_range_default`).
REDUCED_WEIGHT_QMAX = 64
#: uint8 activations (``QuantType.QUInt8``, asymmetric).
ACT_QMIN, ACT_QMAX = 0, 255
#: Moving-average momentum of the activation ranges (Jacob et al. §3.1 use EMA ranges).
RANGE_MOMENTUM = 0.01


class _RoundTrip(torch.autograd.Function):
    """``x`` quantized and dequantized, ``(clamp(round(x / scale) + zero) − zero) · scale``,
    with the straight-through gradient inside the range and zero outside it.

    The same arithmetic as onnxruntime's QuantizeLinear/DequantizeLinear (division by the
    scale, ties to even) and the same gradient as ``torch.fake_quantize_per_tensor_affine``,
    whose CPU kernel is slower on channels-last activations (×1.7 forward + backward on a
    128×72×14×14 tensor, 1 thread, ``benchmarks/cpu_kernels.py``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int
                ) -> torch.Tensor:
        q = torch.round(x / scale).add_(zero)
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        y = q.clamp_(qmin, qmax).sub_(zero).mul_(scale)
        if y.stride() != x.stride():  # keep channels-last weights channels-last for the conv
            y = torch.empty_like(x).copy_(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def round_trip(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Fake quantization of ``x`` (any float dtype; computed in float32)."""
    return _RoundTrip.apply(x.float(), scale.float(), zero.float(), qmin, qmax).to(x.dtype)


def weight_qmax(reduce_range: bool) -> int:
    """The largest int8 weight magnitude onnxruntime's symmetric per-channel rounding uses."""
    return REDUCED_WEIGHT_QMAX if reduce_range else WEIGHT_QMAX


def fake_quant_weight(weight: torch.Tensor, qmax: int = WEIGHT_QMAX) -> torch.Tensor:
    """``weight`` rounded to int8 per output channel (dim 0) and back, as onnxruntime does.

    The scale follows the weight (``max|w|/qmax``, ``qmax`` 127, or 64 with
    ``reduce_range``) without a gradient of its own; the rounding passes gradients
    straight through.
    """
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True).float()
    scale = (absmax / qmax).clamp_min(1e-12)
    return round_trip(weight, scale, torch.zeros(()), -qmax, qmax)


class ActivationQuant(nn.Module):
    """Per-tensor uint8 rounding of a layer's input with a learned-by-observation range.

    In training mode the range (widened to contain 0, as onnxruntime's calibration does) is
    a moving average of each batch's min/max, the first batch setting it; in eval mode it is
    frozen. Before any batch was observed the input passes unchanged. The buffers are not
    part of the model's state dict (the checkpoint stays a plain float model).
    """

    def __init__(self, momentum: float = RANGE_MOMENTUM) -> None:
        super().__init__()
        self.momentum = momentum
        #: The weight range of the layer this quantizer feeds (:func:`prepare_qat` sets it).
        self.weight_qmax = WEIGHT_QMAX
        #: False while :func:`calibrate` records float ranges (no rounding, global min/max).
        self.quantize = True
        self.register_buffer("min_val", torch.zeros(()), persistent=False)
        self.register_buffer("max_val", torch.zeros(()), persistent=False)
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool), persistent=False)

    def weights(self, weight: torch.Tensor) -> torch.Tensor:
        """The layer's weights as this quantizer's mode says: int8-rounded, or float while
        :func:`calibrate` observes the float network."""
        return fake_quant_weight(weight, self.weight_qmax) if self.quantize else weight

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """onnxruntime's uint8 scale and zero point for the current range."""
        lo, hi = self.min_val.double(), self.max_val.double()  # float64 like onnxruntime
        scale = ((hi - lo) / (ACT_QMAX - ACT_QMIN)).clamp_min(1e-12)
        zero = torch.round(ACT_QMIN - lo / scale).clamp(ACT_QMIN, ACT_QMAX).to(torch.int32)
        return scale.float(), zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.quantize:
            with torch.no_grad():
                lo, hi = x.detach().amin().float(), x.detach().amax().float()  # faster than aminmax
                lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
                if not self.quantize and bool(self.observed):
                    torch.minimum(self.min_val, lo, out=self.min_val)
                    torch.maximum(self.max_val, hi, out=self.max_val)
                    return x
                if bool(self.observed):
                    self.min_val.lerp_(lo, self.momentum)
                    self.max_val.lerp_(hi, self.momentum)
                else:
                    self.min_val.copy_(lo)
                    self.max_val.copy_(hi)
                    self.observed.fill_(True)
        if not (self.quantize and bool(self.observed)):
            return x
        scale, zero = self.qparams()
        return round_trip(x, scale, zero, ACT_QMIN, ACT_QMAX)


def _conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(conv, Conv2dSame):
        x = conv.pad(x)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class QuantConvNormAct(nn.Module):
    """A :class:`ConvNormAct` as the int8 export runs it: quantized input, BN folded into
    the convolution with its running statistics, int8 weights, then the activation.

    Holds the original ``conv``, ``bn`` and ``act`` under the same names, so parameters and
    state-dict keys are unchanged.
    """

    def __init__(self, layer: ConvNormAct) -> None:
        super().__init__()
        self.input_quant, self.output_quant = ActivationQuant(), ActivationQuant()
        self.conv, self.bn = layer.conv, layer.bn
        self.act = layer.act if "act" in layer._modules else nn.Identity()
        #: ReLU/ReLU6 only clip, so onnxruntime folds them into the output's range.
        self.fused_act = isinstance(self.act, (nn.ReLU, nn.ReLU6))
        #: The int8 graph computes hard-swish as ``x · Clip(x + 3, 0, 6) / 6`` and rounds the
        #: gate ``Clip(x + 3, 0, 6)`` too (:func:`mobilenets.deploy.export.int8_friendly`).
        self.gate_quant = ActivationQuant() if isinstance(self.act, nn.Hardswish) else None
        self.in_channels, self.out_channels, self.stride = layer.in_channels, layer.out_channels, layer.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        weight = self.input_quant.weights(self.conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = self.bn.bias - self.bn.running_mean * scale
        x = _conv(self.conv, x, weight, bias)
        if self.fused_act:
            return self.output_quant(self.act(x))
        x = self.output_quant(x)
        if self.gate_quant is not None:
            return x * self.gate_quant(F.relu6(x + 3)) / 6
        return self.act(x)


class QuantConv2d(nn.Module):
    """A convolution without BatchNorm (the squeeze-excite FCs) with int8 input and weights;
    it owns the original ``weight`` and ``bias`` so the state-dict keys are unchanged."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.input_quant, self.output_quant = ActivationQuant(), ActivationQuant()
        if isinstance(conv, Conv2dSame):
            raise MobilenetsError("TF-'same' convolutions are expected inside ConvNormAct only")
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quant(F.conv2d(self.input_quant(x), self.input_quant.weights(self.weight), self.bias,
                                          self.stride, self.padding, self.dilation, self.groups))


class QuantLinear(nn.Module):
    """A linear layer (V3's head FC, every classifier) with int8 input and weights."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.input_quant, self.output_quant = ActivationQuant(), ActivationQuant()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quant(F.linear(self.input_quant(x), self.input_quant.weights(self.weight), self.bias))


_QUANT_TYPES = (QuantConvNormAct, QuantConv2d, QuantLinear)


def prepare_qat(model: nn.Module, reduce_range: bool | None = None) -> nn.Module:
    """Swap, in place, every layer the int8 export quantizes for its simulating twin.

    Parameters are shared, not copied, so an optimizer built before or after sees the same
    tensors; ``model.state_dict()`` keeps its keys and values. ``reduce_range`` (7-bit
    weights) must be what the export will use: by default this machine's choice, as the
    export's (:func:`reduce_range_default`). Returns ``model``.
    """
    if is_qat(model):
        raise MobilenetsError("the model is already prepared for quantization-aware training")
    for parent in list(model.modules()):
        if isinstance(parent, (ConvNormAct, *_QUANT_TYPES)):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvNormAct):
                setattr(parent, name, QuantConvNormAct(child))
            elif isinstance(child, nn.Conv2d):
                setattr(parent, name, QuantConv2d(child))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, QuantLinear(child))
    qmax = weight_qmax(reduce_range_default() if reduce_range is None else reduce_range)
    for m in model.modules():
        if isinstance(m, ActivationQuant):
            m.weight_qmax = qmax
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every activation range to the min/max the float network produces on ``batches``.

    Rounding is off while observing, so these are the ranges onnxruntime's MinMax
    calibration picks for the same images: fine-tuning starts from the post-training int8
    model. Returns the number of images seen.
    """
    quants = [m for m in model.modules() if isinstance(m, ActivationQuant)]
    was_training = model.training
    model.eval()
    for m in quants:
        m.observed.fill_(False)
        m.quantize = False
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for m in quants:
            m.quantize = True
        model.train(was_training)
    return seen


def is_qat(model: nn.Module) -> bool:
    return any(isinstance(m, ActivationQuant) for m in model.modules())


def range_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The observed activation ranges, keyed ``<module>.<buffer>`` (training state)."""
    return {f"{name}.{b}": buf for name, m in model.named_modules() if isinstance(m, ActivationQuant)
            for b, buf in m.named_buffers(recurse=False)}


def load_range_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Restore :func:`range_state`; every range of ``model`` must be present."""
    own = range_state(model)
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise MobilenetsError(f"{source}: no quantization ranges for {', '.join(missing[:3])}"
                              f"{' …' if len(missing) > 3 else ''} (not a --qat run?)")
    with torch.no_grad():
        for k, buf in own.items():
            buf.copy_(tensors[k].to(buf.dtype))
