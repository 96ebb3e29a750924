"""The two variants as the ingress sees them: plain classes, testable without a Ray cluster.

* :class:`CpuVariant`: the CPU variant in this process. Token ids are batched by a
  :class:`~service.serving.batching.MicroBatcher`, padded to the batch's longest input and run by
  the backend the manifest names (ONNX Runtime or OpenVINO) in a worker thread.
* :class:`DenseVariant`: the dense deployment behind a Serve handle. Token ids go out (never
  texts); a call that times out is cancelled on the Ray side too (``response.cancel()``); health
  comes from an out-of-band probe of the replica actors, not from a call that queues behind
  requests.

Both raise the policy's exceptions: :class:`VariantUnavailable` (``shed`` when the queue is full),
:class:`VariantFailed` (an error in the model or its replica), ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from service.model.backends import Backend
from service.serving.batching import MicroBatcher, QueueFull
from service.serving.config import CpuVariantConfig
from service.serving.policy import VariantFailed, VariantUnavailable

__all__ = ["CpuVariant", "DenseVariant", "dense_replica_actors"]

log = logging.getLogger("ray.serve")


class CpuVariant:
    variant = "pruned"

    def __init__(self, backend: Backend, config: CpuVariantConfig, *, timeout_s: float,
                 on_batch: Callable[[int, float], None] | None = None):
        self.backend, self.tokenizer, self.timeout_s = backend, backend.tokenizer, timeout_s
        self.batcher = MicroBatcher(self._run, max_batch_size=config.max_batch_size,
                                    batch_wait_timeout_s=config.batch_wait_timeout_s,
                                    max_queued_requests=config.max_queued_requests,
                                    max_queue_delay_s=config.max_queue_delay_s, on_batch=on_batch)
        self.dim = int(backend.embed(["dimension probe"]).shape[1])

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        batch = self.tokenizer.pad(ids)
        return self.backend.embed_ids(batch.input_ids, batch.attention_mask)

    async def embed(self, ids: list[list[int]]) -> np.ndarray:
        try:
            return await asyncio.wait_for(self.batcher.submit(ids), self.timeout_s)
        except QueueFull as e:
            raise VariantUnavailable(self.variant, f"is shedding load ({e})", shed=True) from None
        except (TimeoutError, asyncio.CancelledError):
            raise
        except Exception as e:  # the runtime failed: counted, and a routed request falls back
            log.exception("twinserve: the CPU variant failed a batch")
            raise VariantFailed(self.variant, e) from e

    def metadata(self) -> dict:
        m, b = self.backend.manifest, self.backend
        return {"platform": getattr(b, "runtime", "onnxruntime"), "device": b.device, "precision": b.precision,
                "dim": self.dim, "parameters": m.pruned.parameters, "layers": len(m.pruned.layers)}


def dense_replica_actors(app: str, deployment: str) -> list:
    """Actor handles of the live replicas of ``app``'s ``deployment``.

    Ray Serve names replica actors ``SERVE_REPLICA::<app>#<deployment>#<id>`` in the ``serve``
    namespace (``ReplicaID.to_full_id_str``); there is no public call that lists them. The names
    go with the actor: a dead replica is not listed.
    """
    import ray
    from ray.serve._private.common import ReplicaID
    from ray.serve._private.constants import SERVE_NAMESPACE

    handles = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"] if isinstance(actor, dict) else actor
        if not ReplicaID.is_full_id_str(name):
            continue
        rid = ReplicaID.from_full_id_str(name)
        if rid.deployment_id.app_name == app and rid.deployment_id.name == deployment:
            try:
                handles.append(ray.get_actor(name, namespace=SERVE_NAMESPACE))
            except ValueError:  # gone between the listing and the lookup
                pass
    return handles


class DenseVariant:
    variant = "dense"

    def __init__(self, handle, *, timeout_s: float, probe_timeout_s: float,
                 list_replicas: Callable[[], list] | None = None):
        """``handle``: the Dense deployment's handle; ``list_replicas``: its replica actors (default:
        looked up by name in the ingress's application)."""
        self.handle, self.timeout_s, self.probe_timeout_s = handle, timeout_s, probe_timeout_s
        self._list_replicas = list_replicas
        self._meta: dict | None = None
        # Replica actors seen with their model loaded. Ray's actor handles hash and compare by actor
        # id, so a fresh handle from the next lookup finds its replica here.
        self._initialized: set = set()

    async def embed(self, ids: list[list[int]]) -> np.ndarray:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

        response = self.handle.embed.remote(ids)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            response.cancel()  # the Ray request too, not only this wait
            raise
        except BackPressureError:
            raise VariantUnavailable(self.variant, "is shedding load (its queue is full)", shed=True) from None
        except (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError, ActorDiedError,
                ActorUnavailableError) as e:
            raise VariantUnavailable(self.variant, f"is unavailable ({type(e).__name__})", shed=False) from None
        except Exception as e:  # an error in the replica: counted, a routed request falls back
            log.warning("twinserve: the dense variant failed a request: %s", e)
            raise VariantFailed(self.variant, e) from e

    def _replicas(self) -> list:
        if self._list_replicas is not None:
            return self._list_replicas()
        from ray import serve

        return dense_replica_actors(serve.get_replica_context().app_name, self.handle.deployment_name)

    async def probe(self) -> bool:
        """Does a dense replica that has loaded its model answer out of band within ``probe_timeout_s``?

        Liveness: each replica actor is asked for its queue length, a method Ray runs on a thread of
        its own (the request router's probe), so a busy replica answers as fast as an idle one and a
        dead one is not listed or fails at once. Readiness: a live replica counts only once it says
        its model is loaded (``was_initialized``, which the Serve controller asks too), asked until
        it says yes: Ray starts a replacement's actor within a second of a SIGKILL, long before the
        replacement can serve, and counting it as up then kept the variant from ever being marked
        down (the routed requests waited for it instead of falling back; 2026-11-30, 13:03 and 13:13).
        """
        try:
            actors = await asyncio.wait_for(asyncio.to_thread(self._replicas), self.probe_timeout_s)
            if not actors:
                return False
            answers = await asyncio.wait_for(
                asyncio.gather(*(a.get_num_ongoing_requests.remote() for a in actors), return_exceptions=True),
                self.probe_timeout_s)
            alive = {a for a, ans in zip(actors, answers) if not isinstance(ans, BaseException)}
            self._initialized &= alive  # forget the dead
            starting = list(alive - self._initialized)
            if starting and not self._initialized:
                ready = await asyncio.wait_for(
                    asyncio.gather(*(a.was_initialized.remote() for a in starting), return_exceptions=True),
                    self.probe_timeout_s)
                self._initialized |= {a for a, ok in zip(starting, ready) if ok is True}
        except Exception:  # noqa: BLE001 - timeout or GCS trouble: a miss
            return False
        return bool(self._initialized)

    async def metadata(self) -> dict | None:
        """The replica's own description (asked once, through its queue); None until it answers."""
        if self._meta is None:
            try:
                self._meta = await asyncio.wait_for(self.handle.metadata.remote(), 5.0)
            except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
                return None
        return self._meta
