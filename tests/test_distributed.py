"""DDP with gloo on CPU: 2 processes equal 1 process with the same global batch, and a
distributed run resumes at another world size."""

import json
import os
import subprocess
import sys

import pytest
import torch

from datagen import make_idx_dir
from mobilenets.io.checkpoint import read_checkpoint
from mobilenets.ops.cpu import bf16_supported

ARGS = ["--epochs", "2", "--batch-size", "16", "--width-mult", "0.25", "--precision", "fp32",
        "--ema", "0.9"]


def _run(*args):
    # One thread per process, as torchrun sets it, so single and distributed runs use the
    # same kernels and differ only in how gradients are summed.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mobilenets", "train", *args], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _weights(run):
    """Parameters, EMA parameters and optimizer state. BatchNorm running statistics are left
    out: with DDP they are rank 0's (broadcast each step), with accumulation they see every
    micro-batch; training itself uses batch statistics, so the weights do not depend on them."""
    tensors, meta = read_checkpoint(run / "last.safetensors")
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return ({k: v for k, v in tensors.items() if not k.endswith(buffers)},
            meta["train_state"]["history"])


def _assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_idx_dir(root / "data", n_train=96, n_test=32)
    common = ["--data", str(data), *ARGS]
    _run(*common, "--out", str(root / "single"), "--accum-steps", "2")
    out = _run(*common, "--out", str(root / "ddp"), "--nproc-per-node", "2")
    _run(*common, "--out", str(root / "split"), "--nproc-per-node", "2", "--stop-after-epoch", "1")
    _run("--out", str(root / "split"), "--resume")  # one process continues the 2-process run
    return root, out


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    root, out = runs
    single, single_hist = _weights(root / "single")
    ddp, ddp_hist = _weights(root / "ddp")
    _assert_close(single, ddp)
    # Validation metrics cover the full set on every rank, not rank 0's shard.
    assert [h["val_count"] for h in ddp_hist] == [32, 32]
    assert [h["train_loss"] for h in single_hist] == pytest.approx([h["train_loss"] for h in ddp_hist], rel=1e-4)
    assert "2 processes" in out.stdout and out.stdout.count("done:") == 1


def test_resume_at_another_world_size(runs):
    root, _ = runs
    ddp, _ = _weights(root / "ddp")
    resumed, hist = _weights(root / "split")
    assert [h["epoch"] for h in hist] == [1, 2]
    _assert_close(ddp, resumed)


def test_failure_on_a_rank_ends_the_job_with_a_clear_message(tmp_path):
    data = make_idx_dir(tmp_path / "data", n_train=96, n_test=32)
    proc = subprocess.run([sys.executable, "-m", "mobilenets", "train", "--data", str(data), *ARGS,
                           "--out", str(tmp_path / "bad"), "--nproc-per-node", "2", "--lr", "1e30",
                           "--optimizer", "sgd", "--warmup", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: distributed training failed" in proc.stderr
    assert "loss became" in proc.stdout + proc.stderr


@pytest.mark.skipif(not bf16_supported(), reason="auto times the precisions only on CPUs with native bf16")
def test_auto_precision_under_torchrun_trains_every_process_in_one_precision(tmp_path):
    """Each process times fp32 and bf16 itself, then all take the first one's choice
    (``broadcast_object_list``): the 2-process run finishes (no process left waiting in the
    broadcast) and equals one process trained in the recorded precision."""
    data = make_idx_dir(tmp_path / "data", n_train=96, n_test=32)
    args = ["--data", str(data), "--epochs", "1", "--batch-size", "16", "--width-mult", "0.25"]
    out = _run(*args, "--out", str(tmp_path / "ddp"), "--nproc-per-node", "2", "--precision", "auto")
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["precision"] == "auto" and set(config["precision_trial_s"]) == {"fp32", "bf16"}
    used = config["precision_used"]
    assert f", {used} (auto: " in out.stdout
    _run(*args, "--out", str(tmp_path / "single"), "--accum-steps", "2", "--precision", used)
    _assert_close(_weights(tmp_path / "single")[0], _weights(tmp_path / "ddp")[0])
