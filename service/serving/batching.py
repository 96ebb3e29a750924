"""An in-process micro-batcher for the CPU variant: plain asyncio, testable without Ray.

Requests (each a list of token-id lists) queue; one batch runs at a time (the runtime already uses
every thread it was given), in a worker thread, so the event loop keeps taking HTTP requests while
it computes. A batch takes queued requests first come, first served, up to ``max_batch_size``
texts; after the first request of a batch it waits ``batch_wait_timeout_s`` for company (0: none,
the next batch forms from what queued while the previous one ran). A request whose caller gave up
(cancelled) before its batch starts is dropped from it.

Admission is by the wait a request would have, not by a count of requests: the batcher keeps the
runtime's recent cost per text (an exponential average over batches) and refuses, with
:class:`QueueFull` at once, a request whose texts would not be embedded within ``max_queue_delay_s``
(what is left of the running batch, then the texts queued ahead of it and its own, at that cost)
while the queue is really slow: its oldest request has already waited half the budget. The
estimate alone shed 0.2-0.4% of the locustfile's mix with p99 under 50 ms (texts of uneven
length make the cost per text jumpy); the observed wait keeps it honest. One request of 8 texts weighs eight of one
text, so shedding starts where the wait, and so p99, would leave the budget, whatever the request
shape (a fixed count of requests was either too tight for single texts or too loose for eight).
``max_queued_requests`` stays as a hard bound.

Why not ``@serve.batch``: it needs a Serve replica context (so no unit test without Ray), records
six Ray metrics per batch, and has no queue bound; this is the batching loop single-process
embedding servers (infinity, TEI) run, in about sixty lines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["MicroBatcher", "QueueFull"]

log = logging.getLogger("ray.serve")


class QueueFull(RuntimeError):
    """The request would wait longer than the batcher's budget, or more requests wait than it holds."""


@dataclass
class _Request:
    ids: list[list[int]]
    future: asyncio.Future
    queued_at: float = 0.0


class MicroBatcher:
    COST_SMOOTHING = 0.2  # weight of the newest batch in the average cost per text

    def __init__(self, run: Callable[[list[list[int]]], np.ndarray], *, max_batch_size: int,
                 batch_wait_timeout_s: float, max_queued_requests: int, max_queue_delay_s: float | None = None,
                 on_batch: Callable[[int, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.run, self.max_batch_size = run, max_batch_size
        self.batch_wait_timeout_s, self.max_queued_requests = batch_wait_timeout_s, max_queued_requests
        self.max_queue_delay_s, self._clock = max_queue_delay_s, clock
        self.on_batch = on_batch  # (texts, seconds in the runtime) after every batch
        self.cost_per_text_s: float | None = None  # measured: None until the first batch ran
        self._queued_texts = self._running_texts = 0
        self._running_since = 0.0
        self._queue: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def expected_wait_s(self, texts: int = 0) -> float | None:
        """How long until ``texts`` submitted now are embedded: what is left of the running batch, then
        the queued texts and its own at the measured cost per text (batches run back to back); None
        before the first batch measured the cost."""
        if self.cost_per_text_s is None:
            return None
        c = self.cost_per_text_s
        running_left = max(0.0, self._running_texts * c - (self._clock() - self._running_since))
        return running_left + (self._queued_texts + texts) * c

    def oldest_wait_s(self) -> float:
        """How long the oldest queued request has waited so far (0 when none waits)."""
        return self._clock() - self._queue[0].queued_at if self._queue else 0.0

    async def submit(self, ids: list[list[int]]) -> np.ndarray:
        """Embeddings [len(ids), dim] for one request; its texts stay in one batch."""
        if len(ids) > self.max_batch_size:
            raise ValueError(f"a request of {len(ids)} texts cannot fit a batch of {self.max_batch_size}")
        if len(self._queue) >= self.max_queued_requests:
            raise QueueFull(f"{len(self._queue)} requests are waiting, the most this replica queues")
        wait = self.expected_wait_s(len(ids)) if self.max_queue_delay_s is not None else None
        if wait is not None and wait > self.max_queue_delay_s and self.oldest_wait_s() > self.max_queue_delay_s / 2:
            raise QueueFull(f"it would take about {wait * 1e3:.0f} ms in the runtime's queue, over this replica's "
                            f"{self.max_queue_delay_s * 1e3:.0f} ms budget")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        request = _Request(ids, loop.create_future(), self._clock())
        self._queue.append(request)
        self._queued_texts += len(ids)
        self._wakeup.set()
        return await request.future

    def _take(self) -> list[_Request]:
        batch, texts = [], 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # its caller gave up while it waited
                self._queue.popleft()
                self._queued_texts -= len(head.ids)
                continue
            if texts + len(head.ids) > self.max_batch_size:
                break
            batch.append(self._queue.popleft())
            texts += len(head.ids)
        self._queued_texts -= texts
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.batch_wait_timeout_s > 0 and self._queued_texts < self.max_batch_size:
                await asyncio.sleep(self.batch_wait_timeout_s)
            batch = self._take()
            if not batch:
                continue
            ids = [x for r in batch for x in r.ids]
            self._running_texts, self._running_since = len(ids), self._clock()
            t0 = loop.time()
            try:
                emb = await asyncio.to_thread(self.run, ids)
            except Exception as e:  # noqa: BLE001 - every request of the batch gets the runtime's error
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            finally:
                self._running_texts = 0
            seconds = loop.time() - t0
            a, cost = self.COST_SMOOTHING, seconds / len(ids)
            self.cost_per_text_s = cost if self.cost_per_text_s is None else a * cost + (1 - a) * self.cost_per_text_s
            if self.on_batch is not None:
                try:
                    self.on_batch(len(ids), seconds)
                except Exception:  # metrics must not stop the batches
                    log.exception("twinserve: recording a batch failed")
            start = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(emb[start: start + len(r.ids)])
                start += len(r.ids)
