"""Training, checkpoints, exact resume, evaluation and prediction on tiny generated data."""

import json
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import make_idx_dir, make_image_folder
from mobilenets import MobilenetsError
from mobilenets.data.augment import normalize
from mobilenets.io.checkpoint import load_model, read_checkpoint
from mobilenets.cli.main import main
from mobilenets.data.datasets import TensorImages
from mobilenets.deploy.predict import predict_files
from mobilenets.training import TrainConfig, Trainer, evaluate, train

TINY = dict(model="mobilenet_v3_small", model_kwargs={"width_mult": 0.25}, batch_size=16,
            lr=0.05, warmup=0.0, precision="fp32", progress=False, erasing=0.25)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return make_idx_dir(tmp_path_factory.mktemp("data") / "tiny", n_train=96, n_test=32)


def _cfg(idx_dir, out, **kw):
    return TrainConfig(**{**TINY, "data": str(idx_dir), "out": str(out), **kw})


def test_training_lowers_the_loss_and_writes_the_run(idx_dir, tmp_path):
    result = train(_cfg(idx_dir, tmp_path / "run", epochs=3, ema=0.9))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "curves.png", "last.safetensors",
                 "best.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "ema_val_acc" in rows[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 3
    model, meta = load_model(tmp_path / "run" / "best.safetensors")
    assert meta["model_kwargs"]["small_input"] is True and meta["classes"] == ["0", "1", "2", "3"]
    assert meta["preprocessing"]["input_size"] == 28 and meta["preprocessing"]["channels"] == 1
    assert result.best_acc == pytest.approx(meta["val_acc"])


def test_the_cpu_trainer_trains_the_optimised_network_and_saves_a_plain_one(idx_dir, tmp_path):
    """On the CPU the trainer applies ``ops.cpu.optimize``; checkpoints stay plain networks
    (same keys, loaded into ``create_model``'s classes)."""
    from mobilenets.ops.layers import CpuDepthwiseConvNormAct, OutOfPlaceReLU6

    trainer = Trainer(_cfg(idx_dir, tmp_path / "opt", epochs=1, max_steps=1,
                           model="mobilenet_v2", model_kwargs={"width_mult": 0.25}))
    kinds = {type(m) for m in trainer.model.modules()}
    assert CpuDepthwiseConvNormAct in kinds and OutOfPlaceReLU6 in kinds
    trainer.fit()
    model, _ = load_model(tmp_path / "opt" / "last.safetensors")
    assert not any(isinstance(m, (CpuDepthwiseConvNormAct, OutOfPlaceReLU6)) for m in model.modules())


def test_no_weight_decay_on_bn_and_bias(idx_dir, tmp_path):
    trainer = Trainer(_cfg(idx_dir, tmp_path / "wd", epochs=1, weight_decay=0.01))
    decayed, plain = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])


def test_the_last_no_aug_epochs_see_the_images_as_evaluation_does(idx_dir, tmp_path, monkeypatch):
    """--no-aug-epochs N: no pad-crop and no erasing in the last N epochs; flips stay."""
    batches = []
    real = Trainer._augment

    def spy(self, images, g, augment):
        x = real(self, images, g, augment)
        batches.append((augment, images, x))
        return x

    monkeypatch.setattr(Trainer, "_augment", spy)
    train(_cfg(idx_dir, tmp_path / "r", epochs=3, no_aug_epochs=1))
    steps = 96 // 16
    assert [a for a, _, _ in batches] == [True] * 2 * steps + [False] * steps
    prep = read_checkpoint(tmp_path / "r" / "last.safetensors")[1]["preprocessing"]

    def untouched(images, x) -> bool:  # every image normalised as it is, or mirrored
        plain = normalize(images, prep["mean"], prep["std"])
        return bool(((x == plain).flatten(1).all(1) | (x == plain.flip(-1)).flatten(1).all(1)).all())

    assert all(untouched(images, x) for a, images, x in batches if not a)
    assert not all(untouched(images, x) for a, images, x in batches if a)


