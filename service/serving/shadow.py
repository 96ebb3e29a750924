"""Shadow copies: a fraction of answered requests also goes to the other variant, in the background.

The cosine between the two variants' embeddings of the same texts (both L2-normalised) and the
shadow's latency are recorded per shadow variant as metrics; the replica's own figures (the admin
view) count since the routing last changed, so an experiment (set a shadow fraction, read the
agreement) reads its own samples only. At most ``max_in_flight`` shadows run at once
per ingress replica; more are skipped, never queued, so shadowing cannot build a backlog. A shadow
call times out and is cancelled like any call (the caller's ``call`` does that).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from service.serving.policy import VariantFailed, VariantUnavailable

__all__ = ["Shadow"]

log = logging.getLogger("ray.serve")


class Shadow:
    def __init__(self, max_in_flight: int, metrics=None):
        self.max_in_flight, self._metrics = max_in_flight, metrics
        self.tasks: set[asyncio.Task] = set()
        self.reset()

    def reset(self) -> None:
        """Start the agreement figures afresh (the router does on each routing change); shadows in
        flight still finish and count. The Prometheus series are never reset."""
        self.completed = self.failed = self.skipped = 0
        self.cosine_sum, self.latency_s_sum = 0.0, 0.0
        self.cosine_min: float | None = None

    def _count(self, variant: str, status: str) -> None:
        if self._metrics is not None:
            self._metrics.shadow_requests.inc(tags={"variant": variant, "status": status})

    def send(self, variant: str, call: Callable[[], Awaitable[np.ndarray]], primary: np.ndarray) -> bool:
        """Start a shadow to ``variant`` (``call()`` gets its embeddings); False when skipped (too many)."""
        if len(self.tasks) >= self.max_in_flight:
            self.skipped += 1
            self._count(variant, "skipped")
            return False
        task = asyncio.get_running_loop().create_task(self._run(variant, call, primary))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _run(self, variant: str, call: Callable[[], Awaitable[np.ndarray]], primary: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            emb = await call()
        except VariantFailed:
            status = "error"
        except VariantUnavailable as e:
            status = "shed" if e.shed else "unavailable"
        except TimeoutError:
            status = "timeout"
        except Exception:  # a shadow must never disturb serving; counted, logged
            log.exception("twinserve shadow request to %s failed", variant)
            status = "error"
        else:
            latency = time.perf_counter() - t0
            cos = np.sum(primary * emb, axis=1)
            if self._metrics is not None:
                tags = {"variant": variant}
                self._metrics.shadow_latency.observe(latency, tags=tags)
                for c in cos.tolist():
                    self._metrics.shadow_cosine.observe(c, tags=tags)
                self._metrics.shadow_cosine_sum.inc(float(cos.sum()), tags=tags)
                self._metrics.shadow_texts.inc(len(cos), tags=tags)
            self.completed += 1
            self.cosine_sum += float(cos.mean())
            self.cosine_min = min(float(cos.min()), 1.0 if self.cosine_min is None else self.cosine_min)
            self.latency_s_sum += latency
            status = "ok"
        if status != "ok":
            self.failed += 1
        self._count(variant, status)

    def view(self) -> dict:
        n = self.completed
        return {"completed": n, "failed": self.failed, "skipped": self.skipped, "in_flight": len(self.tasks),
                "mean_cosine": self.cosine_sum / n if n else None, "min_cosine": self.cosine_min,
                "mean_latency_s": self.latency_s_sum / n if n else None}
