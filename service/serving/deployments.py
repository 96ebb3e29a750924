"""The two model deployments: thin Ray Serve wrappers around :mod:`service.model.backends`.

Each adds batching (``@serve.batch``, sizes from config), resources and metrics around a backend
that does the work (tokenise with dynamic padding, run, L2-normalised embeddings). Hashes are
verified by ``backend.load()`` in the constructor, so a replica whose artifacts were altered never
starts: the deployment fails with the ``ArtifactIntegrityError`` message in ``serve status``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import numpy as np
from ray import serve

from service.model.backends import Backend, OnnxBackend, TorchBackend
from service.serving.config import LimitsConfig, VariantConfig
from service.serving.metrics import serving_metrics

__all__ = ["Dense", "Pruned"]

log = logging.getLogger("ray.serve")


def _n_texts(requests: list[list[str]]) -> int:
    return sum(len(r) for r in requests)


class _VariantDeployment:
    """Shared by Dense and Pruned: one backend, one batch queue counting texts, not requests."""

    variant: str

    def __init__(self, artifact_dir: str | Path, config: VariantConfig, limits: LimitsConfig):
        self.config = config
        self.backend = self._make_backend(Path(artifact_dir), threads=max(1, int(config.num_cpus)))
        self.backend.load()  # verifies the manifest's sha256 of every file it reads; raises on a mismatch
        model_limit = self.backend.tokenizer.max_tokens
        if limits.max_tokens_per_input is not None:
            if limits.max_tokens_per_input > model_limit:
                raise ValueError(
                    f"limits.max_tokens_per_input ({limits.max_tokens_per_input}) is above the model's limit "
                    f"of {model_limit} tokens (manifest.json max_tokens); lower it or leave it unset")
            self.backend.tokenizer.max_tokens = limits.max_tokens_per_input
        self.embed_batch.set_max_batch_size(config.max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.dim = int(self.backend.embed(["dimension probe"]).shape[1])
        self._metrics = serving_metrics()
        if config.price_usd_per_hour is not None:
            # Re-set every second: Ray's metrics agent drops a gauge series that has not been recorded
            # for two report intervals, so a price set once at start vanished from long-lived replicas.
            threading.Thread(target=self._keep_price_gauge, args=(config.price_usd_per_hour,),
                             name=f"twinserve-{self.variant}-price-gauge", daemon=True).start()
        log.info("twinserve %s variant ready: %s on %s (%s), dim %d, %d threads, batches of up to %d texts "
                 "waiting %.1f ms", self.variant, self.platform, self.backend.device, self.backend.precision,
                 self.dim, self.backend.threads, config.max_batch_size, config.batch_wait_timeout_s * 1e3)

    platform: str

    def _keep_price_gauge(self, price_usd_per_hour: float, every_s: float = 1.0) -> None:
        tags = {"variant": self.variant}
        while True:
            self._metrics.price.set(price_usd_per_hour, tags=tags)
            time.sleep(every_s)

    def _make_backend(self, artifact_dir: Path, threads: int) -> Backend:
        raise NotImplementedError

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings [len(texts), dim], float32, L2-normalised; one request's texts stay together."""
        return await self.embed_batch(texts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_n_texts)
    async def embed_batch(self, requests: list[list[str]]) -> list[np.ndarray]:
        texts = [t for r in requests for t in r]
        t0 = time.perf_counter()
        # Off the event loop, so the next batch keeps filling while this one runs.
        emb = await asyncio.to_thread(self.backend.embed, texts)
        tags = {"variant": self.variant}
        self._metrics.model_latency.observe(time.perf_counter() - t0, tags=tags)
        self._metrics.batch_size.observe(len(texts), tags=tags)
        out, start = [], 0
        for r in requests:
            out.append(emb[start: start + len(r)])
            start += len(r)
        return out

    async def metadata(self) -> dict:
        m = self.backend.manifest
        info = m.dense if self.variant == "dense" else m.pruned
        return {
            "variant": self.variant, "platform": self.platform, "device": self.backend.device,
            "precision": self.backend.precision, "dim": self.dim, "max_tokens": self.backend.tokenizer.max_tokens,
            "model": m.name, "source_model": m.source_model, "fingerprint": m.fingerprint,
            "parameters": info.parameters, "layers": len(info.layers),
            "max_batch_size": self.config.max_batch_size, "batch_wait_timeout_s": self.config.batch_wait_timeout_s,
        }

    async def check_health(self) -> None:
        await asyncio.to_thread(self.backend.check_health)


@serve.deployment(name="Dense", health_check_period_s=10, health_check_timeout_s=30)
class Dense(_VariantDeployment):
    """torch: CUDA in bf16 (fp16 where bf16 is unsupported) when a GPU is visible, CPU fp32 otherwise."""

    variant = "dense"
    platform = "pytorch"

    def _make_backend(self, artifact_dir: Path, threads: int) -> Backend:
        import torch

        if not torch.cuda.is_available():
            log.warning("twinserve dense variant: no GPU visible (num_gpus=%s), running on CPU in fp32",
                        self.config.num_gpus)
        return TorchBackend(artifact_dir, threads=threads, truncate=True)


@serve.deployment(name="Pruned", health_check_period_s=10, health_check_timeout_s=30)
class Pruned(_VariantDeployment):
    """ONNX Runtime on CPU; intra-op threads equal to the replica's num_cpus."""

    variant = "pruned"
    platform = "onnxruntime"

    def _make_backend(self, artifact_dir: Path, threads: int) -> Backend:
        return OnnxBackend(artifact_dir, variant="pruned", threads=threads, truncate=True)
