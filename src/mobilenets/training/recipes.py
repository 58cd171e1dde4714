"""The training recipes: data, not code. A recipe fills every setting the user did not give."""

from __future__ import annotations

from typing import Any

#: The papers' recipes (SPEC §2.1, §3.1, §3.8) and a tuned one for small images. Learning
#: rates are for the stated batch size and scale linearly with it (Goyal et al. 2017), as
#: for all recipes here.
RECIPES: dict[str, dict[str, Any]] = {
    # Fashion-MNIST/CIFAR-sized images on a CPU: SGD+Nesterov, cosine, short warm-up,
    # label smoothing, pad-crop + flip + random erasing. BatchNorm momentum 0.1 (PyTorch's
    # default) instead of V3's 0.01: a run of a few hundred steps per epoch needs running
    # statistics that keep up, or early validation collapses to one class.
    "small-images": dict(optimizer="sgd", lr=0.2, batch_size=256, schedule="cosine", warmup=1.0,
                         weight_decay=5e-5, label_smoothing=0.1, ema=None, epochs=10,
                         crop_padding=2, flip=True, erasing=0.25, bn_momentum=0.1),
    # MobileNetV2 §6.1: RMSProp decay 0.9 / momentum 0.9, lr 0.045 decayed 0.98 per epoch,
    # weight decay 4e-5, batch 96.
    "v2-paper": dict(optimizer="rmsprop", lr=0.045, batch_size=96, schedule="step",
                     step_epochs=1.0, gamma=0.98, warmup=0.0, weight_decay=4e-5,
                     label_smoothing=0.0, ema=None, epochs=300),
    # MobileNetV3 §6.1 / TF-slim: RMSProp momentum 0.9, lr 0.1 at batch 4096 (scaled to
    # the batch), decay 0.99 every 3 epochs, 5 warm-up epochs, wd 1e-5, label smoothing
    # 0.1, EMA 0.9999, dropout 0.2.
    "v3-paper": dict(optimizer="rmsprop", lr=0.1 * 192 / 4096, batch_size=192, schedule="step",
                     step_epochs=3.0, gamma=0.99, warmup=5.0, weight_decay=1e-5,
                     label_smoothing=0.1, ema=0.9999, epochs=600),
    # Fine-tuning a pretrained model (--init) on a small folder: a head-only phase at
    # head_lr (the new classifier learns from fixed features, so the backbone is not
    # disturbed by its random gradients: Kumar et al. 2022, "LP-FT"), then the whole network,
    # cosine-decayed after a one-epoch warm-up, at lr for the head and layer-wise decayed
    # rates below it (0.7 per stage: the last stage 0.07, the stem 0.017), so the early,
    # general layers move least. benchmarks/transfer.py chose these: with the whole network
    # at 0.01 the fine-tuned runs underfit and V2 did no better than from scratch
    # (docs/training.md). Small batches, so that a folder of a few hundred images still
    # gives several steps per epoch.
    "finetune": dict(optimizer="sgd", lr=0.1, head_lr=0.1, layer_decay=0.7, head_epochs=2, batch_size=32,
                     schedule="cosine", warmup=1.0, weight_decay=5e-5, label_smoothing=0.1,
                     ema=None, epochs=20, crop_padding=2, flip=True, erasing=0.0, bn_momentum=0.1),
}

#: What every recipe starts from before its own values.
RECIPE_BASE: dict[str, Any] = dict(step_epochs=1.0, gamma=0.97, crop_padding=0, flip=True, erasing=0.0)

#: Quantization-aware fine-tuning starts from a trained model: a short schedule at a small
#: fraction of the recipe's peak learning rate, no warm-up (the weights are already good),
#: no EMA. Values the user gives still win.
QAT_LR_FRACTION = 0.02

#: Images whose float activations set the int8 ranges before QAT starts (the same number
#: ``mobilenets export --int8`` calibrates on by default).
QAT_CALIBRATION_IMAGES = 256


def qat_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's values that QAT replaces (see :data:`QAT_LR_FRACTION`)."""
    return {"epochs": 1, "lr": recipe["lr"] * QAT_LR_FRACTION, "warmup": 0.0, "ema": None}
