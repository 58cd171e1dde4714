"""Parameter counts and multiply-adds against the papers' tables (SPEC §1-§3, §6)."""

import math

import pytest

import mobilenets
from mobilenets import make_divisible
from mobilenets.analysis.profile import profile
from mobilenets.io import convert
from reference import all_fixtures, fixture_tensors, load_fixture


def params(name, **kw):
    return sum(p.numel() for p in mobilenets.create_model(name, **kw).parameters())


def madds_m(name, res=224, **kw):
    return profile(mobilenets.create_model(name, **kw), res).madds / 1e6


@pytest.mark.parametrize("name, expected", [
    ("mobilenet_v1", 4_231_976),        # [computed] = Keras 4,253,864 - 21,888 BN statistics
    ("mobilenet_v2", 3_504_872),        # torchvision num_params
    ("mobilenet_v3_large", 5_483_032),  # torchvision num_params
    ("mobilenet_v3_small", 2_542_856),  # torchvision num_params
])
def test_parameter_counts_exact(name, expected):
    assert params(name) == expected


@pytest.mark.parametrize("width, expected", [  # SPEC §2.7 [computed], torchvision-style build
    (0.35, 1_677_128), (0.5, 1_968_680), (0.75, 2_636_424), (1.3, 5_386_792), (1.4, 6_108_776),
])
def test_v2_parameter_counts_at_widths(width, expected):
    assert params("mobilenet_v2", width_mult=width) == expected


def test_make_divisible_rule():
    # SPEC §7.5: nearest multiple of 8, at least 8, never more than 10% below v.
    assert [make_divisible(v) for v in (5.6, 11.2, 12, 18, 22.4, 33.6, 44.8, 1792)] == \
        [8, 16, 16, 24, 24, 32, 48, 1792]


def _published_agrees(computed: float, published: float) -> bool:
    """Published tables round (V1: 568.74 -> 569) or truncate (slim V2: 300.77 -> 300)."""
    return published in (round(computed), math.floor(computed))


# V1 Table 6 (width) and Table 7 (resolution), arXiv:1704.04861. The 160 px row prints 290
# where 290.68 rounds to 291 (TF-slim's table says 291): both agree by truncation/rounding.
V1_ROWS = [(1.0, 224, 569), (0.75, 224, 325), (0.5, 224, 149), (0.25, 224, 41),
           (1.0, 192, 418), (1.0, 160, 290), (1.0, 128, 186)]


@pytest.mark.parametrize("width, res, published", V1_ROWS)
def test_v1_madds_tables_6_and_7(width, res, published):
    assert _published_agrees(madds_m("mobilenet_v1", res, width_mult=width), published)


def test_v1_exact_madds():
    assert profile(mobilenets.create_model("mobilenet_v1"), 224).madds == 568_740_352


# TF-slim MobileNetV2 checkpoint table (SPEC §2.7): every width x resolution row.
V2_SLIM = {
    (1.4, 224): 582, (1.3, 224): 509,
    (1.0, 224): 300, (1.0, 192): 221, (1.0, 160): 154, (1.0, 128): 99, (1.0, 96): 56,
    (0.75, 224): 209, (0.75, 192): 153, (0.75, 160): 107, (0.75, 128): 69, (0.75, 96): 39,
    (0.5, 224): 97, (0.5, 192): 71, (0.5, 160): 50, (0.5, 128): 32, (0.5, 96): 18,
    (0.35, 224): 59, (0.35, 192): 43, (0.35, 160): 30, (0.35, 128): 20, (0.35, 96): 11,
}


@pytest.mark.parametrize("key", sorted(V2_SLIM))
def test_v2_madds_slim_table(key):
    width, res = key
    computed = madds_m("mobilenet_v2", res, width_mult=width)
    assert math.floor(computed) == V2_SLIM[key]  # slim's table truncates


# V3 Table 9 (arXiv v5), TF-slim's checkpoints: width rows use the "tf" width convention.
# Three published values are 1 M above both rounding and truncation of the count (marked).
V3_TABLE_9 = [
    ("mobilenet_v3_large", 1.25, 224, 356, True), ("mobilenet_v3_large", 1.0, 224, 217, True),
    ("mobilenet_v3_large", 0.75, 224, 155, True), ("mobilenet_v3_large", 0.5, 224, 69, True),
    ("mobilenet_v3_large", 0.35, 224, 40, False),
    ("mobilenet_v3_large", 1.0, 256, 282, True), ("mobilenet_v3_large", 1.0, 192, 160, True),
    ("mobilenet_v3_large", 1.0, 160, 112, True), ("mobilenet_v3_large", 1.0, 128, 73, True),
    ("mobilenet_v3_large", 1.0, 96, 43, True),
    ("mobilenet_v3_small", 1.25, 224, 91, True), ("mobilenet_v3_small", 1.0, 224, 57, True),
    ("mobilenet_v3_small", 0.75, 224, 44, False), ("mobilenet_v3_small", 0.5, 224, 21, True),
    ("mobilenet_v3_small", 0.35, 224, 12, True),
    ("mobilenet_v3_small", 1.0, 256, 74, False), ("mobilenet_v3_small", 1.0, 160, 30, True),
    ("mobilenet_v3_small", 1.0, 128, 20, True), ("mobilenet_v3_small", 1.0, 96, 12, True),
]


@pytest.mark.parametrize("name, width, res, published, exact", V3_TABLE_9)
def test_v3_madds_table_9(name, width, res, published, exact):
    computed = madds_m(name, res, width_mult=width, width_convention="tf")
    if exact:
        assert _published_agrees(computed, published)
    else:
        assert abs(computed - published) < 1.0


