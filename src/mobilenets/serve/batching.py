"""Dynamic batching: concurrent requests share one forward pass.

A MobileNet on a CPU classifies 32 images at once several times faster per image than one at
a time (``mobilenets bench``), so the server queues each preprocessed image and one task
gathers the queue into a batch: up to ``max_batch`` images, waiting at most ``max_wait_s``
after the first for others to arrive. The forward pass runs on one inference thread, off the
event loop, which keeps accepting and decoding requests meanwhile; the images that arrive
during a pass form the next batch at once. ``max_batch=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

#: ``predict(batch, top_k)``: the top-k lists of each image of a ``(N, C, S, S)`` batch.
Predict = Callable[[torch.Tensor, int], list[list[dict[str, Any]]]]


@dataclass
class Answer:
    """One image's result and where its time went."""

    top: list[dict[str, Any]]
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass
class _Item:
    image: torch.Tensor
    top_k: int
    future: asyncio.Future = field(repr=False)
    queued_at: float = 0.0


class Batcher:
    """Groups :meth:`submit` calls into forward passes; :meth:`start` and :meth:`stop` run it."""

    def __init__(self, predict: Predict, max_batch: int = 32, max_wait_s: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._task: asyncio.Task | None = None
        # One thread: forward passes run one after another, each with all of torch's threads.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mobilenets-inference")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then end the batching task and the inference thread."""
        if self._task is not None and self._queue is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the inference thread (the warm-up pass, for instance)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, image: torch.Tensor, top_k: int) -> Answer:
        """The top-k of one preprocessed ``(C, S, S)`` image, once its batch has run."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(image, top_k, future, time.perf_counter()))
        return await future

    async def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """The batch that starts with ``first``, and whether the stop sentinel was met."""
        assert self._queue is not None
        items, loop = [first], asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(items) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if item is None:
                return items, True
            items.append(item)
        return items, False

    async def _run(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            items, stopping = await self._gather(first)
            await self._forward(items)

    async def _forward(self, items: list[_Item]) -> None:
        start = time.perf_counter()
        top_k = max(i.top_k for i in items)
        try:
            tops = await self.run_blocking(self.predict, torch.stack([i.image for i in items]), top_k)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
            for i in items:
                if not i.future.done():
                    i.future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(len(items), seconds)
        for item, top in zip(items, tops):
            if not item.future.done():  # a client that went away leaves a cancelled future
                item.future.set_result(Answer(top[:item.top_k], len(items), start - item.queued_at, seconds))
