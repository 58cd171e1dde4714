"""The run directory's records besides the checkpoints, each written whole and atomically.

One run lives in one directory (``--out``):

* ``config.json``: the resolved configuration (recipe defaults + what was given);
* ``metrics.jsonl`` and ``metrics.csv``: one line per epoch; ``curves.png``: loss/accuracy;
* ``last.safetensors``: model weights + everything needed to resume exactly (optimizer,
  scheduler, EMA, epoch and step) under ``train/...`` keys, written atomically after every
  epoch and on Ctrl-C/SIGTERM; ``best.safetensors``: the best weights by validation
  accuracy (EMA weights when they are better). Both load with
  :func:`mobilenets.io.checkpoint.load_model`.

Exact resume: the data order of an epoch, every augmentation and every dropout mask are
drawn from generators seeded by ``(seed, epoch, step)``, so a resumed run replays the
uninterrupted one step for step.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import MobilenetsError
from ..io.checkpoint import atomic_write_bytes

#: metrics.jsonl/metrics.csv columns, in this order (the order ``fit`` builds each row in).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "images_per_sec", "lr", "train_seconds",
                  "val_loss", "val_acc", "val_top5", "val_count", "precise_bn_seconds", "ema_val_acc",
                  "elapsed_seconds")


def check_writable(directory: Path) -> None:
    """Fail before training, not after the first epoch, where nothing can be written."""
    probe = directory / ".write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise MobilenetsError(f"output directory {directory} is not writable: {e.strerror or e}") from e


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create ``run_dir`` and check it is writable; clear what a killed process left and,
    for a fresh run, the previous run's metrics (its checkpoints stay until replaced)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent is a file, read-only file system, ...
        raise MobilenetsError(f"cannot create the output directory {run_dir}: "
                              f"{e.strerror or e}; choose another --out") from e
    check_writable(run_dir)
    for stale in run_dir.glob(".*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    if resume:
        return
    if (run_dir / "last.safetensors").is_file():
        warnings.warn(f"{run_dir} holds an earlier run: this new run replaces its "
                      "checkpoints and metrics as it goes (--resume would continue it; "
                      "another --out keeps it)", stacklevel=4)
    for name in ("metrics.jsonl", "metrics.csv"):
        (run_dir / name).unlink(missing_ok=True)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / "config.json", json.dumps(config, indent=2).encode())


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl and metrics.csv from the history, written whole and atomically: a
    full disk is a clear error, and a run killed between writing its metrics and its
    checkpoint cannot leave an epoch logged twice after --resume (history is the truth)."""
    # The checkpoint's JSON sorts keys: a resumed history gets the columns' order back here.
    rank = {k: i for i, k in enumerate(METRIC_COLUMNS)}
    rows = [dict(sorted(row.items(), key=lambda kv: rank.get(kv[0], len(rank)))) for row in history]
    jsonl = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write_bytes(run_dir / "metrics.jsonl", jsonl.encode())
    buf = io.StringIO(newline="")
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(run_dir / "metrics.csv", buf.getvalue().encode())


def describe_run(trainer: Any) -> str:
    """The line a run starts its log with: model, data, schedule, precision, and how it
    was started (resumed, from which checkpoint, what trains)."""
    cfg, trial = trainer.cfg, trainer.precision_trial
    return (f"training {cfg.model} {trainer.model_kwargs} on {cfg.data}: {len(trainer.train_set)} train / "
            f"{len(trainer.val_set)} val images, {trainer.channels}×{trainer.image_size}², "
            f"{len(trainer.classes)} classes; {cfg.epochs} epochs × {trainer.steps_per_epoch} steps, "
            f"batch {trainer.global_batch}, {cfg.optimizer} lr {cfg.lr:g}, {trainer.precision}"
            + (f" (auto: {trial['bf16']:.3g} s per step in bf16, {trial['fp32']:.3g} s in fp32)"
               if trial else "")
            + (f", {trainer.world_size} processes" if trainer.world_size > 1 else "")
            + (f", from {cfg.init}" if cfg.init else "")
            + (f", head only for {cfg.head_epochs} epochs at lr {cfg.head_lr or cfg.lr:g}" if cfg.head_epochs else "")
            + (f", layer decay {cfg.layer_decay:g}" if cfg.layer_decay is not None else "")
            + (", linear probe" if cfg.linear_probe else (f", frozen {cfg.freeze}" if cfg.freeze != "none" else ""))
            + ("" if cfg.precise_bn else ", precise BN off")
            + (", quantization-aware (int8 simulated)" if cfg.qat else "")
            + (", compiled (the first step compiles for a minute or two)" if cfg.compile else "")
            + (f" (resuming at epoch {trainer.epoch + 1})" if cfg.resume else ""))
