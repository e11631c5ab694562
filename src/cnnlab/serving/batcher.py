"""Micro-batching: concurrent requests' images run through the model together.

Each request submits its decoded images (an ``(k, H, W, 3)`` uint8 array) and awaits their
logits. One worker task takes the first waiting request, then keeps collecting requests for up
to ``window_ms`` milliseconds (or until ``max_batch`` images are collected), runs the whole
batch once in a single inference thread (so the model is never used by two threads at once and
the event loop stays free to accept requests), and hands each request its rows.
``max_batch=1`` turns batching off: one request per model call.

While a batch runs, new requests queue up, so even ``window_ms=0`` batches under load; a
window only makes batches larger at light load, at the cost of that much latency.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: Counter = field(default_factory=Counter)

    def record(self, n: int) -> None:
        self.batches += 1
        self.images += n
        self.largest = max(self.largest, n)
        self.sizes[n] += 1

    def to_dict(self) -> dict[str, object]:
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest,
                "mean_batch": round(self.images / self.batches, 2) if self.batches else 0.0}


class MicroBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32,
                 window_ms: float = 2.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_ms < 0:
            raise ValueError(f"batch window must be >= 0 ms, got {window_ms}")
        self.predict = predict
        self.max_batch = max_batch
        self.window_s = window_ms / 1000.0
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cnnlab-infer")
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: _Item | None = None  # taken from the queue but did not fit the last batch

    def _ensure_worker(self) -> asyncio.Queue[_Item]:
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop or self._task.done():
            self._loop, self._queue, self._held = loop, asyncio.Queue(), None
            self._task = loop.create_task(self._work(), name="cnnlab-batcher")
        assert self._queue is not None
        return self._queue

    async def start(self) -> None:
        self._ensure_worker()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Logits for ``images``, computed in a batch with whatever else is waiting."""
        queue = self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        await queue.put(_Item(images, future))
        return await future

    async def _next_batch(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        first = self._held or await queue.get()
        self._held = None
        items, count = [first], len(first.images)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while count < self.max_batch:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if count + len(item.images) > self.max_batch:
                self._held = item  # starts the next batch
                break
            items.append(item)
            count += len(item.images)
        return items

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch(queue)
            items = [it for it in items if not it.future.done()]  # timed-out requests are dropped
            if not items:
                continue
            x = items[0].images if len(items) == 1 else np.concatenate([it.images for it in items])
            try:
                logits = await loop.run_in_executor(self._executor, self.predict, x)
            except Exception as exc:  # handed to every waiting request
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            self.stats.record(len(x))
            start = 0
            for it in items:
                n = len(it.images)
                if not it.future.done():
                    it.future.set_result(logits[start : start + n])
                start += n
