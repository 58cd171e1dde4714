"""Options that several commands share: the model options and ``--no-reuse-memory``.

Declared once so that ``summary``, ``convert``, ``train`` and ``bench`` spell and read them the
same way.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..ops import cpu

#: The model options, as ``create_model`` keyword arguments (``--width-mult`` -> width_mult).
MODEL_OPTIONS: tuple[str, ...] = ("width_mult", "num_classes", "in_chans", "depth_multiplier",
                                  "padding", "width_convention", "small_input", "output_stride",
                                  "dropout")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that change the network built; all default to ``None`` (the model's default)."""
    g = p.add_argument_group("model options")
    g.add_argument("--width-mult", type=float, help="width multiplier (α)")
    g.add_argument("--num-classes", type=int, help="classifier outputs (0: none)")
    g.add_argument("--in-chans", type=int, help="input channels (1 for grayscale)")
    g.add_argument("--depth-multiplier", type=int, help="V1 depthwise channel multiplier")
    g.add_argument("--padding", choices=("symmetric", "same"), help="padding convention")
    g.add_argument("--width-convention", choices=("torchvision", "tf"),
                   help="channel rounding convention (SPEC §7.2)")
    g.add_argument("--small-input", action="store_true", default=None,
                   help="stem for 28-64 px images (8x downsampling instead of 32x)")
    g.add_argument("--output-stride", type=int,
                   help="total downsampling, a power of 2 (default 32, or 8 with --small-input): "
                        "the last stride-2 blocks go to stride 1")
    g.add_argument("--dropout", type=float, help="dropout before the classifier")


def model_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line; those left out stay the model's default."""
    return {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k, None) is not None}


def add_reuse_memory_option(p: argparse.ArgumentParser, gain: str) -> None:
    """``--no-reuse-memory``; ``gain`` says what keeping freed memory measured here."""
    p.add_argument("--no-reuse-memory", dest="reuse_memory", action="store_false",
                   help="leave glibc's malloc returning freed memory to the kernel (by default "
                        f"it is kept for reuse: no page faults per batch, {gain})")


def reuse_memory(args: argparse.Namespace) -> None:
    """Apply ``--no-reuse-memory``'s default: :func:`mobilenets.ops.cpu.keep_freed_memory`, for
    the rest of the process (it cannot be undone), before the command's own work."""
    if getattr(args, "reuse_memory", True):
        cpu.keep_freed_memory()
