"""An in-process micro-batcher for the CPU variant: plain asyncio, testable without Ray.

Requests (each a list of token-id lists) queue; one batch runs at a time (the runtime already uses
every thread it was given), in a worker thread, so the event loop keeps taking HTTP requests while
it computes. A batch takes queued requests first come, first served, up to ``max_batch_size``
texts; after the first request of a batch it waits ``batch_wait_timeout_s`` for company (0: none,
the next batch forms from what queued while the previous one ran). Past ``max_queued_requests``
waiting, :meth:`MicroBatcher.submit` raises :class:`QueueFull` at once, so overload is shed, not
queued. A request whose caller gave up (cancelled) before its batch starts is dropped from it.

Why not ``@serve.batch``: it needs a Serve replica context (so no unit test without Ray), records
six Ray metrics per batch, and has no queue bound; this is the batching loop single-process
embedding servers (infinity, TEI) run, in about sixty lines.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["MicroBatcher", "QueueFull"]

log = logging.getLogger("ray.serve")


class QueueFull(RuntimeError):
    """More requests are waiting than the batcher holds."""


@dataclass
class _Request:
    ids: list[list[int]]
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, run: Callable[[list[list[int]]], np.ndarray], *, max_batch_size: int,
                 batch_wait_timeout_s: float, max_queued_requests: int,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run, self.max_batch_size = run, max_batch_size
        self.batch_wait_timeout_s, self.max_queued_requests = batch_wait_timeout_s, max_queued_requests
        self.on_batch = on_batch  # (texts, seconds in the runtime) after every batch
        self._queue: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one running)."""
        return len(self._queue)

    async def submit(self, ids: list[list[int]]) -> np.ndarray:
        """Embeddings [len(ids), dim] for one request; its texts stay in one batch."""
        if len(ids) > self.max_batch_size:
            raise ValueError(f"a request of {len(ids)} texts cannot fit a batch of {self.max_batch_size}")
        if len(self._queue) >= self.max_queued_requests:
            raise QueueFull(f"{len(self._queue)} requests are waiting, the most this replica queues")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        request = _Request(ids, loop.create_future())
        self._queue.append(request)
        self._wakeup.set()
        return await request.future

    def _take(self) -> list[_Request]:
        batch, texts = [], 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # its caller gave up while it waited
                self._queue.popleft()
                continue
            if texts + len(head.ids) > self.max_batch_size:
                break
            batch.append(self._queue.popleft())
            texts += len(head.ids)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.batch_wait_timeout_s > 0 and sum(len(r.ids) for r in self._queue) < self.max_batch_size:
                await asyncio.sleep(self.batch_wait_timeout_s)
            batch = self._take()
            if not batch:
                continue
            ids = [x for r in batch for x in r.ids]
            t0 = loop.time()
            try:
                emb = await asyncio.to_thread(self.run, ids)
            except Exception as e:  # noqa: BLE001 - every request of the batch gets the runtime's error
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            if self.on_batch is not None:
                try:
                    self.on_batch(len(ids), loop.time() - t0)
                except Exception:  # metrics must not stop the batches
                    log.exception("twinserve: recording a batch failed")
            start = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(emb[start: start + len(r.ids)])
                start += len(r.ids)
