"""The benchmark scripts' own logic (what they compute from timings), on synthetic timings:
the measurements themselves are the scripts' job, run by hand, not by the suite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(model: str, mode: str, ms: dict[int, dict[str, float]], contended: tuple = ()) -> dict:
    """A ``BenchReport.to_json()`` with just what ``inference.py`` reads."""
    return {"model": model, "threads": 2,
            "machine": {"cpu": "Test CPU", "torch": "2.x", "onnxruntime": "1.x", "malloc": mode,
                        "load_average_start": 0.1, "load_average_end": 0.2},
            "results": [{"backend": b, "batch": batch, "median_ms": v,
                         "contended_rounds": int(b in contended)}
                        for batch, row in ms.items() for b, v in row.items()]}


KEPT = {1: {"eager": 15.0, "channels_last": 13.0, "torchscript": 11.0, "compile": 10.0,
            "compile-bf16": None, "onnxruntime": 5.0, "onnxruntime-int8": 4.0},
        32: {"eager": 300.0, "channels_last": 250.0, "torchscript": 240.0, "compile": 200.0,
             "compile-bf16": None, "onnxruntime": 150.0, "onnxruntime-int8": 120.0}}
PLAIN = {1: {"eager": 20.0, "compile": 12.0}, 32: {"eager": 900.0, "compile": 300.0}}


def test_inference_ratios_take_the_baseline_from_the_plain_process(monkeypatch):
    inference = load("inference", monkeypatch)
    kept = report("mobilenet_v2", "freed memory kept", KEPT, contended=("torchscript",))
    plain = report("mobilenet_v2", "default", PLAIN)
    row = inference.summarize(kept, plain, 1)
    assert row["best_pytorch"] == "compile"
    assert row["pytorch_speedup"] == pytest.approx(20 / 10)  # plain eager over our best path
    assert row["compiler_alone_speedup"] == pytest.approx(20 / 12)
    assert row["malloc_alone_speedup"] == pytest.approx(20 / 15)
    assert row["int8_speedup"] == pytest.approx(5 / 4) and "bf16_speedup" not in row
    assert row["contended"] == ["torchscript"]

    slower = report("mobilenet_v2", "freed memory kept", {1: {**KEPT[1], "compile": 12.5}})
    both = inference.combine([row, inference.summarize(slower, plain, 1),
                              inference.summarize(kept, plain, 1)])
    assert both["runs"] == 3 and both["median_ms"]["compile"] == 10.0
    assert both["pytorch_speedup"] == pytest.approx(2.0)
    assert both["pytorch_speedup_range"] == pytest.approx([20 / 11, 2.0])  # torchscript was best there
    table = inference.markdown([both], [kept, plain])
    assert "| `mobilenet_v2` | 1 | 20.0 | 12.0 | 15.0 | 13.0 | 11.0† | 10.0 | **2.00×** (1.82-2.00) compile |" in table
    assert "*Plain*" in table and "†" in table


def test_inference_runs_alternate_plain_and_kept_processes(monkeypatch, tmp_path):
    """Each run is two child processes; which goes first alternates, and the goals are
    judged on plain eager against the kept process's best path."""
    inference = load("inference", monkeypatch)
    order = []

    def fake_run(cmd, check):
        mode, out = cmd[cmd.index("--child") + 1], Path(cmd[cmd.index("--child-out") + 1])
        order.append(mode)
        out.write_text(json.dumps([report(m, mode, KEPT if mode == "kept" else PLAIN)
                                   for m in inference.MODELS]))

    monkeypatch.setattr(inference.subprocess, "run", fake_run)
    assert inference.main(["--runs", "2", "--out", str(tmp_path / "r.json")]) == 0
    assert order == ["plain", "kept", "kept", "plain"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["reports"]) == 2 * 2 * len(inference.MODELS)
    assert data["goals_met"] == {"pytorch_2x": True, "pytorch_bf16_2x": None, "int8_2x": False}
    assert [r["pytorch_speedup"] for r in data["summary"]] == pytest.approx([2.0, 4.5] * len(inference.MODELS))