def test_photo_folders_stop_cropping_for_the_no_aug_epochs(tmp_path, monkeypatch):
    from mobilenets.data.datasets import ImageFolder

    root = make_image_folder(tmp_path / "photos", n_per_class=8, size=72, modes=("RGB",))
    crops = []
    real = ImageFolder._random_resized_crop

    def spy(self, img, i):
        crops.append(self._epoch)
        return real(self, img, i)

    monkeypatch.setattr(ImageFolder, "_random_resized_crop", spy)
    train(TrainConfig(**{**TINY, "data": str(root), "out": str(tmp_path / "p"), "epochs": 2,
                         "no_aug_epochs": 1, "workers": 0, "batch_size": 8}))
    assert crops and set(crops) == {0}  # random-resized crops in epoch 1 only


def _final_state(run):
    tensors, meta = read_checkpoint(run / "last.safetensors")
    return tensors, meta["train_state"]["history"]


def test_resume_is_exact(idx_dir, tmp_path):
    kw = dict(epochs=2, ema=0.9, optimizer="rmsprop")
    train(_cfg(idx_dir, tmp_path / "full", **kw))
    train(_cfg(idx_dir, tmp_path / "split", stop_after_epoch=1, **kw))
    assert len(_final_state(tmp_path / "split")[1]) == 1
    train(_cfg(idx_dir, tmp_path / "split", resume=True))
    full, full_hist = _final_state(tmp_path / "full")
    split, split_hist = _final_state(tmp_path / "split")
    assert full.keys() == split.keys()
    for k in full:
        assert torch.equal(full[k], split[k]), k
    assert [h["val_acc"] for h in full_hist] == [h["val_acc"] for h in split_hist]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_exact_for_rgb_inputs_with_fused_optimizers(optimizer, tmp_path):
    """A 3×3 stem on RGB input is the one weight whose channels_last layout differs from the
    contiguous one: its restored optimizer buffers must take the weight's layout (fused
    kernels step both in memory order)."""
    root = make_image_folder(tmp_path / "rgb", n_per_class=8, modes=("RGB",), splits=True)
    kw = dict(epochs=2, optimizer=optimizer, lr=0.01, batch_size=8)
    train(_cfg(root, tmp_path / "full", **kw))
    train(_cfg(root, tmp_path / "split", stop_after_epoch=1, **kw))
    train(_cfg(root, tmp_path / "split", resume=True))
    full, split = _final_state(tmp_path / "full")[0], _final_state(tmp_path / "split")[0]
    assert full["features.0.conv.weight"].shape[1] == 3
    for k in full:
        assert torch.equal(full[k], split[k]), k


def test_last_checkpoint_loads_evaluates_and_initialises_like_best(idx_dir, tmp_path, capsys):
    """``last.safetensors`` also holds the training state; loading, ``eval`` and ``--init``
    take its model weights (after one epoch without EMA, the same as ``best``)."""
    run = tmp_path / "one"
    train(_cfg(idx_dir, run, epochs=1))
    assert any(k.startswith("train/") for k in read_checkpoint(run / "last.safetensors")[0])
    last, best = load_model(run / "last.safetensors")[0], load_model(run / "best.safetensors")[0]
    for (k, a), b in zip(last.state_dict().items(), best.state_dict().values()):
        assert torch.equal(a, b), k
    capsys.readouterr()
    assert main(["eval", str(run / "last.safetensors"), "--data", str(idx_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 32
    train(_cfg(idx_dir, tmp_path / "init", epochs=1, init=str(run / "last.safetensors"), max_steps=1))


def test_resume_without_a_run_is_a_clear_error(idx_dir, tmp_path):
    with pytest.raises(MobilenetsError, match="nothing to resume"):
        train(_cfg(idx_dir, tmp_path / "none", resume=True))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    run = tmp_path / "nan"
    train(_cfg(idx_dir, run, epochs=1))
    before = (run / "last.safetensors").read_bytes()
    with pytest.raises(MobilenetsError, match="loss became .*last good checkpoint"):
        train(_cfg(idx_dir, run, epochs=2, lr=1e30, resume=False, optimizer="sgd", warmup=0.0))
    # The failed run started over in the same directory but never wrote a bad checkpoint.
    assert (run / "last.safetensors").read_bytes() == before


class _Oracle(torch.nn.Module):
    """Predicts class = (mean pixel > 0) for even images, class 1 - that otherwise: known answers."""

    def forward(self, x):
        bright = (x.mean(dim=(1, 2, 3)) > 0).long()
        return torch.nn.functional.one_hot(bright, 2).float() * 10


def test_evaluate_known_answers():
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    images[:6] = 255  # 6 bright, 4 dark
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])  # 4 bright say 1, 2 bright say 0
    ds = TensorImages(images, labels, ["dark", "bright"])
    res = evaluate(_Oracle(), ds, {"mean": [0.5], "std": [0.5]}, channels_last=False, batch_size=3)
    # Predictions: bright -> 1 for images 0..5, dark -> 0 for 6..9.
    assert res.confusion == [[4, 2], [0, 4]]
    assert res.top1 == pytest.approx(0.8)  # (top-5 of 2 classes is always 1: tested below)
    assert res.per_class == pytest.approx([4 / 6, 1.0])
    assert res.count == 10


class _Ranked(torch.nn.Module):
    """The same logits for every image: class 0 first, class 6 last."""

    def forward(self, x):
        return torch.arange(7, 0, -1, dtype=torch.float32).expand(len(x), 7)


def test_evaluate_top5_counts_only_the_five_best_classes():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 0, 5])  # 6 of 10 within classes 0..4
    ds = TensorImages(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), labels, [str(c) for c in range(7)])
    res = evaluate(_Ranked(), ds, {"mean": [0.5], "std": [0.5]}, channels_last=False, batch_size=3)
    assert res.top1 == pytest.approx(0.2) and res.top5 == pytest.approx(0.6)


