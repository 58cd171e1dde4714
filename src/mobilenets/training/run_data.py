"""A run's data: the training and validation sets (with a held-out split where the data
has no validation set of its own) and the normalization the model is trained with."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..data.augment import channel_stats, normalize, random_crop_flip, random_erasing
from ..data.datasets import DEFAULT_VAL_FRACTION, TensorImages, holdout_split, load_dataset, splits_from_train
from ..data.preprocessing import Preprocessing
from ..errors import MobilenetsError
from ..models.conventions import IMAGENET_MEAN, IMAGENET_STD
from ..models.registry import model_options
from .config import TrainConfig
from .transfer import adapt_normalization, transfer_model_kwargs


@dataclass
class RunData:
    train_set: Any
    val_set: Any
    holdout: dict[str, Any] | None  # {"seed", "val_fraction"} where validation is held out of train


def load_run_data(cfg: TrainConfig, channels: int | None, init_meta: dict[str, Any] | None,
                  warn: bool) -> RunData:
    """The training and validation sets of ``cfg.data``, as ``channels`` where the model being
    continued pins them (an RGB checkpoint fine-tunes on a grayscale folder, as ``eval``
    would score it). ``init_meta``: the ``--init`` checkpoint's metadata, whose held-out
    split is compared with this run's (a warning when ``warn``)."""
    folder_kwargs: dict[str, Any] = {"seed": cfg.seed, "strict": cfg.strict}  # only image folders use these
    if channels is not None:
        folder_kwargs["channels"] = channels
    # A folder without train/ and val/ is split by the loader, per class, with --val-fraction.
    vf = cfg.val_fraction if cfg.val_fraction is not None else DEFAULT_VAL_FRACTION
    holdout = {"seed": cfg.seed, "val_fraction": vf} if splits_from_train(cfg.data) else None
    if holdout:
        folder_kwargs.update(holdout)
    train_set = load_dataset(cfg.data, "train", image_size=cfg.image_size, **folder_kwargs)
    if cfg.val_fraction is not None and not holdout:
        train_set, val_set = holdout_split(train_set, cfg.val_fraction, cfg.seed)
        holdout = {"seed": cfg.seed, "val_fraction": cfg.val_fraction}
    else:
        val_set = load_dataset(cfg.data, "val", image_size=train_set.image_size,
                               **{**folder_kwargs, "channels": train_set.channels})
    held = init_meta.get("holdout") if init_meta is not None else None
    if isinstance(held, dict) and held != holdout and warn:
        warnings.warn(f"{cfg.init} held out {held['val_fraction']:g} of the training data (seed "
                      f"{held['seed']}) for validation, and this run splits differently, so it may "
                      f"train on those images; --val-fraction {held['val_fraction']:g} --seed "
                      f"{held['seed']} keeps the split", stacklevel=5)
    if list(val_set.classes) != list(train_set.classes):
        raise MobilenetsError(f"{cfg.data}: validation classes differ from training classes")
    return RunData(train_set, val_set, holdout)


def pinned_channels(meta: dict[str, Any] | None) -> int | None:
    """The input channels a checkpoint's preprocessing records, if it does."""
    pre = (meta or {}).get("preprocessing")
    return pre["channels"] if isinstance(pre, dict) and isinstance(pre.get("channels"), int) else None


def default_preprocessing(train_set: Any) -> dict[str, Any]:
    """In-memory data is normalized by its own statistics; 3-channel image folders by
    ImageNet's (what pretrained weights expect); other folders to [-1, 1]."""
    channels = train_set.channels
    if isinstance(train_set, TensorImages):
        mean, std = channel_stats(train_set.images)
    elif channels == 3:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    else:
        mean, std = [0.5] * channels, [0.5] * channels
    pre = Preprocessing(train_set.image_size, channels, mean, std)  # validated like any loaded file's
    return {**pre.record(), "resize": "shorter side to input_size, centre crop"}


def init_preprocessing(meta: dict[str, Any], channels: int, preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The ``init`` checkpoint's normalization (its weights were trained on inputs normalized
    that way), mapped to the data's channels as its stem is (:func:`.transfer.adapt_stem`)."""
    pre = meta.get("preprocessing")
    if isinstance(pre, dict) and "mean" in pre and "std" in pre:
        return {**preprocessing, "mean": adapt_normalization([float(v) for v in pre["mean"]], channels),
                "std": adapt_normalization([float(v) for v in pre["std"]], channels)}
    return preprocessing


def data_model_kwargs(cfg: TrainConfig, classes: list[str], channels: int, image_size: int) -> dict[str, Any]:
    """The model options with the data's classes and channels, and a small-input stem for
    small images (not with ``--init``: the checkpoint's stem stays, adapted to the data's
    channels, and its classifier is replaced where the classes differ)."""
    if cfg.init:
        return transfer_model_kwargs(cfg.model_kwargs, classes, channels)
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("num_classes", len(classes))
    kwargs.setdefault("in_chans", channels)
    if "small_input" in model_options(cfg.model):
        kwargs.setdefault("small_input", image_size <= 64)
    if kwargs["num_classes"] != len(classes) or kwargs["in_chans"] != channels:
        raise MobilenetsError(f"the data has {len(classes)} classes and {channels} "
                              f"channels; the model options say {kwargs['num_classes']} and "
                              f"{kwargs['in_chans']}")
    return kwargs


def augment_batch(images: torch.Tensor, g: torch.Generator, augment: bool, small: bool, cfg: TrainConfig,
                  preprocessing: dict[str, Any]) -> torch.Tensor:
    """A training batch as the network sees it: flipped (when the recipe flips) and, when
    ``augment``, pad-cropped (``small`` in-memory images) and randomly erased; normalized,
    in the model's memory layout. ``g`` draws every random choice (exact resume)."""
    if small:
        images = random_crop_flip(images, cfg.crop_padding if augment else 0, cfg.flip, g)
    elif cfg.flip:
        mask = torch.rand(len(images), generator=g) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    x = normalize(images, preprocessing["mean"], preprocessing["std"])
    if cfg.erasing and augment:
        x = random_erasing(x, cfg.erasing, g)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
