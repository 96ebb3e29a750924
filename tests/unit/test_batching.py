"""The CPU variant's micro-batcher, without Ray (service/serving/batching.py)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.serving.batching import MicroBatcher, QueueFull


class Runtime:
    """A stand-in runtime: embedding of a text = [its first token id, batch number]; blocks on demand."""

    def __init__(self):
        self.batches: list[list[list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, ids):
        self.gate.wait(5)
        self.batches.append(ids)
        return np.array([[x[0], len(self.batches)] for x in ids], dtype=np.float32)


def test_requests_that_queue_while_a_batch_runs_share_the_next_one_and_get_their_own_rows():
    rt = Runtime()
    seen: list[tuple[int, float]] = []
    batcher = MicroBatcher(rt, max_batch_size=8, batch_wait_timeout_s=0.0, max_queued_requests=16,
                           on_batch=lambda n, s: seen.append((n, s)))

    async def main():
        rt.gate.clear()  # the first batch blocks in the runtime while the others queue
        first = asyncio.ensure_future(batcher.submit([[1]]))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit([[10 * k + j] for j in range(k)])) for k in (2, 3)]
        await asyncio.sleep(0.05)
        rt.gate.set()
        return await first, await asyncio.gather(*rest)

    first, (two, three) = asyncio.run(main())
    assert [len(b) for b in rt.batches] == [1, 5]  # 2 + 3 texts queued behind the first batch, then ran together
    assert first.tolist() == [[1, 1]]
    assert two[:, 0].tolist() == [20, 21] and three[:, 0].tolist() == [30, 31, 32] and set(three[:, 1]) == {2}
    assert [n for n, _ in seen] == [1, 5]


def test_a_batch_never_splits_a_request_or_exceeds_its_size():
    rt = Runtime()
    batcher = MicroBatcher(rt, max_batch_size=4, batch_wait_timeout_s=0.0, max_queued_requests=16)

    async def main():
        rt.gate.clear()
        jobs = [asyncio.ensure_future(batcher.submit([[k]] * 3)) for k in range(3)]
        await asyncio.sleep(0.05)
        rt.gate.set()
        return await asyncio.gather(*jobs)

    asyncio.run(main())
    assert [len(b) for b in rt.batches] == [3, 3, 3]  # 3 + 3 > 4: each request alone, whole
    with pytest.raises(ValueError, match="cannot fit a batch of 4"):
        asyncio.run(batcher.submit([[1]] * 5))


def test_past_the_queue_bound_requests_are_refused_at_once_and_cancelled_ones_are_dropped():
    rt = Runtime()
    batcher = MicroBatcher(rt, max_batch_size=8, batch_wait_timeout_s=0.0, max_queued_requests=2)

    async def main():
        rt.gate.clear()
        running = asyncio.ensure_future(batcher.submit([[1]]))
        await asyncio.sleep(0.05)  # it left the queue: it is the running batch
        waiting = [asyncio.ensure_future(batcher.submit([[k]])) for k in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit([[4]])
        waiting[0].cancel()  # its caller gave up (a timeout)
        rt.gate.set()
        await running
        return await waiting[1]

    assert asyncio.run(main()).tolist() == [[3, 2]]
    assert rt.batches == [[[1]], [[3]]]  # the cancelled request was never computed


def test_a_runtime_error_reaches_every_request_of_its_batch_and_the_next_batch_still_runs():
    calls = []

    def flaky(ids):
        calls.append(ids)
        if len(calls) == 1:
            raise RuntimeError("onnxruntime: bad input")
        return np.zeros((len(ids), 2), np.float32)

    batcher = MicroBatcher(flaky, max_batch_size=8, batch_wait_timeout_s=0.0, max_queued_requests=8)

    async def main():
        with pytest.raises(RuntimeError, match="bad input"):
            await batcher.submit([[1]])
        return await batcher.submit([[2], [3]])

    assert asyncio.run(main()).shape == (2, 2)


def test_a_batch_window_waits_for_company():
    rt = Runtime()
    batcher = MicroBatcher(rt, max_batch_size=8, batch_wait_timeout_s=0.2, max_queued_requests=8)

    async def main():
        a = asyncio.ensure_future(batcher.submit([[1]]))
        await asyncio.sleep(0.02)  # well inside the window
        return await asyncio.gather(a, batcher.submit([[2]]))

    asyncio.run(main())
    assert rt.batches == [[[1], [2]]]


def test_admission_weighs_texts_not_requests_against_the_wait_budget_once_the_queue_is_slow():
    rt = Runtime()
    now = [100.0]  # the batcher's clock, moved by hand
    batcher = MicroBatcher(rt, max_batch_size=32, batch_wait_timeout_s=0.0, max_queued_requests=64,
                           max_queue_delay_s=0.05, clock=lambda: now[0])

    async def main():
        assert await batcher.submit([[1]] * 8) is not None  # idle and unmeasured: always admitted
        assert batcher.cost_per_text_s is not None and batcher.cost_per_text_s > 0  # measured by that batch
        batcher.cost_per_text_s = 0.004  # 4 ms per text, as if measured
        rt.gate.clear()
        running = asyncio.ensure_future(batcher.submit([[2]] * 4))  # a batch of 4 texts starts: 16 ms of work
        await asyncio.sleep(0.05)
        now[0] += 0.006  # 6 ms into it: 10 ms left
        assert batcher.expected_wait_s(1) == pytest.approx(0.010 + 0.004)
        queued = [asyncio.ensure_future(batcher.submit([[3]] * 3)) for _ in range(2)]
        await asyncio.sleep(0.01)
        # 10 + (6 + 8) x 4 = 66 ms > 50, but nothing has waited yet: a young queue is not shed on the estimate
        big = asyncio.ensure_future(batcher.submit([[4]] * 8))
        await asyncio.sleep(0.01)
        now[0] += 0.034  # the oldest queued request has waited 34 ms, over half the budget
        assert batcher.oldest_wait_s() == pytest.approx(0.034)
        assert batcher.expected_wait_s() == pytest.approx(14 * 0.004)  # the running batch overran: 0 left
        for texts in (8, 1):  # (14 + 8) x 4 = 88 ms, (14 + 1) x 4 = 60 ms: both over 50
            with pytest.raises(QueueFull, match="over this replica's 50 ms budget"):
                await batcher.submit([[5]] * texts)
        rt.gate.set()
        return await asyncio.gather(running, *queued, big)

    results = asyncio.run(main())
    assert [len(r) for r in results] == [4, 3, 3, 8]
    assert batcher.expected_wait_s() == 0.0 and batcher.oldest_wait_s() == 0.0  # nothing left once all answered
