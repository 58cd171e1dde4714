"""``mobilenets paper``: the papers' numbers recomputed from the real networks (issue 6).

Expectations are the published values (SPEC §1-§3, §8) or closed forms derived here
independently of the code under test.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import mobilenets
from datagen import randomize_batchnorm
from mobilenets.analysis import paper
from mobilenets.models.blocks import InvertedResidual
from mobilenets.cli.main import main


# ---------------------------------------------------------------- cost, V1 Tables 2 and 3

def test_layer_cost_is_v1_equations_and_8_to_9_times_cheaper():
    c = paper.layer_cost(3, 512, 512, 14)
    assert c.standard_madds == 3 * 3 * 512 * 512 * 14 * 14 == 462_422_016
    assert c.separable_madds == 3 * 3 * 512 * 14 * 14 + 512 * 512 * 14 * 14
    assert c.standard_params == 2_359_296 and c.separable_params == 3 * 3 * 512 + 512 * 512
    assert c.ratio == pytest.approx(1 / 512 + 1 / 9)
    assert 8 < 1 / c.ratio < 9  # "between 8 to 9 times less computation"
    even = paper.layer_cost(4, 8, 16, 6)  # even kernels keep D_F with 'same' padding
    assert even.standard_madds == 4 * 4 * 8 * 16 * 6 * 6
    with pytest.raises(mobilenets.MobilenetsError, match="D_K"):
        paper.layer_cost(0, 8, 8, 8)


def test_v1_block_vs_v2_block_worked_example():
    b = paper.block_comparison()
    assert b.v2_params == 1 * 1 * 24 * 144 + 3 * 3 * 144 + 1 * 1 * 144 * 24 == 8_208
    assert b.v1_params == 3 * 3 * 144 + 144 * 144 == 22_032
    assert round(b.params_ratio, 1) == 2.7  # "about 2.7x more"
    # V2 §3: h·w·d'·t(d' + k² + d'') multiply-adds for the bottleneck.
    assert b.v2_madds == 56 * 56 * 24 * 6 * (24 + 9 + 24)


def test_v1_table_3_rows_match_the_paper():
    rows = paper.v1_table_3()
    published = [(462, 2.36), (52.3, 0.27), (29.6, 0.15), (15.1, 0.15)]
    assert [(r.published_madds_m, r.published_params_m) for r in rows] == published
    assert all(r.agrees for r in rows)
    assert [r.madds for r in rows] == [462_422_016, 52_283_392,
                                       9 * 384 * 14 * 14 + 384 * 384 * 14 * 14,
                                       9 * 384 * 10 * 10 + 384 * 384 * 10 * 10]


def test_v1_table_2_shares_by_layer_type():
    rows = {r.type: r for r in paper.v1_table_2()}
    assert sum(r.madds for r in rows.values()) == 568_740_352
    # Computed shares (SPEC §1.3); the paper's 1.19% for Conv 3×3 is a misprint of 1.91%.
    expected = {"Conv 1×1": (94.86, 74.59), "Conv DW 3×3": (3.06, 1.06),
                "Conv 3×3": (1.91, 0.02), "Fully Connected": (0.18, 24.33)}
    for kind, (madds_pct, params_pct) in expected.items():
        assert round(rows[kind].madds_pct, 2) == madds_pct, kind
        assert round(rows[kind].params_pct, 2) == params_pct == rows[kind].published_params_pct
    assert rows["Conv 3×3"].published_madds_pct == 1.19 and rows["Conv 3×3"].note
    assert rows["Conv 3×3"].madds == 3 * 3 * 3 * 32 * 112 * 112


# ---------------------------------------------------------------- published tables

def test_published_rows_cover_every_table_row():
    counts = {s: sum(p.source == s for p in paper.PUBLISHED) for s in paper.TABLE_SOURCES}
    assert counts == {"V1 Table 6": 4, "V1 Table 7": 4, "TF-slim V2": 22,
                      "V3 Table 9 (v5)": 19, "TF-slim V3": 6}


def test_tables_v1_rows_agree():
    result = paper.tables(["V1 Table 6"])
    assert [r.mark for r in result.rows] == ["✓"] * 4
    assert result.rows[0].madds == 568_740_352 and result.rows[0].params == 4_231_976
    with pytest.raises(mobilenets.MobilenetsError, match="unknown table source"):
        paper.tables(["V9 Table 1"])


def _published(source, label):
    return next(p for p in paper.PUBLISHED if p.source == source and p.label == label)


def test_slim_v2_params_count_no_batchnorm():
    row = paper.table_row(_published("TF-slim V2", "mobilenet_v2_1.0_224"))
    model = mobilenets.create_model("mobilenet_v2")
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
             for p in m.parameters())
    assert row.params == 3_504_872 - bn == 3_470_760  # prints as 3.47, slim's figure
    assert row.mark == "✓" and math.floor(row.madds / 1e6) == 300


def test_v3_small_old_figures_are_marked_as_conflict():
    row = paper.table_row(_published("TF-slim V3", "Small dm=1"))
    assert round(row.madds / 1e6, 2) == 56.51  # arXiv v5 / torchvision (SPEC §3.4)
    assert not row.madds_ok and row.mark == "⚠" and "older" in row.note


# ---------------------------------------------------------------- memory

def test_v2_table_3_cells_from_the_real_networks():
    v1 = paper.largest_tensors(mobilenets.create_model("mobilenet_v1"))
    assert (v1[112].channels, round(v1[112].kb)) == (64, 1606)  # paper: 64/1600
    assert [v1[s].channels for s in (56, 28, 14, 7, 1)] == [128, 256, 512, 1024, 1024]
    assert v1[7].kb == 1024 * 7 * 7 * 2 / 1000  # ~100; the paper prints 199 (SPEC §2.4)
    v2_model = mobilenets.create_model("mobilenet_v2")
    v2 = paper.largest_tensors(v2_model)
    assert (v2[112].channels, v2[112].layer) == (32, "features.0")  # the first layer
    bottlenecks = paper.largest_tensors(v2_model, exclude=("features.0", "features.18"))
    assert (bottlenecks[112].channels, round(bottlenecks[112].kb)) == (16, 401)  # paper 16/400
    assert bottlenecks[7].channels == 320 and bottlenecks[1].channels == 1280
    ops = paper.largest_tensors(v2_model, level="ops")
    assert ops[112].channels == 96  # the expansion a whole-block computation materialises


def _random_bn(module):
    return randomize_batchnorm(module, seed=1)


@pytest.mark.parametrize("cin, exp, cout, stride, project_act", [
    (16, 96, 24, 2, None),    # expansion, stride 2
    (24, 144, 24, 1, None),   # residual
    (32, 32, 16, 1, None),    # V2's first bottleneck: no expansion layer
    (24, 144, 24, 1, "RE6"),  # the ablation's ReLU6 projection
])
def test_split_bottleneck_equals_block_and_memory_drops(cin, exp, cout, stride, project_act):
    block = _random_bn(InvertedResidual(cin, exp, cout, 3, stride, project_act=project_act))
    x = torch.randn(1, cin, 20, 20)
    with torch.no_grad():
        expected = block(x)
    peaks = []
    for t in (1, 2, 3, exp):
        split = paper.SplitInvertedResidual(block, t)
        with torch.no_grad():
            out = split(x)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        assert split.peak_elements == paper.split_memory_bound(block, t, 20, 20)
        peaks.append(split.peak_elements)
    h2 = 20 // stride
    # |s²k| + |s'²k'| + one group: one channel of expansion and depthwise output at t = n.
    inner = h2 * h2 + (20 * 20 if exp != cin else 0)
    assert peaks[-1] == 20 * 20 * cin + h2 * h2 * cout + inner
    assert peaks == sorted(peaks, reverse=True) and peaks[-1] < peaks[0]


def test_split_network_same_logits_and_lower_peak():
    v2 = _random_bn(mobilenets.create_model("mobilenet_v2", width_mult=0.35))
    sizes, logits = paper.op_memory(v2, 64)
    split_sizes, split_logits = paper.op_memory(paper.split_network(v2, 3), 64)
    torch.testing.assert_close(split_logits, logits, rtol=1e-4, atol=1e-5)
    bound, _ = paper.split_bound(v2, 3, 64, sizes)
    assert max(split_sizes.values()) == bound < max(sizes.values())


def test_split_rejects_squeeze_excite():
    se_block = InvertedResidual(16, 64, 16, 3, 1, se_channels=16)
    with pytest.raises(mobilenets.MobilenetsError, match="squeeze-excite"):
        paper.SplitInvertedResidual(se_block, 2)


# ---------------------------------------------------------------- manifold, activations

def test_manifold_error_drops_with_dimension_and_is_reproducible(tmp_path):
    result = paper.manifold()
    errors = [r.error for r in result.rows]
    assert [r.dim for r in result.rows] == [2, 3, 5, 15, 30]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]
    for r in result.rows:  # P(at least 2 of n random directions in a half-plane)
        assert r.recoverable == pytest.approx(1 - (r.dim + 1) / 2 ** r.dim, abs=0.05)
    assert paper.manifold() == result
    png = paper.plot_manifold(result, tmp_path / "manifold.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 200_000


def test_activation_max_differences(tmp_path):
    result = {d.pair: d for d in paper.activations().diffs}
    # sigmoid - (x+3)/6 peaks where sigmoid' = 1/6: s(1-s) = 1/6.
    s = (1 + math.sqrt(1 / 3)) / 2
    x_star = math.log(s / (1 - s))
    sig = result["sigmoid vs hard sigmoid"]
    assert sig.max_abs_diff == pytest.approx(s - (x_star + 3) / 6, abs=1e-7)
    assert abs(sig.at) == pytest.approx(x_star, abs=1e-3)
    # swish vs hard swish: largest at |x| = 3, where hard swish reaches 0 or x.
    sw = result["swish vs hard swish"]
    assert sw.max_abs_diff == pytest.approx(3 / (1 + math.exp(3)), abs=1e-9)
    assert abs(sw.at) == pytest.approx(3.0)
    c = paper.activation_curves(-5, 5, 101)
    assert np.allclose(c["hard_swish"], c["x"] * np.clip(c["x"] + 3, 0, 6) / 6)
    png = paper.plot_activations(tmp_path / "act.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 200_000


# ---------------------------------------------------------------- last stage

def test_v3_efficient_last_stage_and_stem_savings():
    r = paper.last_stage()
    assert r.efficient_madds == 216_589_760
    # Removed: depthwise 3×3 on 960 ch and the 960→320 projection at 7×7, and the
    # 320→1280 conv at 7×7, which the efficient stage runs as 960→1280 on the pooled vector.
    removed = 9 * 960 * 49 + 960 * 320 * 49 + 320 * 1280 * 49 - 960 * 1280
    assert r.last_stage_saving == removed == 34_317_760
    assert 25e6 < r.last_stage_saving < 40e6  # "30 millions MAdds"
    # 32 instead of 16 stem filters: 16 more 3×3×3 filters at 112² and a 1×1 32→16
    # expansion the first bneck then needs.
    assert r.stem_saving == 16 * 27 * 112 * 112 + 32 * 16 * 112 * 112 == 11_841_536
    assert 5e6 < r.stem_saving < 15e6  # "10 million MAdds"


# ---------------------------------------------------------------- CLI

def test_cli_cost_writes_json_and_prints_table(tmp_path, capsys):
    assert main(["paper", "cost", "--dk", "5", "--m", "32", "--n", "64", "--df", "7",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "8,208" in out and "22,032" in out
    data = json.loads((tmp_path / "cost.json").read_text())
    assert data["layer"]["standard_madds"] == 5 * 5 * 32 * 64 * 7 * 7
    assert data["layer"]["ratio"] == pytest.approx(1 / 64 + 1 / 25)


def test_cli_json_and_figures(tmp_path, capsys):
    assert main(["paper", "activations", "--out", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["activations"]["diffs"][1]["pair"] == "swish vs hard swish"
    assert (tmp_path / "activations.png").stat().st_size < 200_000


def test_cli_unknown_topic_is_a_user_error(tmp_path, capsys):
    assert main(["paper", "manifolds", "--out", str(tmp_path)]) == 2
    assert "did you mean 'manifold'" in capsys.readouterr().err


def test_cli_unusable_out_directory_is_a_user_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["paper", "cost", "--out", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to") and "choose another --out" in err


def test_cli_ablation_takes_a_batch_size(tmp_path, monkeypatch, capsys):
    """The trainer's "fewer than one batch; lower --batch-size" advice must be followable."""
    seen = {}

    def fake(out, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(paper, "ablation", fake)
    assert main(["paper", "ablation", "--out", str(tmp_path), "--batch-size", "8"]) == 0
    assert seen["batch_size"] == 8


# ---------------------------------------------------------------- ablation

def test_ablation_trains_linear_and_relu6_bottlenecks(tmp_path):
    pytest.importorskip("mobilenets.training.trainer")
    from datagen import make_idx_dir

    data = make_idx_dir(tmp_path / "idx", n_train=32, n_test=16, classes=10)
    rows = paper.ablation(tmp_path / "runs", data=str(data), epochs=1, max_steps=2,
                          batch_size=16, workers=0)
    assert [(r.variant, r.project_act) for r in rows] == [("linear", None), ("relu6", "RE6")]
    assert all(0.0 <= r.best_acc <= 1.0 and 0.0 <= r.final_acc <= 1.0 for r in rows)
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"ablation-linear", "ablation-relu6"}
