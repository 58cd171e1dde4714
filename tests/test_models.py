"""The model contract, checked for every registered model (STYLE §4 checklist)."""

import copy
import math
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mobilenets
from conftest import ALL_MODELS
from mobilenets.ops.cpu import optimize

# Small widths keep CPU time low; the contract does not depend on width.
SMALL = dict(width_mult=0.5)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_every_parameter_gets_gradient(name):
    model = mobilenets.create_model(name, num_classes=7, **SMALL).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert x.grad is not None


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_is_deterministic(name):
    model = mobilenets.create_model(name, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_num_classes_zero_returns_pooled_features(name):
    model = mobilenets.create_model(name, num_classes=0, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
        feats = model.forward_features(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, model.head_hidden_size)
    assert feats.shape[:2] == (2, model.num_features)
    assert model.num_classes == 0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_head_and_reset_classifier(name):
    model = mobilenets.create_model(name, num_classes=10, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        assert torch.allclose(model.forward_head(feats), model(x))
        before = _n_params(model)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
        assert _n_params(model) == before - 7 * (model.head_hidden_size + 1)
        model.reset_classifier(0)
        assert torch.allclose(model(x), pre)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_grayscale_and_any_channel_count(name):
    for c in (1, 4):
        model = mobilenets.create_model(name, in_chans=c, num_classes=5, **SMALL).eval()
        with torch.no_grad():
            assert model(torch.randn(1, c, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_feature_maps_shapes_and_channels(name):
    model = mobilenets.create_model(name, **SMALL).eval()
    fm = mobilenets.create_model(name, features_only=True, **SMALL).eval()
    fm.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        maps = fm(x)
        same = model.forward_feature_maps(x)
    assert [f.reduction for f in fm.feature_info] == [2, 4, 8, 16, 32]
    assert len(maps) == 5
    for m, f in zip(maps, fm.feature_info):
        assert m.shape == (1, f.num_chs, math.ceil(96 / f.reduction), math.ceil(96 / f.reduction))
    assert maps[-1].shape[1] == model.num_features
    for a, b in zip(maps, same):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_last_equals_nchw(name):
    model = mobilenets.create_model(name, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript_equals_eager(name):
    model = mobilenets.create_model(name, **SMALL).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_odd_resolutions(name, padding):
    model = mobilenets.create_model(name, padding=padding, **SMALL).eval()
    with torch.no_grad():
        for size in (97, 193):
            feats = model.forward_features(torch.randn(1, 3, size, size))
            expected = size
            for _ in range(5):
                expected = math.ceil(expected / 2)
            assert feats.shape[-2:] == (expected, expected)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_small_input_stem_downsamples_8x(name):
    model = mobilenets.create_model(name, small_input=True, in_chans=1, num_classes=10, **SMALL).eval()
    assert model.feature_info[-1].reduction == 8
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 28, 28)).shape[-2:] == (4, 4)
        assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def _strides(model) -> list[int]:
    return [m.stride for m in model.features]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_stride_drops_the_last_strides_and_keeps_every_weight(name):
    """``output_stride`` changes only where the network downsamples: the same parameters
    (so checkpoints and converted weights still load), the *last* stride-2 blocks at 1."""
    base = mobilenets.create_model(name, small_input=True, in_chans=1, num_classes=10, **SMALL)
    os4 = mobilenets.create_model(name, small_input=True, output_stride=4, in_chans=1, num_classes=10, **SMALL)
    assert {k: v.shape for k, v in os4.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    changed = [i for i, (a, b) in enumerate(zip(_strides(base), _strides(os4))) if a != b]
    assert len(changed) == 1 and changed[0] == max(i for i, s in enumerate(_strides(base)) if s == 2)
    assert os4.feature_info[-1].reduction == 4
    with torch.no_grad():
        assert os4.eval().forward_features(torch.randn(1, 1, 28, 28)).shape[-2:] == (7, 7)
    os16 = mobilenets.create_model(name, output_stride=16, **SMALL)
    assert _strides(os16)[0] == 2 and [f.reduction for f in os16.feature_info] == [2, 4, 8, 16]
    assert mobilenets.create_model(name, output_stride=32, **SMALL).feature_info[-1].reduction == 32


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"output_stride": 3}, "output_stride must be a power of 2 no larger than 32 for this network, got 3"),
    ({"output_stride": 16, "small_input": True}, "no larger than 8 for this network with small_input, got 16"),
    ({"output_stride": 64}, r"output_stride must be in \[1, 32\], got 64"),
    ({"output_stride": 4.0}, "output_stride must be an integer, got 4.0"),
])
def test_bad_output_stride_is_one_clear_error(kwargs, message):
    with pytest.raises(mobilenets.MobilenetsError, match=message):
        mobilenets.create_model("mobilenet_v2", **kwargs)


def test_torch_export_equals_eager():
    model = mobilenets.create_model("mobilenet_v3_small", **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_unknown_model_and_option_name_the_closest():
    with pytest.raises(mobilenets.MobilenetsError, match="did you mean 'mobilenet_v3_small'"):
        mobilenets.create_model("mobilenet_v3_smal")
    with pytest.raises(mobilenets.MobilenetsError, match="did you mean 'width_mult'"):
        mobilenets.create_model("mobilenet_v2", width_mul=0.5)
    with pytest.raises(mobilenets.MobilenetsError, match="depth_multiplier"):
        mobilenets.create_model("mobilenet_v2", depth_multiplier=2)
    with pytest.raises(mobilenets.MobilenetsError, match="padding"):
        mobilenets.create_model("mobilenet_v1", padding="valid")
    with pytest.raises(mobilenets.MobilenetsError, match="width_mult"):
        mobilenets.create_model("mobilenet_v1", width_mult=0)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v3_small"])
def test_cpu_bf16_autocast_keeps_depthwise_convolutions_in_fp32(name):
    """oneDNN's bf16 depthwise kernels are slow on CPUs, so under autocast ``optimize``'s
    depthwise convolutions run in fp32 and the pointwise ones in bf16; gradients still reach all."""
    from mobilenets.models.layers import ConvNormAct

    model = optimize(mobilenets.create_model(name, num_classes=5, **SMALL).train())
    seen: dict[str, set] = {"depthwise": set(), "other": set()}
    for m in model.modules():
        if isinstance(m, ConvNormAct):
            kind = "depthwise" if m.conv.groups > 1 else "other"
            m.conv.register_forward_hook(lambda mod, i, o, kind=kind: seen[kind].add(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    out.float().sum().backward()
    assert seen == {"depthwise": {torch.float32}, "other": {torch.bfloat16}}
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():  # without autocast nothing changes
        model.eval()
        assert model(torch.randn(1, 3, 32, 32)).dtype == torch.float32


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((3, 6, 4, 4), 5, 1, 2),  # V3's 5×5 layers on the small-input stem's 4×4 maps
    ((2, 5, 4, 3), 5, 2, 2),  # stride 2, a map that is not square
    ((2, 4, 2, 2), 3, 1, 1),
    ((2, 4, 5, 5), 3, 2, 0),  # what Conv2dSame passes, the input already padded
])
def test_small_map_depthwise_gradients_equal_the_native_ones(shape, kernel, stride, padding):
    from mobilenets.ops.depthwise import SmallMapDepthwise

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1], 1, kernel, kernel, dtype=torch.float64, generator=g)
    grads = []
    for fn in (lambda a, b: torch.nn.functional.conv2d(a, b, None, stride, padding, 1, shape[1]),
               lambda a, b: SmallMapDepthwise.apply(a, b, (stride, stride), (padding, padding))):
        a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fn(a, b)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        grads.append((out, a.grad, b.grad))
    for native, ours in zip(*grads):
        torch.testing.assert_close(ours, native, rtol=1e-12, atol=1e-12)


