"""Preprocessing and augmentation on whole batches of tensors.

Per-image PIL transforms cost more than the network itself for 28 px images on a CPU;
indexing a batch tensor once does the same work in a few vectorised operations. Every
random draw comes from an explicit ``torch.Generator``, so a resumed run replays exactly
the same augmentations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` in [0, 255] → float ``(x/255 - mean) / std`` per channel."""
    x = images.float().div_(255)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (stored with the model)."""
    x = images[:max_images].float().div(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random ``H×W`` crops of the zero-padded batch, and random horizontal flips."""
    n, _, h, w = images.shape
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n)[:, None, None, None]
        chans = torch.arange(images.shape[1])[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return images


def random_erasing(x: torch.Tensor, p: float, g: torch.Generator,
                   scale: tuple[float, float] = (0.02, 0.25), ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017) on a normalised batch: with probability ``p`` a
    rectangle of ``scale`` of the area and aspect in ``ratio`` is set to 0 (the mean)."""
    n, _, h, w = x.shape
    apply = torch.rand(n, generator=g) < p
    area = torch.empty(n).uniform_(*scale, generator=g) * h * w
    log_r = torch.empty(n).uniform_(torch.log(torch.tensor(ratio[0])).item(),
                                    torch.log(torch.tensor(ratio[1])).item(), generator=g)
    r = torch.exp(log_r)
    eh = torch.sqrt(area * r).round().clamp(1, h).long()
    ew = torch.sqrt(area / r).round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=g) * (h - eh + 1).float()).long()
    x0 = (torch.rand(n, generator=g) * (w - ew + 1).float()).long()
    ys = torch.arange(h)[None, :]
    xs = torch.arange(w)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])  # (N, H)
    in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])  # (N, W)
    mask = (in_y[:, :, None] & in_x[:, None, :]) & apply[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)
