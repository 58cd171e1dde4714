"""``mobilenets pick``: candidates, the Pareto front and the choice, the command end to end."""

from __future__ import annotations

import json
import time

import pytest

from mobilenets.analysis.paper import PUBLISHED
from mobilenets.cli.main import main
from mobilenets.deploy import bench
from mobilenets.deploy import pick as pick_module
from mobilenets.deploy.candidates import (Candidate, paper_candidates, published_candidates,
                                          quick_candidates, registry_candidates)
from mobilenets.deploy.pick import (PickReport, Point, Timing, best_within, fastest, pareto_front,
                                    pick)
from mobilenets.errors import MobilenetsError
from mobilenets.io.weights import list_weights


def _point(name: str, ms: float, top1: float, backend: str = "onnxruntime") -> Point:
    return Point(Candidate("mobilenet_v3_small", resolution=224, top1=top1, source=name),
                 backend, ms, top1)


# ----------------------------------------------------------------------------- front and choice

def test_pareto_front_and_choice_on_synthetic_latencies():
    points = [_point("a", 1.0, 50.0), _point("b", 2.0, 60.0), _point("c", 2.5, 55.0),
              _point("d", 3.0, 60.0), _point("e", 4.0, 70.0), _point("f", 4.0, 65.0),
              _point("g", 0.5, 40.0), _point("h", 6.0, 69.0)]
    front = pareto_front(points)
    assert [p.candidate.source for p in front] == ["g", "a", "b", "e"]
    # c is slower and worse than b; d ties b on accuracy but is slower; f ties e's latency
    # with less accuracy; h is slower and worse than e.
    assert [p.candidate.source for p in points if all(p is not q for q in front)] == [
        "c", "d", "f", "h"]
    assert best_within(points, 5.0).candidate.source == "e"
    assert best_within(points, 3.9).candidate.source == "b"  # 60 %: b (2.0 ms) beats d (3.0 ms)
    assert best_within(points, 4.0).candidate.source == "e"  # the budget is inclusive
    assert best_within(points, 0.4) is None
    assert fastest(points).candidate.source == "g"
    assert fastest([]) is None


def test_front_keeps_the_first_of_equal_points():
    points = [_point("x", 1.0, 50.0), _point("y", 1.0, 50.0)]
    assert [p.candidate.source for p in pareto_front(points)] == ["x"]
    assert best_within(points, 1.0).candidate.source == "x"


def _report(budget: float) -> PickReport:
    cands = [Candidate("mobilenet_v3_small", {"width_mult": 0.5}, 224, 58.0, "T9 small 0.5"),
             Candidate("mobilenet_v3_large", {}, 224, 75.2, "T9 large 1.0"),
             Candidate("mobilenet_v2", {}, 224, 71.8, "slim v2 1.0")]
    timings = [{"onnxruntime": Timing(1.0, 1.2, 100), "eager": Timing(3.0, 3.5, 30, 1)},
               {"onnxruntime": Timing(4.0, 4.4, 30), "eager": Timing(9.0, 9.9, 10)},
               {"onnxruntime": Timing(4.5, 5.0, 30), "eager": Timing(note="unavailable: x")}]
    return PickReport(budget, 1, 2, ["onnxruntime", "eager"], 0.3, cands, timings,
                      machine={"cpu": "Test CPU"}, command="mobilenets pick")


