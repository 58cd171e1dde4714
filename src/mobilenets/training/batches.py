"""Batches of a dataset by index: which images each process trains on at each step, and
the loop that fetches them (tensor indexing in memory, a DataLoader for files)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch

from ..data.datasets import TensorImages
from ..errors import MobilenetsError

#: One micro-batch of the plan: (step, shard, dataset indices).
MicroBatch = tuple[int, int, torch.Tensor]


def micro_batches(num_images: int, batch_size: int, rank: int, world_size: int, accum_steps: int,
                  seed: int, epoch: int, start: int, steps: int) -> list[MicroBatch]:
    """``(step, shard, indices)`` for process ``rank``, steps ``start`` to ``steps - 1`` of ``epoch``.

    Each global batch is cut into ``S = world_size × accum_steps`` shards, and PyTorch's
    ``DistributedSampler`` deals the epoch's shuffled indices to the ``S`` shards
    (``set_epoch`` reshuffles every epoch, seeded by ``seed``). Shard ``s`` gets
    ``perm[s::S]``, so its ``k``-th micro-batch of ``B/S`` holds ``perm[k·B + s + S·j]``
    and the ``S`` micro-batches of step ``k`` together are exactly ``perm[k·B:(k+1)·B]``.
    Rank ``r`` processes shards ``r·A … r·A + A − 1``: any world size and accumulation
    that multiply to the same ``S`` see the same micro-batches (2 processes equal 1
    process accumulating 2, tested).
    """
    from torch.utils.data.distributed import DistributedSampler

    shards = world_size * accum_steps
    micro = batch_size // shards
    out = []
    for a in range(accum_steps):
        shard = rank * accum_steps + a
        sampler = DistributedSampler(range(num_images), num_replicas=shards, rank=shard,
                                     shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        own = torch.tensor(list(sampler), dtype=torch.int64)
        out += [(step, shard, own[step * micro:(step + 1) * micro]) for step in range(start, steps)]
    out.sort(key=lambda item: (item[0], item[1]))  # step by step, shards in order
    return out


def iterate(dataset: Any, idx: torch.Tensor, batch_size: int, workers: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of ``dataset[idx]``."""
    return iterate_lists(dataset, [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)], workers)


def ignore_stop_signals(worker_id: int) -> None:
    """In DataLoader workers: Ctrl-C (sent to the whole process group) or a group-wide
    SIGTERM must not kill them mid-batch; the main process stops on a step boundary and
    then shuts them down itself (and they exit by themselves if it dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def iterate_lists(dataset: Any, batches: list[torch.Tensor], workers: int
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One batch per index tensor: direct tensor indexing for in-memory data, a DataLoader
    with ``workers`` processes decoding ahead otherwise."""
    if isinstance(dataset, TensorImages):
        for idx in batches:
            yield dataset.batch(idx)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                        worker_init_fn=ignore_stop_signals if workers else None)
    try:
        for images, labels in loader:
            yield images, torch.as_tensor(labels, dtype=torch.int64)
    except MobilenetsError as e:
        # A worker's error arrives as "Caught MobilenetsError in DataLoader worker ...
        # Original Traceback ...": keep the worker's own one-line message for the CLI.
        text = str(e)
        if text.startswith("Caught ") and "MobilenetsError: " in text:
            # torch's re-raise leaves a reference cycle from its frames to the loader; dropping
            # the traceback frees the loader now, so its workers stop at once instead of at a
            # later garbage collection (which waits 5 s for them).
            e.__traceback__ = None
            raise MobilenetsError(text.rsplit("MobilenetsError: ", 1)[1].strip()) from None
        raise