class _LeftRight(torch.nn.Module):
    """Logits (10·left-half mean, 10·right-half mean + 1): mirroring swaps the halves."""

    def forward(self, x):
        w = x.shape[-1] // 2
        left, right = x[..., :w].mean(dim=(1, 2, 3)), x[..., w:].mean(dim=(1, 2, 3))
        return torch.stack([10 * left, 10 * right + 1], dim=1)


def test_evaluate_tta_averages_each_image_with_its_mirror():
    images = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
    images[..., :2] = 255  # bright left half: normalised left = 1, right = -1
    ds = TensorImages(images, torch.zeros(4, dtype=torch.long), ["left", "right"])
    pre = {"mean": [0.5], "std": [0.5]}
    plain = evaluate(_LeftRight(), ds, pre, channels_last=False)
    tta = evaluate(_LeftRight(), ds, pre, channels_last=False, tta=True)
    # Plain logits (10, -9): class 0. Mirror (-10, 11); mean (0, 1): class 1.
    assert plain.top1 == 1.0 and tta.top1 == 0.0
    assert tta.loss == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_predict_any_size_and_mode(idx_dir, tmp_path):
    run = tmp_path / "p"
    train(_cfg(idx_dir, run, epochs=1))
    model, meta = load_model(run / "best.safetensors")
    paths = []
    for i, (mode, size) in enumerate((("L", 28), ("RGB", 50), ("RGBA", 13), ("P", 31))):
        arr = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).convert(mode).save(p)
        paths.append(p)
    preds = predict_files(model, meta, paths, top_k=2)
    assert len(preds) == 4
    for p in preds:
        assert len(p.top) == 2 and p.top[0][0] in meta["classes"]
        assert p.top[0][1] >= p.top[1][1] and 0 < sum(pr for _, pr in p.top) <= 1.0 + 1e-6