def test_eval_malloc_compares_the_two_processes_and_refuses_different_scores(monkeypatch, tmp_path):
    eval_malloc = load("eval_malloc", monkeypatch)
    calls = []
    seconds = {"plain": [20.0, 21.0, 22.0], "kept": [10.0, 8.4, 11.0]}

    def fake(checkpoint, data, extra):
        mode = "plain" if extra == ["--no-reuse-memory"] else "kept"
        calls.append(mode)
        k = sum(m == mode for m in calls) - 1
        return {"seconds": seconds[mode][k], "page_faults": 7e6 if mode == "plain" else 1e5, "top1": 0.9}

    monkeypatch.setattr(eval_malloc, "timed_eval", fake)
    assert eval_malloc.main(["ckpt", "--rounds", "3", "--out", str(tmp_path / "e.json")]) == 0
    assert calls == ["plain", "kept", "kept", "plain", "plain", "kept"]
    summary = json.loads((tmp_path / "e.json").read_text())["summary"]
    assert summary["plain_seconds"] == 21.0 and summary["kept_seconds"] == 10.0
    assert summary["speedup"] == pytest.approx(2.0)  # rounds: 2.0, 2.5, 2.0
    assert summary["speedup_range"] == pytest.approx([2.0, 21 / 8.4])

    monkeypatch.setattr(eval_malloc, "timed_eval", lambda c, d, extra: {
        "seconds": 1.0, "page_faults": 0, "top1": 0.5 if extra else 0.6})
    with pytest.raises(SystemExit, match="scored differently"):
        eval_malloc.main(["ckpt", "--rounds", "1", "--out", str(tmp_path / "f.json")])


def test_malloc_ratios_are_per_round_and_every_mode_runs_in_its_own_process(monkeypatch, tmp_path):
    """``malloc.py``: each configuration in its own child process every round (a malloc
    setting holds for a whole process), speed-ups taken within a round, then medians."""
    malloc = load("malloc", monkeypatch)
    step = {"plain": [2.0, 2.2, 1.8], "default": [1.1, 1.2, 1.0], "kept": [1.0, 1.0, 0.9]}
    seen = []

    def fake_run(cmd, check, capture_output, text):
        model, mode = cmd[cmd.index("--child") + 1: cmd.index("--child") + 3]
        seen.append((model, mode, cmd[cmd.index("--precision") + 1]))

        class Done:
            stdout = "oneDNN chatter\n" + json.dumps({"precision": "fp32", "seconds": {"fp32": 1.0, "bf16": 1.1}})
        if mode == "trial":
            return Done()
        k = sum(m == mode for _, m, _ in seen) - 1
        figures = {"step_s": step[mode][k], "faults_per_step": 100_000 if mode != "kept" else 0,
                   "system_s_per_step": 0.1, "peak_rss_mib": 1000.0}

        Done.stdout = json.dumps(figures)
        return Done()

    import mobilenets.ops.cpu

    monkeypatch.setattr(malloc.subprocess, "run", fake_run)
    monkeypatch.setattr(mobilenets.ops.cpu, "bf16_supported", lambda: True)
    malloc.main(["--models", "mobilenet_v3_small", "--rounds", "3", "--out", str(tmp_path / "m.json")])
    # --precision auto: the trainer's choice, timed once in its own process, for every configuration
    assert seen == [("mobilenet_v3_small", "trial", "auto")] + [
        ("mobilenet_v3_small", m, "fp32") for _ in range(3) for m in malloc.MODES]
    row = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    assert row["precision"] == "fp32" and row["precision_trial_s"] == {"fp32": 1.0, "bf16": 1.1}
    assert row["speedup"] == pytest.approx(1.0 / 0.9)  # rounds: 1.1, 1.2, 1.11
    assert row["speedup_range"] == pytest.approx([1.1, 1.2])
    assert row["trainer_vs_plain"] == pytest.approx(2.0)  # rounds: 2.0, 2.2, 2.0
    assert row["kept_faults_per_step"] == 0 and row["plain_step_s"] == 2.0
    assert "compiled_vs_plain" not in row


@pytest.mark.parametrize("optimised, small_map, expected", [(False, True, False), (True, True, True),
                                                            (True, False, False)])
def test_training_step_uses_the_small_map_gradient_as_configured(monkeypatch, optimised, small_map, expected):
    """``make_step``'s plain baseline keeps oneDNN's depthwise weight gradient, the optimised
    step takes the library's, and ``small_map=False`` keeps oneDNN's there too
    (``cpu_kernels.py``'s step A/B)."""
    from mobilenets.ops.depthwise import SmallMapDepthwise

    throughput = load("train_throughput", monkeypatch)
    calls = []
    apply = SmallMapDepthwise.apply
    monkeypatch.setattr(SmallMapDepthwise, "apply", lambda *a: calls.append(1) or apply(*a))
    step, _ = throughput.make_step("mobilenet_v3_small", optimised, False, 2, 28, True, small_map=small_map)
    assert step() > 0
    assert bool(calls) == expected
