"""Transfer learning (``--init`` with other classes or channels, ``--freeze``,
``--linear-probe``, ``--recipe finetune``, ``--layer-decay``) and precise BatchNorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from datagen import make_idx_dir
from mobilenets import MobilenetsError, create_model
from mobilenets.io.checkpoint import load_model, read_checkpoint, save_model
from mobilenets.training import TrainConfig, Trainer, lr_factor, train
from mobilenets.training.freeze import param_groups, set_trainable
from mobilenets.training.precise_bn import recompute_bn_stats
from mobilenets.training.transfer import adapt_stem, load_transfer
from mobilenets.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(model_kwargs={}, batch_size=16, lr=0.05, warmup=0.0, precision="fp32", progress=False)
KW = dict(width_mult=0.25, small_input=True)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("data") / "tiny", n_train=64, n_test=16)


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory) -> Path:
    """An RGB 10-class checkpoint (as converted ImageNet weights are, only smaller)."""
    path = tmp_path_factory.mktemp("ckpt") / "rgb.safetensors"
    torch.manual_seed(1)
    model = create_model("mobilenet_v3_small", num_classes=10, **KW)
    with torch.no_grad():  # non-trivial statistics, so that loading them is visible
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_model(model, path, classes=[f"c{i}" for i in range(10)],
               preprocessing={"input_size": 28, "channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]})
    return path


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "data": str(data), "out": str(out), **kw})


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_other_classes_get_a_new_classifier_and_the_log_says_which(idx_dir, rgb_ckpt, tmp_path, capsys):
    trainer = Trainer(_cfg(idx_dir, tmp_path / "r", epochs=1, init=str(rgb_ckpt)))
    out = capsys.readouterr().out
    assert "classifier re-initialised for the data's 4 classes" in out
    assert "classifier.weight (10, 256) -> (4, 256)" in out and "classifier.bias (10,) -> (4,)" in out
    assert trainer.model.classifier.out_features == 4
    src = read_checkpoint(rgb_ckpt)[0]
    own = trainer.model.state_dict()
    # everything but the stem and classifier is the checkpoint's, BN statistics included
    for k, v in src.items():
        if not k.startswith(("classifier.", "features.0.conv")):
            assert torch.equal(own[k].to(v.dtype), v), k
    # the normalization is the checkpoint's, mapped to the data's one channel
    assert trainer.preprocessing["mean"] == pytest.approx([0.5]) and trainer.preprocessing["std"] == pytest.approx([0.3])
    assert trainer.image_size == 28


def test_grey_stem_is_the_rgb_models_on_replicated_input(rgb_ckpt, capsys):
    rgb, meta = load_model(rgb_ckpt)
    tensors = read_checkpoint(rgb_ckpt)[0]
    grey = create_model("mobilenet_v3_small", num_classes=10, in_chans=1, **KW)
    lines = load_transfer(grey, tensors, meta, [f"c{i}" for i in range(10)], source="rgb")
    assert lines == ["rgb: stem features.0.conv.weight (8, 3, 3, 3) -> (8, 1, 3, 3) for 1-channel data "
                     "(summed over its input channels)"]
    x = torch.randn(2, 1, 28, 28)
    rgb.eval(), grey.eval()
    torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_four_channel_stem_repeats_and_rescales(rgb_ckpt):
    w = read_checkpoint(rgb_ckpt)[0]["features.0.conv.weight"]
    w4 = adapt_stem(w, 4)
    assert w4.shape == (8, 4, 3, 3)
    torch.testing.assert_close(w4[:, :3], w * 3 / 4)
    torch.testing.assert_close(w4[:, 3], w[:, 0] * 3 / 4)
    model = create_model("mobilenet_v3_small", num_classes=2, in_chans=4, **KW)
    lines = load_transfer(model, read_checkpoint(rgb_ckpt)[0], load_model(rgb_ckpt)[1], ["a", "b"], source="s")
    assert "repeated and scaled by 3/4" in lines[1]
    # same images in every channel: the same mean stem response as the RGB model's
    x = torch.randn(1, 1, 8, 8)
    rgb_out = nn.functional.conv2d(x.repeat(1, 3, 1, 1), w).mean()
    assert nn.functional.conv2d(x.repeat(1, 4, 1, 1), w4).mean() == pytest.approx(float(rgb_out), rel=0.5)


def test_a_missing_or_unexpected_backbone_tensor_is_an_error(rgb_ckpt):
    tensors, meta = read_checkpoint(rgb_ckpt)
    model = create_model("mobilenet_v3_small", num_classes=3, in_chans=1, **KW)
    broken = {k: v for k, v in tensors.items() if k != "features.3.expand.conv.weight"}
    with pytest.raises(MobilenetsError, match=r"missing \['features.3.expand.conv.weight'\]"):
        load_transfer(model, broken, meta, ["a", "b", "c"], source="x")
    with pytest.raises(MobilenetsError, match="unexpected"):
        load_transfer(model, {**tensors, "features.99.w": torch.zeros(1)}, meta, ["a", "b", "c"], source="x")
    other = create_model("mobilenet_v2", num_classes=3, in_chans=1, width_mult=0.35)
    with pytest.raises(MobilenetsError, match="does not fit"):
        load_transfer(other, tensors, meta, ["a", "b", "c"], source="x")


def test_freeze_gives_no_gradients_and_keeps_bn_statistics(idx_dir, rgb_ckpt, tmp_path):
    before = read_checkpoint(rgb_ckpt)[0]
    trainer = Trainer(_cfg(idx_dir, tmp_path / "f", epochs=1, max_steps=2, init=str(rgb_ckpt), freeze="stages:2"))
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("features.0.", "features.1.", "features.2.", "features.3.")) for n in frozen)
    trainer.fit()
    after = trainer.model.state_dict()
    for name, p in trainer.model.named_parameters():
        assert (p.grad is None) == (name in frozen), name
    for k in ("features.1.dw.bn.running_mean", "features.3.expand.bn.running_var",
              "features.2.project.conv.weight"):
        assert torch.equal(after[k].float(), before[k].float()), k
    assert not torch.equal(after["features.12.bn.running_mean"], before["features.12.bn.running_mean"])
    with pytest.raises(MobilenetsError, match="has 4 stages here; give stages:0 to stages:4"):
        Trainer(_cfg(idx_dir, tmp_path / "g", epochs=1, init=str(rgb_ckpt), freeze="stages:9"))
    with pytest.raises(MobilenetsError, match="--freeze must be backbone, stages:N or none"):
        _cfg(idx_dir, tmp_path / "g", epochs=1, freeze="head").resolved()


def test_linear_probe_trains_the_classifier_alone(idx_dir, rgb_ckpt, tmp_path):
    trainer = Trainer(_cfg(idx_dir, tmp_path / "lp", epochs=1, max_steps=2, init=str(rgb_ckpt), linear_probe=True,
                           recipe="finetune", batch_size=16))
    start = _params(trainer.model)
    assert trainer.cfg.head_epochs == 0 and trainer.cfg.freeze == "backbone"
    trainer.fit()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"classifier.weight", "classifier.bias"}
    # the head trains at the recipe's head learning rate, on its schedule
    assert lr_factor(trainer.cfg, 0, 4) == pytest.approx(0.1 / 0.05)


def test_finetune_recipe_trains_the_head_then_everything(idx_dir, rgb_ckpt, tmp_path, capsys):
    cfg = _cfg(idx_dir, tmp_path / "ft", epochs=3, max_steps=2, init=str(rgb_ckpt), recipe="finetune",
               head_epochs=1, lr=None, warmup=None, batch_size=16, stop_after_epoch=1)
    resolved = cfg.resolved()
    assert (resolved.head_epochs, resolved.head_lr, resolved.lr, resolved.layer_decay) == (1, 0.1, 0.1, 0.7)
    assert [lr_factor(resolved, s, 2) for s in range(3)] == pytest.approx([1.0, 1.0, 0.5])
    trainer = Trainer(cfg)
    start = _params(trainer.model)
    trainer.fit()
    after = _params(trainer.model)
    assert torch.equal(after["features.5.expand.conv.weight"], start["features.5.expand.conv.weight"])
    assert not torch.equal(after["head.fc.weight"], start["head.fc.weight"])
    resumed = Trainer(TrainConfig(data=str(idx_dir), out=str(tmp_path / "ft"), resume=True, progress=False))
    resumed.fit()
    assert "the head-only phase is over" in capsys.readouterr().out
    assert not torch.equal(resumed.model.state_dict()["features.5.expand.conv.weight"],
                           start["features.5.expand.conv.weight"])
    TrainConfig(recipe="finetune", epochs=1).resolved()  # too short for a phase: none, no error


def test_resume_mid_finetune_is_exact(idx_dir, rgb_ckpt, tmp_path):
    kw = dict(epochs=3, max_steps=2, init=str(rgb_ckpt), recipe="finetune", head_epochs=1, batch_size=16,
              layer_decay=0.7)
    whole = train(_cfg(idx_dir, tmp_path / "whole", **kw))
    train(_cfg(idx_dir, tmp_path / "split", stop_after_epoch=2, **kw))
    resumed = Trainer(_cfg(idx_dir, tmp_path / "split", resume=True, epochs=3))
    assert [g["lr_scale"] for g in resumed.optimizer.param_groups][:2] == [1.0, 1.0]
    result = resumed.fit()
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in whole.history]
    a = read_checkpoint(tmp_path / "whole" / "last.safetensors")[0]
    b = read_checkpoint(tmp_path / "split" / "last.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_layer_decay_gives_one_group_pair_per_stage():
    model = create_model("mobilenet_v3_small", num_classes=3, **KW)
    groups = param_groups(model, 1e-4, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in groups}, reverse=True)
    assert scales == [1.0, 0.5, 0.25, 0.125, 0.0625]  # head, then 4 stages down to the stem
    stem = next(g for g in groups if any(p is model.features[0].conv.weight for p in g["params"]))
    assert stem["lr_scale"] == 0.0625 and stem["weight_decay"] == 1e-4
    head = [g for g in groups if g["lr_scale"] == 1.0]
    assert {id(p) for g in head for p in g["params"]} == {id(p) for p in [*model.head.parameters(),
                                                                         *model.classifier.parameters()]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    cfg = TrainConfig(lr=0.1, epochs=2, layer_decay=0.5, warmup=0.0).resolved()
    from mobilenets.training import make_optimizer, make_scheduler
    opt = make_optimizer(cfg, model)
    make_scheduler(opt, cfg, 10)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([0.00625, 0.0125, 0.025, 0.05, 0.1])
    with pytest.raises(MobilenetsError, match=r"layer decay must be in \(0, 1\]"):
        TrainConfig(layer_decay=1.5).resolved()


def test_precise_bn_gives_the_statistics_of_the_current_weights():
    """Stale running statistics (V3's momentum 0.01 after fast-moving weights) make eval mode
    wrong; recomputing them gives a fresh pass's statistics and eval outputs that match."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=4, in_chans=1, **KW)
    batches = [torch.randn(16, 1, 28, 28) * 2 + 1 for _ in range(4)]
    model.eval()
    stale = model(batches[0])
    fresh = create_model("mobilenet_v3_small", num_classes=4, in_chans=1, **KW)
    fresh.load_state_dict(model.state_dict())
    torch.optim.swa_utils.update_bn([(b,) for b in batches], fresh)  # torch's own cumulative pass
    assert recompute_bn_stats(model, batches) == 4
    assert not model.training
    for (k, v), v2 in zip(model.state_dict().items(), fresh.state_dict().values()):
        if "running" in k:
            torch.testing.assert_close(v, v2, msg=k)
    set_trainable(model, 1)  # the stem's BN is frozen: it keeps its statistics
    stem_bn = model.features[0].bn.running_mean.clone()
    recompute_bn_stats(model, [b * 3 for b in batches])
    assert torch.equal(model.features[0].bn.running_mean, stem_bn)
    assert torch.equal(model.features[1].dw.bn.running_mean, fresh.features[1].dw.bn.running_mean)  # stage 1
    assert not torch.equal(model.features[2].dw.bn.running_mean, fresh.features[2].dw.bn.running_mean)
    assert not torch.allclose(model(batches[0]), stale)


def test_short_run_validates_near_its_training_accuracy(tmp_path):
    """The issue's regime on pattern images: V3's BN momentum 0.01 and a high learning rate.
    With precise BN the last epoch validates near its training accuracy; without, the stale
    statistics cost accuracy (the test can fail)."""
    data = make_idx_dir(tmp_path / "d", n_train=384, n_test=96)
    accs, seconds = {}, {}
    for precise in (True, False):
        r = train(_cfg(data, tmp_path / str(precise), epochs=2, batch_size=32, lr=0.4, erasing=0.0,
                       model="mobilenet_v3_small", model_kwargs={"width_mult": 0.25, "bn_momentum": 0.01},
                       precise_bn=precise))
        accs[precise] = (r.history[-1]["train_acc"], r.history[-1]["val_acc"])
        seconds[precise] = r.history[-1]["precise_bn_seconds"]
    train_acc, val_acc = accs[True]
    # its cost is recorded per epoch (benchmarks/precise_bn.py reads it): forward passes, or nothing
    assert seconds[True] > 10 * seconds[False]
    assert val_acc >= train_acc - 0.1 and val_acc > 0.4
    assert accs[False][1] < val_acc - 0.1


def test_cli_flags(idx_dir, rgb_ckpt, tmp_path, capsys):
    code = main(["train", "--data", str(idx_dir), "--out", str(tmp_path / "c"), "--init", str(rgb_ckpt),
                 "--recipe", "finetune", "--epochs", "2", "--max-steps", "1", "--batch-size", "16",
                 "--freeze", "stages:1", "--layer-decay", "0.8", "--no-precise-bn", "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0 and "frozen: stages:1" in out and "layer decay 0.8" in out and "precise BN off" in out
    assert main(["train", "--data", str(idx_dir), "--linear-probe", "--freeze", "stages:1"]) == 2
    assert "does not combine with --freeze stages:1" in capsys.readouterr().err