def test_report_fronts_per_backend_and_choice_over_all():
    report = _report(5.0)
    assert [p.candidate.source for p in report.front("onnxruntime")] == ["T9 small 0.5", "T9 large 1.0"]
    assert [p.candidate.source for p in report.front("eager")] == ["T9 small 0.5", "T9 large 1.0"]
    best = report.choice()
    assert best == Point(report.candidates[1], "onnxruntime", 4.0, 75.2)
    assert best.candidate is report.candidates[1]
    assert report.verdict() == ("best within 5 ms: mobilenet_v3_large 1.0 @224 (75.2% top-1, "
                                "4.00 ms on onnxruntime)")
    table = report.table()
    assert "Pareto front on eager (2 of 2 timed)" in table and "not timed: eager: unavailable: x" in table
    assert "1 of 5 timings had rounds in which other processes used the CPU" in table
    assert table.splitlines()[3:6] == [
        "model               width   px  top-1 %  median ms  p90 ms  source",
        "------------------  -----  ---  -------  ---------  ------  ------------",
        "mobilenet_v3_small    0.5  224     58.0       1.00    1.20  T9 small 0.5"]
    data = report.to_json()
    assert data["choice"]["source"] == "T9 large 1.0" and data["choice"]["backend"] == "onnxruntime"
    assert data["choice_per_backend"]["eager"]["source"] == "T9 small 0.5"
    assert [p["source"] for p in data["fronts"]["onnxruntime"]] == ["T9 small 0.5", "T9 large 1.0"]
    assert data["candidates"][2]["latency"]["eager"]["median_ms"] is None


def test_nothing_within_the_budget_names_the_fastest():
    report = _report(0.5)
    assert report.choice() is None
    assert report.verdict() == ("nothing fits within 0.5 ms; the fastest candidate is "
                                "mobilenet_v3_small 0.5 @224 (58.0% top-1, 1.00 ms on onnxruntime)")
    assert report.to_json()["choice"] is None


# ----------------------------------------------------------------------------- candidates

def test_candidates_are_every_published_top1():
    registry = registry_candidates()
    assert {c.source for c in registry} == {w.tag for w in list_weights() if w.top1 is not None}
    paper = paper_candidates()
    assert len(paper) == len(PUBLISHED) == 55  # every table row prints a top-1
    by_source = {c.source: c for c in paper}
    v3 = by_source["V3 Table 9 (v5): small 224/0.35"]
    assert (v3.model, v3.kwargs, v3.resolution, v3.top1) == (
        "mobilenet_v3_small", {"width_mult": 0.35, "width_convention": "tf"}, 224, 49.8)
    assert by_source["V1 Table 7: 1.0 MobileNet-160"].top1 == 67.2
    assert by_source["TF-slim V2: mobilenet_v2_0.35_96"].resolution == 96
    assert by_source["TF-slim V3: Small minimalistic"].model == "mobilenet_v3_small_minimal"
    tv = next(c for c in registry if c.source == "torchvision.mobilenet_v3_large.imagenet1k_v2")
    assert (tv.resolution, tv.top1) == (224, 75.274)
    assert published_candidates() == registry + paper
    assert len(registry + paper) == 89 and len({c.timing_key() for c in registry + paper}) == 76


def test_timing_key_ignores_what_does_not_change_the_graph():
    a = Candidate("mobilenet_v2", {"width_mult": 1.0, "bn_eps": 1e-3, "num_classes": 1000}, 224)
    b = Candidate("mobilenet_v2", {}, 224)
    assert a.timing_key() == b.timing_key()
    assert a.timing_key() != Candidate("mobilenet_v2", {}, 192).timing_key()
    assert a.timing_key() != Candidate("mobilenet_v2", {"width_convention": "tf"}, 224).timing_key()


def test_quick_keeps_the_smallest_width_and_1_0_per_family():
    quick, said = quick_candidates(published_candidates())
    assert [(c.model, c.width_mult) for c in quick] == [
        ("mobilenet_v1", 0.25), ("mobilenet_v1", 1.0), ("mobilenet_v2", 0.35), ("mobilenet_v2", 1.0),
        ("mobilenet_v3_large", 0.35), ("mobilenet_v3_large", 1.0),
        ("mobilenet_v3_small", 0.35), ("mobilenet_v3_small", 1.0)]
    assert quick[5].top1 == 77.92  # the best published V3-Large 1.0 (timm miil)
    assert "--quick timed 8 of 89" in said and "skipped 81" in said


# ----------------------------------------------------------------------------- measuring and CLI

