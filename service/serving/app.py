"""The application graph, declared once, and the builder that ``serve run`` / ``serve deploy`` import.

    serve run deploy/serve_config.yaml                      # the config names build_app and its args
    serve run service.serving.app:build_app artifact_dir=artifacts/all-MiniLM-L6-v2
    serve run service.serving.app:app                       # defaults (artifacts/all-MiniLM-L6-v2)

The ingress (``Router``) serves the CPU variant in-process; ``Dense`` is its own deployment (GPU nodes).
Only the Router's ``user_config`` (weights, shadow fraction) changes without restarting replicas;
change it in the config's ``deployments`` section and ``serve deploy`` again.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from service.serving.config import ReplicaConfig, ServingConfig
from service.serving.deployments import Dense
from service.serving.router import Router

__all__ = ["app", "build_app"]


def _replica_options(v: ReplicaConfig) -> dict[str, Any]:
    """Replicas, autoscaling and placement of one deployment (the ingress or the dense one)."""
    actor: dict[str, Any] = {"num_cpus": v.num_cpus, "num_gpus": getattr(v, "num_gpus", 0.0)}
    if v.resources:  # placement: only nodes that advertise these custom resources (chart worker groups)
        actor["resources"] = dict(v.resources)
    if v.max_replicas is None:
        replicas: dict[str, Any] = {"num_replicas": v.num_replicas}
    else:
        replicas = {"autoscaling_config": {"min_replicas": v.num_replicas, "initial_replicas": v.num_replicas,
                                           "max_replicas": v.max_replicas,
                                           "target_ongoing_requests": v.target_ongoing_requests}}
    return {**replicas, "ray_actor_options": actor}


def build_app(args: dict[str, Any] | ServingConfig | None = None) -> Application:
    """Validate ``args`` as a :class:`ServingConfig` and bind the graph (relative paths resolved here).

    Two deployments: the ingress (``Router``: HTTP, routing, the CPU variant in-process; its replicas
    are the CPU variant's capacity) and ``Dense`` (reached by handle, token ids in).
    """
    cfg = args if isinstance(args, ServingConfig) else ServingConfig.model_validate(args or {})
    cfg = cfg.model_copy(update={"artifact_dir": cfg.artifact_dir.expanduser().resolve()})
    r, d = cfg.router, cfg.dense
    backpressure = BackpressureConfig(status_code=503, retry_after_s=r.retry_after_s)
    dense = Dense.options(**_replica_options(d), max_ongoing_requests=d.max_ongoing_requests,
                          max_queued_requests=d.max_queued_requests, backpressure_config=backpressure,
                          ).bind(str(cfg.artifact_dir), d)
    return Router.options(
        **_replica_options(r),
        max_ongoing_requests=r.max_ongoing_requests,
        max_queued_requests=r.max_queued_requests,
        backpressure_config=backpressure,
        user_config=cfg.routing.model_dump(),
    ).bind(dense=dense, config=cfg)


app = build_app()