def _small_map_calls(monkeypatch) -> list[torch.Size]:
    """The input shapes :class:`SmallMapDepthwise` is applied to from now on."""
    from mobilenets.ops.depthwise import SmallMapDepthwise

    calls, apply = [], SmallMapDepthwise.apply
    monkeypatch.setattr(SmallMapDepthwise, "apply", lambda *a: calls.append(a[0].shape) or apply(*a))
    return calls


def _training_step(model, x, compile: bool = False):
    """The loss and parameter gradients of one training step of a copy of ``model``
    (``compile``: through ``torch.compile``, Inductor replaced by eager kernels)."""
    net = copy.deepcopy(model)
    forward = torch.compile(net, backend="aot_eager") if compile else net
    torch.manual_seed(1)  # the same dropout mask
    loss = forward(x).logsumexp(1).sum()
    loss.backward()
    return loss.detach(), [p.grad for p in net.parameters()]


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_small_map_depthwise_path_trains_the_same_network(monkeypatch, padding):
    """After ``optimize``, depthwise layers whose kernel is wider than the map take
    :class:`SmallMapDepthwise`'s weight gradient, on every CPU, and a training step gives
    the native path's loss and gradients; ``small_map_wgrad=False`` keeps oneDNN's."""
    calls = _small_map_calls(monkeypatch)
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=4, in_chans=1, small_input=True,
                                    padding=padding, **SMALL).train()
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    native = _training_step(model, x)
    assert not calls
    ours = _training_step(optimize(copy.deepcopy(model)), x)
    assert calls and all(max(s[-2:]) < 5 for s in calls)  # the 4×4 maps of the last stage
    calls.clear()
    _training_step(optimize(copy.deepcopy(model), small_map_wgrad=False), x)
    assert not calls
    torch.testing.assert_close(ours[0], native[0])
    for a, b in zip(ours[1], native[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("small_map_wgrad", [False, True], ids=["onednn", "small-map"])
def test_training_graph_compiles_whole_with_either_depthwise_path(small_map_wgrad):
    """``torch.compile`` traces the optimized training model as one graph (no break at the
    depthwise layers' CPU checks), with :class:`SmallMapDepthwise`'s weight gradient as one
    custom operator, and the compiled step's gradients are the eager ones."""
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=4, in_chans=1, small_input=True,
                                    dropout=0.0, **SMALL).train()
    model = optimize(model, small_map_wgrad=small_map_wgrad)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    explained = torch._dynamo.explain(copy.deepcopy(model))(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    grads = []
    for net in (copy.deepcopy(model), torch.compile(copy.deepcopy(model), backend="aot_eager")):
        net(x).logsumexp(1).sum().backward()
        grads.append([p.grad for p in net.parameters()])
    for ours, native in zip(*grads):
        torch.testing.assert_close(ours, native, rtol=1e-4, atol=1e-5)


#: Where the classes of a plain model may come from: torch.nn and the library's own models.
PLAIN_MODULES = ("torch.nn.modules.", "mobilenets.models.")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_models_are_plain_and_optimize_computes_the_same(name):
    """``create_model`` builds torch.nn layers and the library's blocks only, with no
    forward of its own on ``ConvNormAct``; ``optimize`` swaps CPU layers in, keeping the
    state-dict keys, the outputs and the gradients, eager and compiled."""
    from mobilenets.models.layers import ConvNormAct

    torch.manual_seed(0)
    model = mobilenets.create_model(name, num_classes=4, in_chans=1, small_input=True, dropout=0.0,
                                    **SMALL).train()
    foreign = {type(m).__module__ + "." + type(m).__name__ for m in model.modules()
               if not type(m).__module__.startswith(PLAIN_MODULES)}
    assert not foreign
    assert ConvNormAct.forward is torch.nn.Sequential.forward
    fast = optimize(copy.deepcopy(model))
    assert {type(m).__module__ for m in fast.modules()} & {"mobilenets.ops.layers"}
    assert list(fast.state_dict()) == list(model.state_dict())
    assert optimize(fast) is fast and [type(m) for m in optimize(copy.deepcopy(fast)).modules()] == [
        type(m) for m in fast.modules()]  # idempotent
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    plain = _training_step(model, x)
    # Compiling costs seconds per model: V1 (ReLU6), V3-Small (SE, hard-swish, 5×5 on 4×4 maps).
    for compile in (False, True) if name in ("mobilenet_v1", "mobilenet_v3_small") else (False,):
        ours = _training_step(fast, x, compile)
        torch.testing.assert_close(ours[0], plain[0])
        for a, b in zip(ours[1], plain[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(fast.eval()(x), model.eval()(x))
    torch.testing.assert_close(torch.jit.script(fast)(x), model(x), rtol=1e-5, atol=1e-6)


def test_importing_the_cpu_speed_ups_registers_no_operator():
    """``import mobilenets.ops.cpu`` leaves torch's operator registry as it was: the weight
    gradient's custom operator is registered by the first ``optimize`` (or backward)."""
    code = ("import torch, mobilenets, mobilenets.ops.cpu as cpu, mobilenets.ops.depthwise\n"
            "print(hasattr(torch.ops.mobilenets, 'small_map_depthwise_wgrad'))\n"
            "cpu.optimize(mobilenets.create_model('mobilenet_v3_small', width_mult=0.5))\n"
            "print(hasattr(torch.ops.mobilenets, 'small_map_depthwise_wgrad'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_old_layer_names_say_where_they_moved():
    with pytest.raises(ImportError, match=r"SmallMapDepthwise moved to mobilenets\.ops\.depthwise"):
        from mobilenets.models.layers import SmallMapDepthwise  # noqa: F401
    with pytest.raises(ImportError, match=r"optimize\(model, small_map_wgrad"):
        from mobilenets.models.layers import SMALL_MAP_WGRAD  # noqa: F401


class _OpArgs(TorchDispatchMode):
    """Records every aten op with its tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[torch.Tensor]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func.__name__, [a for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_last_training_step_never_mixes_memory_formats(name):
    """In an optimized channels_last training step every 4-D activation and gradient every op sees is
    channels_last: an NCHW gradient meeting channels_last tensors (as ``mean``'s backward
    gave the head's and squeeze-excite's pooling) sends the CPU's BatchNorm backward and
    element-wise kernels to their slow paths."""
    model = mobilenets.create_model(name, num_classes=4, in_chans=1, small_input=True, **SMALL).train()
    mixed, _ = _channels_last_step(optimize(model))
    assert not mixed, mixed[:5]


def _channels_last_step(model):
    """A channels_last training step of ``model``: the non-channels_last 4-D tensors its ops
    saw, and the ops' names."""
    model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with _OpArgs() as ops:
        model(x).logsumexp(1).sum().backward()
    mixed = sorted({f"{op} {tuple(t.shape)} strides {t.stride()}" for op, tensors in ops.calls for t in tensors
                    if t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1
                    and not (t.is_contiguous(memory_format=torch.channels_last) and 0 not in t.stride())})
    return mixed, [op for op, _ in ops.calls]


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_memory_format_benchmark_rebuilds_the_earlier_layers(name, monkeypatch):
    """``benchmarks/memory_format.py``'s "before" network is the same network with the
    earlier layers: the same outputs, but NCHW gradients (and, with ReLU6, clones)."""
    from test_benchmark_scripts import load

    memory_format = load("memory_format", monkeypatch)
    model = optimize(mobilenets.create_model(name, num_classes=4, in_chans=1, small_input=True, dropout=0.0,
                                             **SMALL).eval())
    before = memory_format.with_earlier_layers(copy.deepcopy(model))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(before(x), model(x))
    mixed, ops = _channels_last_step(before.train())
    assert mixed
    assert any(op.startswith("clone") for op in ops) == (name == "mobilenet_v2")
    assert _channels_last_step(model.train())[0] == []


def test_relu6_copies_nothing_for_autograd_and_stays_in_place_without_it():
    """ReLU6 out of place under autograd: the in-place op would make autograd clone its
    input for the backward. Without autograd it still works in place. Values and gradients
    are ReLU6's, at the kinks too."""
    from mobilenets.ops.layers import OutOfPlaceReLU6

    act = OutOfPlaceReLU6(inplace=True)
    x = torch.tensor([-1.0, 0.0, 0.5, 6.0, 7.0]).repeat(4)
    leaf = x.clone().requires_grad_()
    with _OpArgs() as ops:
        y = act(leaf * 1.0)
        y.backward(torch.arange(20.0))
    assert not [op for op, _ in ops.calls if op.startswith("clone")]
    ref = x.clone().requires_grad_()
    torch.nn.functional.relu6(ref).backward(torch.arange(20.0))
    torch.testing.assert_close(y, torch.nn.functional.relu6(x), rtol=0, atol=0)
    torch.testing.assert_close(leaf.grad, ref.grad, rtol=0, atol=0)
    with torch.no_grad():
        z = x.clone()
        assert act(z).data_ptr() == z.data_ptr() and torch.equal(z, torch.nn.functional.relu6(x))


def test_global_avg_pool_is_the_mean_with_the_inputs_layout_in_its_gradient():
    from mobilenets.ops.layers import global_avg_pool

    x = torch.randn(3, 5, 4, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = global_avg_pool(x)
    torch.testing.assert_close(out, x.mean((2, 3), keepdim=True), rtol=1e-6, atol=1e-6)
    g = torch.randn(3, 5, 1, 1)
    out.backward(g)
    torch.testing.assert_close(x.grad, g.expand(3, 5, 4, 6) / 24)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(global_avg_pool(x), x.mean((2, 3), keepdim=True))


@pytest.mark.parametrize("width", [float("nan"), float("inf"), 0.0, -1.0, 1e6])
def test_width_multipliers_that_are_not_sane_numbers_are_refused(width):
    """A typo must not end in a traceback, nor in an attempt to allocate terabytes."""
    for name in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"):
        with pytest.raises(mobilenets.MobilenetsError, match=r"width_mult must be in \(0, 16\]"):
            mobilenets.create_model(name, width_mult=width)


def test_width_multiplier_of_any_real_type():
    import numpy as np

    assert mobilenets.create_model("mobilenet_v2", width_mult=np.float32(0.5)).num_features == 1280
    with pytest.raises(mobilenets.MobilenetsError, match="got True"):
        mobilenets.create_model("mobilenet_v2", width_mult=True)


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's Python tour, verbatim up to the lines that need downloaded weight files
    (it writes its checkpoint and export into the working directory)."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = text.split("## Python tour", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = block.split("# Published weights", 1)[0]
    assert "from_torchvision" not in code and "deploy.load_artifact" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["feats"].shape == (8, 576, 4, 4)
    assert namespace["meta"]["classes"][0] == "class 0" and namespace["run"].classes == namespace["meta"]["classes"]
    assert namespace["logits"].shape == (4, 10) and namespace["onnx"].parity.ok