TINY = [Candidate("mobilenet_v3_small", {"width_mult": 0.25, "num_classes": 10}, 32, 40.0, "tiny a"),
        Candidate("mobilenet_v3_small", {"width_mult": 0.5, "num_classes": 10}, 32, 45.0, "tiny b"),
        Candidate("mobilenet_v3_small", {"width_mult": 0.5, "num_classes": 10, "bn_eps": 1e-3}, 32,
                  44.0, "tiny b again")]


def test_pick_cli_end_to_end_on_a_tiny_candidate_set(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(pick_module, "published_candidates", lambda: list(TINY))
    out_json, out_png = tmp_path / "pick.json", tmp_path / "front.png"
    assert main(["pick", "--budget-ms", "1000", "--seconds", "0.1", "--threads", "1",
                 "--json", str(out_json), "--plot", str(out_png)]) == 0
    out = capsys.readouterr()
    assert "best within 1000 ms: mobilenet_v3_small 0.5 @32 (45.0% top-1" in out.out
    assert "[3/" not in out.err and "[2/2] mobilenet_v3_small 0.5 @32" in out.err  # b timed once
    data = json.loads(out_json.read_text())
    lat = [c["latency"]["onnxruntime"] for c in data["candidates"]]
    assert all(t["median_ms"] > 0 and t["calls"] >= 2 for t in lat) and lat[1] == lat[2]
    assert data["choice"]["source"] == "tiny b" and data["threads"] == 1
    assert [p["source"] for p in data["fronts"]["onnxruntime"]][-1] == "tiny b"
    assert data["command"].startswith("mobilenets pick --budget-ms 1000")
    assert "cpu" in data["machine"] and data["budget_ms"] == 1000
    # the timing's own seconds: at least every timed call's, at most the whole test's
    assert sum(t["median_ms"] * t["calls"] for t in lat[:2]) / 1000 < data["wall_seconds"] < 600
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_backend_added_to_bench_works_in_pick(monkeypatch):
    """Backends are checked against ``bench.BACKENDS`` when pick runs, and built by bench."""
    monkeypatch.setattr(bench, "BACKENDS", bench.BACKENDS + ("newrt",))
    built = bench._Backends.runner

    def runner(self, backend, batch):
        return (lambda: time.sleep(0.001)) if backend == "newrt" else built(self, backend, batch)
    monkeypatch.setattr(bench._Backends, "runner", runner)
    report = pick(1.0, backends=["newrt"], candidates=TINY[:2], seconds=0.05, reuse_memory=False)
    assert [p.backend for p in report.points()] == ["newrt", "newrt"]
    assert all(p.median_ms >= 1.0 for p in report.points())
    assert "nothing fits within 1 ms" in report.verdict()


@pytest.mark.parametrize("args, message", [
    (["--budget-ms", "0"], "latency budget must be a positive number of ms, got 0.0"),
    (["--budget-ms", "nan"], "latency budget must be a positive number"),
    (["--budget-ms", "5", "--backends", "onnxruntim"], "did you mean 'onnxruntime'"),
    (["--budget-ms", "5", "--batch", "0"], "batch size must be >= 1"),
    (["--budget-ms", "5", "--plot", "front.jpg"], "--plot writes a PNG"),
    (["--budget-ms", "5", "--json", "/nonexistent/dir/p.json"], "does not exist"),
])
def test_pick_cli_errors(capsys, args, message):
    assert main(["pick", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_pick_cli_error_when_no_candidate_can_be_timed(monkeypatch, capsys):
    def broken(self, backend, batch):
        raise RuntimeError("no such runtime here")
    monkeypatch.setattr(bench._Backends, "runner", broken)
    monkeypatch.setattr(pick_module, "published_candidates", lambda: list(TINY[:1]))
    assert main(["pick", "--budget-ms", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: no candidate could be timed on onnxruntime (unavailable: "
                       "RuntimeError: no such runtime here)")


def test_pick_api_refuses_an_empty_candidate_list():
    with pytest.raises(MobilenetsError, match="no candidate to time"):
        pick(5.0, candidates=[])
