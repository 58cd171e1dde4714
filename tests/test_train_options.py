"""Training options that must mean what they say: recipe overrides, what --resume keeps,
--init's model, the learning-rate schedule, checkpoint metadata, and checks made before any
work starts (before torchrun launches the workers, too)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from datagen import make_idx_dir
from mobilenets import MobilenetsError
from mobilenets.io.checkpoint import load_model, read_checkpoint
from mobilenets.cli.main import build_parser, main
from mobilenets.training import METRIC_COLUMNS, TrainConfig, Trainer, evaluate, lr_factor, train
from mobilenets.cli.train import _config_from_args

TINY = dict(model="mobilenet_v3_small", model_kwargs={"width_mult": 0.25}, batch_size=16, lr=0.05,
            warmup=0.0, precision="fp32", progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("data") / "tiny", n_train=64, n_test=16)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "data": str(data), "out": str(out), **kw})


def _cli_config(*argv: str) -> TrainConfig:
    return _config_from_args(build_parser().parse_args(["train", *argv]))


def _one_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_ema_zero_turns_off_a_recipes_ema() -> None:
    assert TrainConfig(recipe="v3-paper").resolved().ema == 0.9999
    assert TrainConfig(recipe="v3-paper", ema=0).resolved().ema is None
    assert _cli_config("--recipe", "v3-paper", "--ema", "0").resolved().ema is None
    assert _cli_config("--recipe", "v3-paper").resolved().ema == 0.9999
    assert _cli_config("--ema", "0.99").resolved().ema == 0.99


def test_a_fractional_warmup_never_overshoots_the_peak() -> None:
    cfg = TrainConfig(warmup=0.25, epochs=2).resolved()
    factors = [lr_factor(cfg, step, 10) for step in range(20)]
    assert max(factors) == 1.0
    assert factors[:3] == pytest.approx([0.4, 0.8, 1.0])  # 2.5 warm-up steps, the third capped
    assert factors[3] < 1.0  # then the cosine decay


def test_resume_keeps_the_runs_steps_normalization_and_column_order(idx_dir: Path, tmp_path: Path,
                                                                    capsys) -> None:
    """Resuming an --init run: --max-steps stays as the run had it, the normalization stays
    the --init checkpoint's (not recomputed from the data), metrics keep their columns."""
    train(_cfg(idx_dir, tmp_path / "base", epochs=1, max_steps=1))
    init = tmp_path / "init.safetensors"
    with safe_open(str(tmp_path / "base" / "best.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["mobilenets"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["preprocessing"].update(mean=[0.125], std=[0.5])  # not the data's statistics
    save_file(tensors, str(init), metadata={"mobilenets": json.dumps(meta)})

    run = tmp_path / "ft"
    first = Trainer(_cfg(idx_dir, run, epochs=3, max_steps=2, stop_after_epoch=1, init=str(init), ema=0.9))
    assert first.preprocessing["mean"] == [0.125] and first.steps_per_epoch == 2
    first.fit()
    resumed = Trainer(_cfg(idx_dir, run, resume=True, stop_after_epoch=2))
    assert resumed.steps_per_epoch == 2 and resumed.cfg.max_steps == 2
    assert resumed.preprocessing["mean"] == [0.125] and resumed.preprocessing["std"] == [0.5]
    resumed.fit()
    _, last = read_checkpoint(run / "last.safetensors")
    assert last["preprocessing"]["mean"] == [0.125]
    assert [h["epoch"] for h in last["train_state"]["history"]] == [1, 2]
    with open(run / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == [c for c in METRIC_COLUMNS if c in header] and header[0] == "epoch"
    assert "ema_val_acc" in header
    first_row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert list(first_row) == header
    # Given again, --max-steps is honoured.
    assert Trainer(_cfg(idx_dir, run, resume=True, epochs=4, max_steps=1)).steps_per_epoch == 1
    capsys.readouterr()


def test_best_checkpoint_records_the_epoch_it_comes_from(idx_dir: Path, tmp_path: Path) -> None:
    result = train(_cfg(idx_dir, tmp_path / "r", epochs=2, max_steps=1))
    best_epoch = max(result.history, key=lambda h: h["val_acc"])["epoch"]  # the first maximum
    _, meta = load_model(tmp_path / "r" / "best.safetensors")
    assert meta["epoch"] == best_epoch and meta["val_acc"] == result.best_acc
    assert read_checkpoint(tmp_path / "r" / "last.safetensors")[1]["epoch"] == 2
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["precision"] == "fp32" and saved["precision_used"] == "fp32"
    assert saved["device_used"] == "cpu"


def test_init_refuses_model_options_that_differ_from_the_checkpoint(idx_dir: Path, tmp_path: Path,
                                                                     capsys) -> None:
    train(_cfg(idx_dir, tmp_path / "base", epochs=1, max_steps=1))
    base = str(tmp_path / "base" / "best.safetensors")
    line = _one_error(capsys, ["train", "--init", base, "--width-mult", "0.5", "--data", str(idx_dir),
                               "--out", str(tmp_path / "x")])
    assert "width_mult=0.5 (it has 0.25)" in line and "leave them out" in line
    # The same value, or dropout (training only), are fine.
    trainer = Trainer(_cfg(idx_dir, tmp_path / "ok", epochs=1, init=base,
                           model_kwargs={"width_mult": 0.25, "dropout": 0.5}))
    assert trainer.model_kwargs["dropout"] == 0.5 and trainer.model_kwargs["width_mult"] == 0.25


def test_val_fraction_on_idx_data_is_stored_and_eval_scores_the_held_out_images(
        idx_dir: Path, tmp_path: Path, capsys) -> None:
    trainer = Trainer(_cfg(idx_dir, tmp_path / "r", epochs=1, max_steps=1, val_fraction=0.25, seed=5))
    assert len(trainer.val_set) == 16 and len(trainer.train_set) == 48
    trainer.fit()
    capsys.readouterr()
    model, meta = load_model(tmp_path / "r" / "best.safetensors")
    assert meta["holdout"] == {"seed": 5, "val_fraction": 0.25}
    same = evaluate(model, trainer.val_set, meta["preprocessing"])
    for split, count in (("val", 16), ("train", 48), ("test", 16)):
        assert main(["eval", str(tmp_path / "r"), "--data", str(idx_dir), "--split", split, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["count"] == count, split
        if split == "val":
            assert res["confusion"] == same.confusion and res["loss"] == pytest.approx(same.loss)


def test_nproc_per_node_checks_the_options_once_before_launching(idx_dir: Path, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    import torch.distributed.run as run

    def must_not_launch(*_args):
        raise AssertionError("torchrun was started")

    monkeypatch.setattr(run, "main", must_not_launch)
    common = ["--nproc-per-node", "2", "--data", str(idx_dir), "--out", str(tmp_path / "r")]
    assert "epochs must be in [1, 100000], got 0" in _one_error(capsys, ["train", "--epochs", "0", *common])
    assert "unknown model 'mobilenet_v9'" in _one_error(capsys, ["train", "--model", "mobilenet_v9", *common])
    assert "data not found" in _one_error(capsys, ["train", "--nproc-per-node", "2", "--data",
                                                   str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    assert "nothing to resume" in _one_error(capsys, ["train", "--resume", *common])
    assert "--qat fine-tunes" in _one_error(capsys, ["train", "--qat", *common])


def test_out_of_memory_while_running_an_artifact_is_named_as_such(tmp_path: Path) -> None:
    from mobilenets.io.artifact import _guarded

    def oom(_x):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    def shape(_x):
        raise RuntimeError("Given groups=1, weight of size [16, 3, 3, 3], expected input to have 3 channels")

    x = np.zeros((512, 3, 224, 224), np.float32)
    with pytest.raises(MobilenetsError, match="ran out of memory on a batch of 512.*smaller batch size"):
        _guarded(tmp_path / "m.pt", oom)(x)
    with pytest.raises(MobilenetsError, match=r"failed on inputs of shape \(512, 3, 224, 224\)"):
        _guarded(tmp_path / "m.pt", shape)(x)


def test_resizing_in_memory_data_beyond_the_machines_memory_is_refused(idx_dir: Path, monkeypatch) -> None:
    import mobilenets.data.datasets as data
    import mobilenets.data.tensor_images as tensor_images

    ds = data.load_dataset(str(idx_dir), "test")
    monkeypatch.setattr(tensor_images, "_memory_bytes", lambda: 2 * 16 * 64 * 64 - 1)
    with pytest.raises(MobilenetsError, match="16 images at 64×64 px need .* choose a smaller --image-size"):
        ds.resized(64)
    monkeypatch.setattr(tensor_images, "_memory_bytes", lambda: 2 * 16 * 64 * 64)
    assert ds.resized(64).image_size == 64


def test_demo_takes_a_batch_size(tmp_path: Path, capsys) -> None:
    data = make_idx_dir(tmp_path / "data", n_train=32, n_test=8)
    line = _one_error(capsys, ["demo", "--data", str(data), "--out", str(tmp_path / "d"), "--epochs", "1"])
    assert "fewer than one batch of 256; lower --batch-size" in line
    # (test_train.py runs the demo with --batch-size)


def test_init_keeps_the_checkpoints_stem(idx_dir: Path, tmp_path: Path) -> None:
    """A checkpoint saved without ``small_input`` (converted weights, a model saved from
    Python) keeps its stride-2 stem: the data's size does not change the architecture."""
    from mobilenets import create_model
    from mobilenets.io.checkpoint import save_model

    init = tmp_path / "init.safetensors"
    save_model(create_model("mobilenet_v3_small", width_mult=0.25, num_classes=4, in_chans=1), init,
               preprocessing={"input_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]},
               classes=["0", "1", "2", "3"])
    trainer = Trainer(_cfg(idx_dir, tmp_path / "r", epochs=1, init=str(init), model_kwargs={}))
    assert "small_input" not in trainer.model_kwargs and trainer.model.features[0].stride == 2
    fresh = Trainer(_cfg(idx_dir, tmp_path / "s", epochs=1))
    assert fresh.model_kwargs["small_input"] is True


def test_init_trains_at_the_checkpoints_input_size_and_channels(idx_dir: Path, tmp_path: Path, capsys) -> None:
    """Fine-tuning (or QAT) continues the model as it was made: at its input size unless
    --image-size says otherwise; on other channels its stem is adapted to the data's."""
    from datagen import make_image_folder
    from mobilenets import create_model
    from mobilenets.io.checkpoint import save_model

    init = tmp_path / "init36.safetensors"
    save_model(create_model("mobilenet_v3_small", width_mult=0.25, num_classes=4, in_chans=1, small_input=True),
               init, preprocessing={"input_size": 36, "channels": 1, "mean": [0.5], "std": [0.5]},
               classes=["0", "1", "2", "3"])
    trainer = Trainer(_cfg(idx_dir, tmp_path / "r", epochs=2, stop_after_epoch=1, max_steps=1, init=str(init),
                           model_kwargs={}))
    assert trainer.image_size == 36 and trainer.cfg.image_size == 36
    trainer.fit()
    assert Trainer(_cfg(idx_dir, tmp_path / "r", resume=True)).image_size == 36
    assert Trainer(_cfg(idx_dir, tmp_path / "s", epochs=1, init=str(init), image_size=28,
                        model_kwargs={})).image_size == 28

    gray = make_image_folder(tmp_path / "gray", n_per_class=8, size=32, modes=("L",))
    rgb = tmp_path / "rgb.safetensors"
    save_model(create_model("mobilenet_v3_small", width_mult=0.25, num_classes=3, small_input=True), rgb,
               preprocessing={"input_size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
               classes=["cat", "dog", "fox"])
    cfg = _cfg(gray, tmp_path / "g", epochs=2, stop_after_epoch=1, max_steps=1, batch_size=8, init=str(rgb),
               model_kwargs={})
    first = Trainer(cfg)  # grey data, RGB checkpoint: the stem is adapted (issue 28), not the images
    assert first.channels == 1 and first.train_set[0][0].shape[0] == 1
    assert first.model.features[0].conv.weight.shape[1] == 1
    first.fit()
    assert Trainer(_cfg(gray, tmp_path / "g", resume=True)).channels == 1  # and on resume
    capsys.readouterr()


def test_warnings_for_a_reused_run_directory_and_an_init_holdout(idx_dir: Path, tmp_path: Path) -> None:
    train(_cfg(idx_dir, tmp_path / "r", epochs=1, max_steps=1, val_fraction=0.25, seed=2))
    with pytest.warns(UserWarning, match="holds an earlier run: this new run replaces its checkpoints"):
        train(_cfg(idx_dir, tmp_path / "r", epochs=1, max_steps=1))
    init = str(tmp_path / "r" / "best.safetensors")
    train(_cfg(idx_dir, tmp_path / "h", epochs=1, max_steps=1, val_fraction=0.25, seed=2))
    held = str(tmp_path / "h" / "best.safetensors")
    with pytest.warns(UserWarning, match=r"held out 0.25 .*seed 2.*--val-fraction 0.25 --seed 2 keeps"):
        Trainer(_cfg(idx_dir, tmp_path / "ft", epochs=1, init=held, model_kwargs={}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(_cfg(idx_dir, tmp_path / "ft2", epochs=1, init=held, model_kwargs={}, val_fraction=0.25, seed=2))
        Trainer(_cfg(idx_dir, tmp_path / "ft3", epochs=1, init=init, model_kwargs={}))
    with pytest.raises(MobilenetsError, match="is an exported model; --init takes the .safetensors"):
        Trainer(_cfg(idx_dir, tmp_path / "x", epochs=1, init=str(tmp_path / "m.onnx"), model_kwargs={}))


def test_time_precisions_times_both_and_leaves_the_model_and_random_streams_alone() -> None:
    from mobilenets import create_model
    from mobilenets.training.precision import time_precisions

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=4, in_chans=1, small_input=True, width_mult=0.25)
    model = model.train().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    times = time_precisions(model, (4, 1, 16, 16), 4, channels_last=True, steps=2)
    assert set(times) == {"fp32", "bf16"} and all(0 < t < 60 for t in times.values())
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # weights and BN statistics
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("times, chosen", [({"fp32": 1.0, "bf16": 0.8}, "bf16"),
                                           ({"fp32": 1.0, "bf16": 0.97}, "fp32"),  # under 5 %: fp32
                                           ({"fp32": 1.0, "bf16": 1.3}, "fp32")])
def test_auto_precision_on_a_bf16_cpu_trains_in_the_faster_one(idx_dir: Path, tmp_path: Path, monkeypatch,
                                                                 capsys, times, chosen) -> None:
    import mobilenets.training.precision as precision_module

    trials = []
    monkeypatch.setattr(precision_module, "bf16_supported", lambda: True)
    monkeypatch.setattr(precision_module, "time_precisions",
                        lambda model, shape, *a: trials.append(shape) or dict(times))
    trainer = Trainer(_cfg(idx_dir, tmp_path / "r", precision="auto", epochs=1, max_steps=1))
    assert trials == [(16, 1, 28, 28)]  # the micro-batch at the data's size
    assert "precision auto: timing 3 training steps in fp32 and in bf16" in capsys.readouterr().out
    assert trainer.precision == chosen and trainer.precision_trial == times
    assert trainer.amp_dtype == (torch.bfloat16 if chosen == "bf16" else None)
    trainer.fit()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["precision"] == "auto" and saved["precision_used"] == chosen
    assert saved["precision_trial_s"] == times


@pytest.mark.parametrize("precision, bf16_cpu", [("fp32", True), ("bf16", True), ("auto", False)])
def test_precision_is_timed_only_when_auto_has_a_choice(idx_dir: Path, tmp_path: Path, monkeypatch,
                                                        precision, bf16_cpu) -> None:
    import mobilenets.training.precision as precision_module

    monkeypatch.setattr(precision_module, "bf16_supported", lambda: bf16_cpu)
    monkeypatch.setattr(precision_module, "time_precisions", lambda *a: pytest.fail("timed without a choice"))
    trainer = Trainer(_cfg(idx_dir, tmp_path / "r", precision=precision))
    assert trainer.precision == ("fp32" if precision == "auto" else precision)
    assert trainer.precision_trial is None


def test_a_finished_run_resumed_times_nothing_and_keeps_its_record(idx_dir: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Resuming a run that has trained all its epochs trains nothing: no precision trial
    (seconds to tens of seconds), and config.json keeps what the run trained in."""
    import mobilenets.training.precision as precision_module

    trials = []
    monkeypatch.setattr(precision_module, "bf16_supported", lambda: True)
    monkeypatch.setattr(precision_module, "time_precisions",
                        lambda *a: trials.append(1) or {"fp32": 1.0, "bf16": 1.2})
    run = tmp_path / "r"
    Trainer(_cfg(idx_dir, run, precision="auto", epochs=1, max_steps=1)).fit()
    assert len(trials) == 1
    record = (run / "config.json").read_text()
    trainer = Trainer(_cfg(idx_dir, run, precision="auto", epochs=1, max_steps=1, resume=True))
    assert len(trials) == 1 and trainer.precision_trial is None
    trainer.fit()
    assert (run / "config.json").read_text() == record
    Trainer(_cfg(idx_dir, run, precision="auto", epochs=2, max_steps=1, resume=True)).fit()
    # An epoch left to train: it continues in the precision the run trained in, not timed
    # again (a re-timing could switch precision mid-run; issue 31).
    assert len(trials) == 1
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["precision_used"] == "fp32"


def test_every_process_trains_in_the_first_processes_precision(idx_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Each process times the precisions on its own; a distributed run must still train in
    one, so all take the first process's choice."""
    import torch.distributed as dist

    import mobilenets.training.precision as precision_module

    sent = []

    def broadcast(objects, src):
        sent.append((list(objects), src))
        objects[0] = "fp32"  # what the first process chose

    monkeypatch.setattr(precision_module, "bf16_supported", lambda: True)
    monkeypatch.setattr(precision_module, "time_precisions", lambda *a: {"fp32": 1.0, "bf16": 0.5})
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        trainer = Trainer(_cfg(idx_dir, tmp_path / "r", precision="auto"), rank=1, world_size=2)
    finally:
        dist.destroy_process_group()
    assert sent == [(["bf16"], 0)] and trainer.precision == "fp32" and trainer.amp_dtype is None
