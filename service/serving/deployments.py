"""The dense deployment: a thin Ray Serve wrapper around :class:`service.model.backends.TorchBackend`.

The ingress tokenises each request once and sends token ids here (never texts); this replica
pads each batch to its longest input and runs torch (CUDA bf16/fp16 on a GPU node, CPU fp32
otherwise). Batching is ``@serve.batch`` counting texts, sizes from config. Hashes are verified by
``backend.load()`` in the constructor, so a replica whose artifacts were altered never starts: the
deployment fails with the ``ArtifactIntegrityError`` message in ``serve status``.

The CPU variant has no deployment of its own: it runs inside the ingress replicas
(:mod:`service.serving.router`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from ray import serve

from service.model.backends import TorchBackend
from service.serving.config import VariantConfig
from service.serving.metrics import keep_price_gauge, serving_metrics

__all__ = ["Dense", "n_texts"]

log = logging.getLogger("ray.serve")


def n_texts(requests: list[list]) -> int:
    """``batch_size_fn`` of both variants' batches: a batch counts texts, not requests."""
    return sum(len(r) for r in requests)


@serve.deployment(name="Dense", health_check_period_s=10, health_check_timeout_s=30)
class Dense:
    """torch: CUDA in bf16 (fp16 where bf16 is unsupported) when a GPU is visible, CPU fp32 otherwise."""

    variant = "dense"
    platform = "pytorch"

    def __init__(self, artifact_dir: str | Path, config: VariantConfig):
        import torch

        self.config = config
        if not torch.cuda.is_available():
            log.warning("twinserve dense variant: no GPU visible (num_gpus=%s), running on CPU in fp32",
                        config.num_gpus)
        self.backend = TorchBackend(Path(artifact_dir), threads=max(1, int(config.num_cpus)))
        self.backend.load()  # verifies the manifest's sha256 of every file it reads; raises on a mismatch
        self.embed.set_max_batch_size(config.max_batch_size)
        self.embed.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.dim = int(self.backend.embed(["dimension probe"]).shape[1])
        self._metrics = serving_metrics()
        keep_price_gauge(self.variant, config.price_usd_per_hour)
        log.info("twinserve dense variant ready: %s on %s (%s), dim %d, %d threads, batches of up to %d texts "
                 "waiting %.1f ms", self.platform, self.backend.device, self.backend.precision, self.dim,
                 self.backend.threads, config.max_batch_size, config.batch_wait_timeout_s * 1e3)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=n_texts)
    async def embed(self, requests: list[list[list[int]]]) -> list[np.ndarray]:
        """Embeddings per request from token ids (already limited by the ingress); a request's texts
        stay together. Called as ``handle.embed.remote(ids)`` with one request's ``list[list[int]]``."""
        ids = [x for r in requests for x in r]
        t0 = time.perf_counter()
        # Off the event loop, so the next batch keeps filling while this one runs.
        emb = await asyncio.to_thread(self._run, ids)
        tags = {"variant": self.variant}
        self._metrics.model_latency.observe(time.perf_counter() - t0, tags=tags)
        self._metrics.batch_size.observe(len(ids), tags=tags)
        out, start = [], 0
        for r in requests:
            out.append(emb[start: start + len(r)])
            start += len(r)
        return out

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        batch = self.backend.tokenizer.pad(ids)
        return self.backend.embed_ids(batch.input_ids, batch.attention_mask)

    async def metadata(self) -> dict:
        m = self.backend.manifest
        return {
            "variant": self.variant, "platform": self.platform, "device": self.backend.device,
            "precision": self.backend.precision, "dim": self.dim, "model": m.name,
            "source_model": m.source_model, "fingerprint": m.fingerprint, "parameters": m.dense.parameters,
            "layers": len(m.dense.layers), "max_batch_size": self.config.max_batch_size,
            "batch_wait_timeout_s": self.config.batch_wait_timeout_s,
        }

    async def check_health(self) -> None:
        await asyncio.to_thread(self.backend.check_health)