# timm's port of TF-slim's checkpoint, `tf_mobilenetv3_large_minimal_100`: 3.92 M params
# (SPEC §4.2); TF-slim and Keras print 209 M MACs and 3.9 M (SPEC §3.8-§3.9). timm's own
# benchmark GMACs (0.22) count more than convolutions and linear layers: it gives 0.23 for
# the V3-Large whose paper count is 216.6 M.
V3_LARGE_MINIMAL_PARAMS = 3_924_288
V3_LARGE_MINIMAL_MADDS = 209_136_704


def test_v3_large_minimal_params_and_madds_pinned():
    prof = profile(mobilenets.create_model("mobilenet_v3_large_minimal"), 224)
    assert (prof.params, prof.madds) == (V3_LARGE_MINIMAL_PARAMS, V3_LARGE_MINIMAL_MADDS)
    assert round(prof.params / 1e6, 2) == 3.92 and round(prof.madds / 1e6) == 209
    # timm's name builds it with TF padding and BatchNorm epsilon: neither changes a count.
    name, kw = convert.resolve_name("timm", "tf_mobilenetv3_large_minimal_100", {})
    tf = profile(mobilenets.create_model(name, **kw), 224)
    assert (tf.params, tf.madds) == (V3_LARGE_MINIMAL_PARAMS, V3_LARGE_MINIMAL_MADDS)


def test_v3_large_minimal_count_from_timms_own_tensors():
    """timm's minimal V3-Large is its V3-Large without the squeeze-excite tensors and with
    3×3 depthwise kernels for the 5×5 ones (the slim definition). Derived from the timm
    V3-Large fixture's tensor list, timm's layout converts into our minimal model and counts
    the pinned parameters (the fixture has 10 classes; the 1000-class head adds 990 × 1281)."""
    fx = load_fixture(next(p for p in all_fixtures() if p.name.startswith("timm__mobilenetv3_large_100")))
    kept = [[name, shape[:2] + [3, 3] if shape[2:] == [5, 5] else shape, lo, hi]
            for name, shape, lo, hi in fx["tensors"] if ".se." not in name]
    model = convert.from_timm(fixture_tensors({"tensors": kept}), "tf_mobilenetv3_large_minimal_100")
    params = sum(p.numel() for p in model.parameters())
    assert model.model_name == "mobilenet_v3_large_minimal" and model.num_classes == 10
    assert params + 990 * 1281 == V3_LARGE_MINIMAL_PARAMS


def test_v3_width_conventions_differ_as_documented():
    # SPEC §2.2.1 / STYLE §2.2: at 0.75 the second Large row expands to 48 (torchvision)
    # or 64 (TF/Keras/timm), and the 112-channel rows to 504 vs 528.
    tv = mobilenets.create_model("mobilenet_v3_large", width_mult=0.75)
    tf = mobilenets.create_model("mobilenet_v3_large", width_mult=0.75, width_convention="tf")
    exp = lambda m: [b.exp_channels for b in list(m.features)[1:-1]]  # noqa: E731
    assert exp(tv) == [16, 48, 56, 56, 88, 88, 184, 152, 136, 136, 360, 504, 504, 720, 720]
    assert exp(tf) == [16, 64, 72, 72, 96, 96, 192, 160, 144, 144, 384, 528, 528, 720, 720]
    assert exp(mobilenets.create_model("mobilenet_v3_large")) == \
        [16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960]
    assert tv.head_hidden_size == 960 and tf.head_hidden_size == 1280
    # Small at 0.75: the torchvision and timm fixtures' shapes say the same.
    tv = mobilenets.create_model("mobilenet_v3_small", width_mult=0.75)
    tf = mobilenets.create_model("mobilenet_v3_small", width_mult=0.75, width_convention="tf")
    assert exp(tv) == [16, 56, 64, 72, 184, 184, 88, 112, 216, 432, 432]
    assert exp(tf) == [16, 72, 88, 96, 192, 192, 96, 120, 240, 432, 432]


def test_v3_squeeze_excite_width():
    model = mobilenets.create_model("mobilenet_v3_large")
    se = [(b.exp_channels, b.se.fc1.out_channels) for b in list(model.features)[1:-1]
          if not isinstance(b.se, type(model.head)) and hasattr(b.se, "fc1")]
    assert se == [(72, 24), (120, 32), (120, 32), (480, 120), (672, 168), (672, 168),
                  (960, 240), (960, 240)]


def test_v1_depth_multiplier_doubles_depthwise_outputs():
    model = mobilenets.create_model("mobilenet_v1", depth_multiplier=2)
    block = model.features[1]
    assert block.dw.conv.out_channels == 64 and block.pw.conv.in_channels == 64


def test_profile_counts_each_row_and_activation_memory():
    prof = profile(mobilenets.create_model("mobilenet_v1"), 224)
    assert sum(layer.madds for layer in prof.layers) == prof.madds
    assert sum(layer.params for layer in prof.layers) == prof.params
    # The largest V1 tensor: 64 x 112 x 112 (V2 Table 3: "64/1600" Kb in 16 bit).
    assert prof.largest_activation[2] == 64 * 112 * 112
    # Peak of inputs + outputs of one op: a 112x112 depthwise, 64 in and 64 out... or the
    # 1x1 conv 32 -> 64 at 112x112: 96 channels x 112^2 (the first is 128 channels).
    assert prof.peak_activation_elements == 128 * 112 * 112