def test_cli_end_to_end(idx_dir, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", "--data", str(idx_dir), "--out", str(run), "--epochs", "1", "--batch-size", "16",
                 "--width-mult", "0.25", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "checkpoints in" in out
    assert main(["eval", str(run / "best.safetensors"), "--data", str(idx_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["count"] == 32 and 0 <= res["top1"] <= 1 and len(res["confusion"]) == 4
    assert res["tta"] is False
    assert main(["eval", str(run / "best.safetensors"), "--data", str(idx_dir), "--tta", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] is True
    assert (run / "confusion.png").is_file()
    assert main(["eval", str(run / "best.safetensors"), "--data", str(idx_dir)]) == 0
    assert "confusion matrix" in capsys.readouterr().out
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    assert main(["predict", str(run / "best.safetensors"), str(img), "--json", "--top-k", "2"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert len(pred) == 1 and len(pred[0]["top"]) == 2
    # The run directory stands for its best checkpoint, as for eval.
    assert main(["predict", str(run), str(img), "--json", "--top-k", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == pred


def test_cli_user_errors_are_one_line(idx_dir, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data not found") and "Traceback" not in err
    assert main(["train", "--data", str(idx_dir), "--model", "mobilenet_v4", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.png")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    img = tmp_path / "y.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert main(["predict", str(bad), str(img)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_image_folder_training(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n_per_class=8, size=32, modes=("RGB",))
    result = train(TrainConfig(**{**TINY, "data": str(root), "out": str(tmp_path / "f"), "epochs": 1}))
    _, meta = load_model(result.run_dir / "best.safetensors")
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["preprocessing"]["channels"] == 3


def test_demo_command_end_to_end(tmp_path, capsys):
    data = make_idx_dir(tmp_path / "data", n_train=64, n_test=32)
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "test top-1" in text and "(32 images)" in text and "predictions" in text
    assert (out / "best.safetensors").is_file() and (out / "confusion.png").is_file()
    assert len(list((out / "samples").glob("*.png"))) == 6


def test_checkpoints_get_normal_file_permissions(tmp_path):
    import os

    from mobilenets import create_model
    from mobilenets.io.checkpoint import save_model

    umask = os.umask(0)
    os.umask(umask)
    path = save_model(create_model("mobilenet_v3_small", width_mult=0.25, num_classes=2), tmp_path / "m.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_predict_with_onnxruntime_backend_matches_torch(idx_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "ort"
    train(_cfg(idx_dir, run, epochs=1))
    assert main(["export", str(run / "best.safetensors"), "--format", "onnx", "-o", str(run / "m.onnx")]) == 0
    img = tmp_path / "z.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8)).save(img)
    capsys.readouterr()
    assert main(["predict", str(run / "best.safetensors"), str(img), "--json"]) == 0
    torch_pred = json.loads(capsys.readouterr().out)[0]["top"]
    assert main(["predict", str(run / "m.onnx"), str(img), "--json", "--backend", "onnxruntime"]) == 0
    ort_pred = json.loads(capsys.readouterr().out)[0]["top"]
    assert [t["class"] for t in ort_pred] == [t["class"] for t in torch_pred]
    assert [t["probability"] for t in ort_pred] == pytest.approx([t["probability"] for t in torch_pred], abs=1e-4)
    assert main(["predict", str(run / "best.safetensors"), str(img), "--backend", "onnxruntime"]) == 2
    assert "cannot run" in (err := capsys.readouterr().err) and "export --format onnx" in err


def test_resume_says_what_it_ignores_and_when_there_is_nothing_to_do(idx_dir, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", str(idx_dir), "--out", str(run), "--epochs", "1", "--batch-size", "16",
                 "--width-mult", "0.25", "--precision", "fp32", "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr()
    assert "already trained 1 of 1 epochs; nothing to do" in out.out and "resuming" not in out.out
    # The same model options as the run (whose saved options include the recipe's) are no news.
    assert main(["train", "--out", str(run), "--resume", "--width-mult", "0.25"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--lr", "0.01",
                 "--max-steps", "1"]) == 0
    err = capsys.readouterr().err
    # One plain `warning:` line, like errors, naming what was ignored and what the run uses.
    assert "warning: --resume continues the saved run as it was configured; ignored: lr=0.01 (the run has" in err
    assert main(["train", "--out", str(run), "--resume", "--accum-steps", "2"]) == 0
    assert "ignored: accum_steps=2 (the run has 1)" in capsys.readouterr().err
    assert "UserWarning" not in err


def test_eval_leaves_a_large_confusion_matrix_out_of_the_text(tmp_path, capsys):
    import mobilenets
    from mobilenets.io.checkpoint import save_model

    names = [f"c{i:02d}" for i in range(21)]
    root = make_image_folder(tmp_path / "many", n_per_class=1, classes=names, splits=True)
    model = mobilenets.create_model("mobilenet_v3_small", width_mult=0.25, num_classes=21, in_chans=1,
                                    small_input=True)
    ckpt = save_model(model, tmp_path / "m.safetensors", classes=names,
                      preprocessing={"input_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]})
    assert main(["eval", str(ckpt), "--data", str(root), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "confusion matrix: 21×21, in the plot and in --json" in out and "columns:" not in out
    assert (tmp_path / "confusion.png").is_file()


def test_classes_absent_from_the_evaluation_data_have_no_accuracy(tmp_path, capsys):
    """A subset of a model's classes is a fair evaluation; the missing ones are not 0 %."""
    import mobilenets
    from mobilenets.io.checkpoint import save_model

    names = ["cat", "dog", "fox"]
    root = make_image_folder(tmp_path / "two", n_per_class=2, classes=("cat", "dog"), splits=True)
    model = mobilenets.create_model("mobilenet_v3_small", width_mult=0.25, num_classes=3, in_chans=1,
                                    small_input=True)
    ckpt = save_model(model, tmp_path / "m.safetensors", classes=names,
                      preprocessing={"input_size": 28, "channels": 1, "mean": [0.5], "std": [0.5]})
    assert main(["eval", str(ckpt), "--data", str(root), "--out", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["per_class"][2] is None and res["count"] == 4 and res["classes"] == names
    assert main(["eval", str(ckpt), "--data", str(root), "--out", str(tmp_path)]) == 0
    assert "fox  -  (no images)" in capsys.readouterr().out


def test_bf16_supported_asks_for_the_bf16_instructions_by_name():
    """Plain AVX-512 CPUs emulate bf16 (slower than fp32): ``auto`` precision and the
    ``compile-bf16`` bench backend need AVX-512-BF16 or AMX, as /proc/cpuinfo names them."""
    from mobilenets.ops.cpu import bf16_supported

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("needs Linux's /proc/cpuinfo")
    flags = set(cpuinfo.read_text().split())
    assert bf16_supported() == bool({"avx512_bf16", "amx_tile", "amx_bf16"} & flags)


def test_compiled_training_steps_like_the_eager_one(idx_dir, tmp_path, monkeypatch):
    """``--compile`` runs the training step through ``torch.compile`` (traced whole: forward,
    backward, the depthwise layers' custom weight gradient): same losses and weights as the
    eager step, evaluation and checkpoints unchanged. Inductor's code generation, a minute
    or two of compiling, is replaced by AOTAutograd's eager backend here; benchmarks time
    the real thing (``train_throughput.py --compile``)."""
    real_compile, calls = torch.compile, []

    def compile_eagerly(model, **kwargs):
        calls.append(kwargs)
        return real_compile(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    kw = dict(epochs=1, max_steps=3, model_kwargs={"width_mult": 0.25, "dropout": 0.0}, ema=None)
    eager = Trainer(_cfg(idx_dir, tmp_path / "eager", **kw))
    compiled = Trainer(_cfg(idx_dir, tmp_path / "compiled", compile=True, **kw))
    assert isinstance(compiled.train_forward, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.train_forward._orig_mod is compiled.model and calls == [{"dynamic": False}]
    torch._dynamo.utils.counters.clear()
    results = [t.fit() for t in (eager, compiled)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # the steps ran compiled
    assert results[1].history[0]["train_loss"] == pytest.approx(results[0].history[0]["train_loss"], rel=1e-4)
    ours = read_checkpoint(tmp_path / "compiled" / "last.safetensors")[0]
    reference = read_checkpoint(tmp_path / "eager" / "last.safetensors")[0]
    assert ours.keys() == reference.keys()  # no "_orig_mod." prefix in the checkpoint
    for k in reference:
        torch.testing.assert_close(ours[k], reference[k], rtol=1e-3, atol=1e-4)


def test_compile_without_a_cpp_compiler_is_a_clear_error(idx_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert main(["train", "--data", str(idx_dir), "--compile", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --compile needs a C++ compiler") and "Traceback" not in err
    assert not (tmp_path / "r").exists()


_FAULTS = """
import ctypes, resource, statistics, sys
import torch
import torch.nn.functional as F
import mobilenets
from mobilenets.ops import cpu
applied = cpu.keep_freed_memory() if sys.argv[1] == "keep" else False
torch.set_num_threads(2)
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
model = mobilenets.create_model("mobilenet_v3_small", num_classes=10, in_chans=1, small_input=True)
x, y = torch.randn(160, 1, 28, 28), torch.randint(0, 10, (160,))
mapped = []
def step():  # activations up to 160×72×28×28 floats (36 MB), above glibc's 32 MiB mmap limit
    before, mapped_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, mallinfo2().hblkhd
    loss = F.cross_entropy(model(x), y)
    mapped.append(mallinfo2().hblkhd - mapped_before)  # bytes the live activations hold in mmapped blocks
    loss.backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [step() for _ in range(6)]
print(applied, max(mapped), statistics.median(faults[2:]), *faults)
"""


@pytest.mark.skipif(platform.libc_ver() < ("glibc", "2.33"), reason="glibc's malloc (mallinfo2) only")
def test_keep_freed_memory_stops_the_page_faults_of_each_training_step():
    """By default glibc serves a training step's largest activations with ``mmap`` (or trims
    the heap) and hands them back when freed, so every step faults their pages in again
    (10,000-150,000 faults per step on the machines seen, fewer as glibc's threshold adapts);
    after ``keep_freed_memory`` no step maps a block and the steps reuse the heap (0-9,000
    faults once settled)."""
    runs = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        applied, mapped, settled, *_ = out.stdout.split()
        runs[mode] = (applied == "True", int(mapped), float(settled), out.stdout)
    assert runs["default"][0] is False and runs["keep"][0] is True
    assert runs["default"][1] >= 30e6 and runs["keep"][1] <= 0, runs  # the mechanism (kept: no step maps)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        return  # faults come in 2 MiB pages there: too few to compare
    assert runs["default"][2] > 5_000, runs  # at least one 36 MB activation faulted in per step
    assert runs["keep"][2] < 0.25 * runs["default"][2], runs


@pytest.mark.parametrize("reuse", [True, False])
def test_cpu_trainer_keeps_freed_memory_unless_told_not_to(idx_dir, tmp_path, monkeypatch, reuse):
    import mobilenets.training.trainer as train_module

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append(1) or True)
    Trainer(_cfg(idx_dir, tmp_path / "r", epochs=1, reuse_memory=reuse))
    assert calls == ([1] if reuse else [])
    args = ["train", "--data", str(idx_dir), "--out", str(tmp_path / "cli"), "--epochs", "1", "--max-steps", "1",
            "--width-mult", "0.25", "--batch-size", "16"] + ([] if reuse else ["--no-reuse-memory"])
    assert main(args) == 0
    assert len(calls) == (2 if reuse else 0)


@pytest.mark.parametrize("recipe, model", [("v2-paper", "mobilenet_v2"), ("v3-paper", "mobilenet_v3_small")])
def test_paper_recipes_train_with_their_own_settings(recipe, model, idx_dir, tmp_path):
    """The papers' recipes run (2 epochs of 2 steps on tiny data, the batch made small) with
    their optimizer, step decay, warm-up, label smoothing and EMA as RECIPES states them."""
    from mobilenets.training import RECIPES, lr_factor

    cfg = TrainConfig(model=model, model_kwargs={"width_mult": 0.25}, data=str(idx_dir), out=str(tmp_path / "r"),
                      recipe=recipe, epochs=2, max_steps=2, batch_size=16, precision="fp32", progress=False)
    trainer = Trainer(cfg)
    want = RECIPES[recipe]
    assert isinstance(trainer.optimizer, torch.optim.RMSprop) and trainer.cfg.lr == want["lr"]
    assert (trainer.cfg.schedule, trainer.cfg.gamma, trainer.cfg.warmup) == ("step", want["gamma"], want["warmup"])
    assert trainer.cfg.label_smoothing == want["label_smoothing"] and (trainer.ema is not None) == bool(want["ema"])
    result = trainer.fit()
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)
    # The rate of each epoch's last step: v2 decays ×0.98 after epoch 1; v3 is still warming up.
    assert [h["lr"] for h in result.history] == [want["lr"] * lr_factor(trainer.cfg, s, 2) for s in (1, 3)]
    assert result.history[1]["lr"] == pytest.approx(want["lr"] * (0.98 if recipe == "v2-paper" else 0.4))
    assert ("ema_val_acc" in result.history[0]) == (recipe == "v3-paper")
