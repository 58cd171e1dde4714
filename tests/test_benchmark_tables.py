"""The README's Fashion-MNIST tables come from ``benchmarks/train_fmnist.py --table``: the
runs must land in the right table, in order, with options that reproduce them."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_fmnist.py"


@pytest.fixture(scope="module")
def train_fmnist():
    spec = importlib.util.spec_from_file_location("train_fmnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(run: str, top1: float, threads: int = 2, precision: str = "bf16", **extra) -> dict:
    return {"run": run, "model": run.split("_e")[0], "model_kwargs": {}, "epochs": 4, "final_top1": top1,
            "per_epoch_top1": [top1], "minutes_to_93": None, "params": 1000, "madds_28px": 2e6,
            "train_minutes": 20.0, "images_per_sec": 100.0, "threads": threads, "precision": precision,
            "seed": 0, **extra}


def test_groups_get_their_own_table_between_goal_and_older(train_fmnist, capsys):
    results = {r["run"]: r for r in [
        row("mobilenet_v1_e4_old", 0.80, threads=1, precision="fp32"),
        row("mobilenet_v2_e4_side", 0.90, group="side-by-side", fp32_top1=0.9, tta_top1=0.91),
        row("mobilenet_v3_small_e4_goal", 0.94, fp32_top1=0.94, tta_top1=0.95),
        row("mobilenet_v3_large_e4_side", 0.92, group="side-by-side", fp32_top1=0.92, tta_top1=0.93),
        row("mobilenet_v1_e4_older", 0.85, group="older"),  # a group's name never merges tables
    ]}
    train_fmnist.print_table(results)
    tables = [t for t in capsys.readouterr().out.split("\n\n") if t.strip()]
    runs = [[line.split("`")[1] for line in t.splitlines()[2:]] for t in tables]
    assert runs == [
        ["--models mobilenet_v3_small --epochs 4 --tag goal"],
        ["--models mobilenet_v3_large --epochs 4 --tag side --group side-by-side",
         "--models mobilenet_v2 --epochs 4 --tag side --group side-by-side"],
        ["--models mobilenet_v1 --epochs 4 --tag older --group older"],
        ["--models mobilenet_v1 --epochs 4 --tag old"],
    ]
    assert "flip TTA" in tables[1] and "flip TTA" not in tables[3]
    assert "| 92.00 % | 92.00 % | 93.00 % |" in tables[1]


def test_runs_that_record_their_machine_get_a_table_per_cpu(train_fmnist, capsys):
    xeon = {"cpu": "Intel(R) Xeon(R) Processor"}
    results = {r["run"]: r for r in [
        row("mobilenet_v3_small_e4_zen", 0.94, fp32_top1=0.94, tta_top1=0.95),
        row("mobilenet_v3_small_e4_xeon", 0.93, precision="fp32", machine=xeon, fp32_top1=0.93, tta_top1=0.94),
        row("mobilenet_v3_small_e4_xeon2", 0.95, precision="fp32", machine=xeon, fp32_top1=0.95, tta_top1=0.95),
    ]}
    train_fmnist.print_table(results)
    tables = [t for t in capsys.readouterr().out.split("\n\n") if t.strip()]
    runs = [[line.split("`")[1] for line in t.splitlines()[2:]] for t in tables]
    assert runs == [["--models mobilenet_v3_small --epochs 4 --tag zen"],
                    ["--models mobilenet_v3_small --epochs 4 --tag xeon2",
                     "--models mobilenet_v3_small --epochs 4 --tag xeon"]]
