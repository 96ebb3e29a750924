"""The application graph, declared once, and the builder that ``serve run`` / ``serve deploy`` import.

    serve run deploy/serve_config.yaml                      # the config names build_app and its args
    serve run service.serving.app:build_app artifact_dir=artifacts/all-MiniLM-L6-v2
    serve run service.serving.app:app                       # defaults (artifacts/all-MiniLM-L6-v2)

Only the Router's ``user_config`` (weights, shadow fraction) changes without restarting replicas;
change it in the config's ``deployments`` section and ``serve deploy`` again.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from service.serving.config import ServingConfig, VariantConfig
from service.serving.deployments import Dense, Pruned
from service.serving.router import Router

__all__ = ["app", "build_app"]


def _variant_options(v: VariantConfig, retry_after_s: int) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": v.num_cpus, "num_gpus": v.num_gpus}
    if v.resources:  # placement: only nodes that advertise these custom resources (chart worker groups)
        actor["resources"] = dict(v.resources)
    if v.max_replicas is None:
        replicas: dict[str, Any] = {"num_replicas": v.num_replicas}
    else:
        replicas = {"autoscaling_config": {"min_replicas": v.num_replicas, "initial_replicas": v.num_replicas,
                                           "max_replicas": v.max_replicas,
                                           "target_ongoing_requests": v.target_ongoing_requests}}
    return dict(
        **replicas,
        ray_actor_options=actor,
        max_ongoing_requests=v.max_ongoing_requests,
        max_queued_requests=v.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=retry_after_s),
    )


def build_app(args: dict[str, Any] | ServingConfig | None = None) -> Application:
    """Validate ``args`` as a :class:`ServingConfig` and bind the graph (relative paths resolved here)."""
    cfg = args if isinstance(args, ServingConfig) else ServingConfig.model_validate(args or {})
    cfg = cfg.model_copy(update={"artifact_dir": cfg.artifact_dir.expanduser().resolve()})
    r = cfg.router
    return Router.options(
        num_replicas=r.num_replicas,
        ray_actor_options={"num_cpus": r.num_cpus},
        max_ongoing_requests=r.max_ongoing_requests,
        max_queued_requests=r.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=r.retry_after_s),
        user_config=cfg.routing.model_dump(),
    ).bind(
        dense=Dense.options(**_variant_options(cfg.dense, r.retry_after_s)).bind(
            str(cfg.artifact_dir), cfg.dense, cfg.limits),
        pruned=Pruned.options(**_variant_options(cfg.pruned, r.retry_after_s)).bind(
            str(cfg.artifact_dir), cfg.pruned, cfg.limits),
        config=cfg,
    )


app = build_app()
