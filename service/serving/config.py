"""Serving configuration: validated pydantic models, units in names, unknown keys rejected.

``ServingConfig`` is what the application builder takes (``args`` in ``deploy/serve_config.yaml``);
``RoutingConfig`` is the Router's Ray Serve ``user_config``, the part that changes at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    confloat,
    model_validator,
)

from service._schema import VARIANTS

__all__ = [
    "VARIANTS",
    "BatchingConfig",
    "CpuVariantConfig",
    "LimitsConfig",
    "ReplicaConfig",
    "RouterConfig",
    "RoutingConfig",
    "ServingConfig",
    "VariantConfig",
    "Weights",
]

Fraction = confloat(ge=0.0, le=1.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weights(_Strict):
    """Share of routed traffic per variant; the two must sum to 1."""

    dense: Fraction = Field(0.5, description="share of routed requests sent to the dense variant, in [0, 1]")
    pruned: Fraction = Field(0.5, description="share of routed requests sent to the pruned variant, in [0, 1]")

    @model_validator(mode="after")
    def _sums_to_one(self) -> Weights:
        if abs(self.dense + self.pruned - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1.0, got dense={self.dense} pruned={self.pruned}")
        return self


class RoutingConfig(_Strict):
    """The Router's ``user_config``: changed at run time by ``serve deploy`` or ``PUT /admin/routing``."""

    weights: Weights = Field(default_factory=Weights, description="share of routed traffic per variant")
    shadow_fraction: Fraction = Field(
        0.0, description="fraction of answered requests also sent, in the background, to the other variant")


class BatchingConfig(_Strict):
    """How one variant's texts are batched into model calls, and what its instance costs."""

    max_batch_size: PositiveInt = Field(32, description="most texts embedded in one model call")
    batch_wait_timeout_s: confloat(ge=0.0, le=1.0) = Field(
        0.005, description="how long a batch waits for more requests after its first one, seconds")
    price_usd_per_hour: NonNegativeFloat | None = Field(
        None, description="USD per hour of what one replica occupies (its instance's price times the replica's "
                          "share of it: two ingress replicas on one instance export half its price each), exported "
                          "as a gauge that PromQL sums over replicas for live dollars per million requests")


class ReplicaConfig(_Strict):
    """Replicas, placement and autoscaling of one Serve deployment."""

    num_replicas: PositiveInt = Field(1, description="replicas of this deployment (the autoscaling floor)")
    num_cpus: PositiveFloat = Field(1.0, description="CPUs reserved per replica; the model runtime's intra-op threads")
    resources: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="custom Ray resources per replica, e.g. {dense_pool: 0.01}: replicas go only to nodes "
                    "that advertise them (the Helm chart's worker groups do); empty: anywhere")
    max_replicas: PositiveInt | None = Field(
        None, description="when set, Serve autoscales this deployment between num_replicas and max_replicas, "
                          "aiming at target_ongoing_requests per replica; unset: a fixed num_replicas")
    target_ongoing_requests: PositiveFloat = Field(
        16.0, description="requests in flight per replica that autoscaling aims at (with max_replicas only)")

    @model_validator(mode="after")
    def _replica_range(self):
        if self.max_replicas is not None and self.max_replicas < self.num_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below num_replicas ({self.num_replicas}): "
                             "num_replicas is the autoscaling floor; raise max_replicas or lower num_replicas")
        return self


class VariantConfig(BatchingConfig, ReplicaConfig):
    """The dense deployment: resources, batching and backpressure (reached by handle from the ingress)."""

    num_cpus: PositiveFloat = Field(1.0, description="CPUs reserved per replica; torch threads on CPU")
    num_gpus: NonNegativeFloat = Field(0.0, description="GPUs per replica (1 on a GPU node)")
    max_ongoing_requests: PositiveInt = Field(32, description="requests in flight per replica")
    max_queued_requests: PositiveInt = Field(
        64, description="requests the ingress may queue for this deployment before it sheds load")


class CpuVariantConfig(BatchingConfig):
    """The CPU variant, served inside each ingress replica: batching and its own queue.

    Its replicas, CPUs and placement are the ingress's (``router``): one ingress replica is one
    CPU-variant replica, with ``router.num_cpus`` runtime threads.
    """

    max_queued_requests: PositiveInt = Field(
        64, description="requests waiting for a batch in one ingress replica; past it the variant sheds "
                        "(routed requests fall back to dense, pinned ones get 429)")
    max_queue_delay_s: confloat(gt=0.0, le=10.0) | None = Field(
        0.1, description="shed a request whose texts would not be embedded within this (what is left of the "
                         "running batch, then the texts ahead of it and its own, at the measured cost per text), "
                         "once the oldest queued request has waited half of it: it would miss the SLO anyway, so shedding starts where p99 would leave it, whatever "
                         "the texts per request; the default is the capacity search's SLO, 100 ms; null: only "
                         "max_queued_requests")
    graph: Literal["manifest", "pruned.onnx"] = Field(
        "manifest", description="what the CPU variant runs: the manifest's cpu_variant (the runtime and precision "
                                "the job proved fastest within the fidelity floor), or pruned.onnx on ONNX Runtime "
                                "(what any ONNX client runs: the peer benchmark serves it so that both servers run "
                                "the same graph)")


class RouterConfig(ReplicaConfig):
    """The ingress deployment: HTTP, routing, and the CPU variant in-process."""

    num_replicas: PositiveInt = Field(
        2, description="ingress replicas, each serving the CPU variant; two, so that losing one process "
                       "costs no request (the edge retries on the other)")
    num_cpus: PositiveFloat = Field(
        1.0, description="CPUs reserved per ingress replica; the CPU variant's runtime threads (at least 1)")
    max_ongoing_requests: PositiveInt = Field(128, description="HTTP requests in flight per ingress replica")
    max_queued_requests: PositiveInt = Field(
        256, description="HTTP requests queued at the proxy before it answers 503 with Retry-After")
    retry_after_s: PositiveInt = Field(1, description="Retry-After sent with 429 and 503 answers, seconds")
    variant_timeout_s: PositiveFloat = Field(
        30.0, description="longest wait for a variant's answer, seconds; past it the call is cancelled")
    max_shadow_in_flight: PositiveInt = Field(
        16, description="shadow requests in flight per ingress replica; more are skipped, never queued")
    health_period_s: PositiveFloat = Field(
        0.5, description="how often the ingress probes the dense replicas out of band (not through their "
                         "request queue), seconds")
    health_timeout_s: PositiveFloat = Field(1.0, description="a probe unanswered this long is a miss, seconds")
    health_misses_to_down: PositiveInt = Field(
        2, description="consecutive missed probes that mark the dense variant down: new routed requests then go "
                       "to the CPU variant; requests already sent finish or time out")
    health_successes_to_up: PositiveInt = Field(
        2, description="consecutive answered probes that mark a down variant up again")
    error_window_s: PositiveFloat = Field(
        10.0, description="window over which each variant's inference error rate is measured, seconds")
    max_error_rate: confloat(gt=0.0, le=1.0) = Field(
        0.5, description="a variant whose errors over the window reach this share (of at least "
                         "error_min_requests calls) is treated as down for routing until the rate falls")
    error_min_requests: PositiveInt = Field(
        5, description="calls in the window before its error rate can mark a variant down")


class LimitsConfig(_Strict):
    """What a request may carry; everything over these answers 4xx with a message."""

    max_inputs_per_request: PositiveInt = Field(32, description="texts in one request")
    max_tokens_per_input: PositiveInt | None = Field(
        None, description="tokens per text, special tokens included; default: the model's limit (manifest)")
    over_token_limit: Literal["reject", "truncate"] = Field(
        "reject", description="reject: answer 400 naming the input; truncate: embed the first tokens only")
    max_chars_per_input: PositiveInt = Field(
        8192, description="characters per text, checked before tokenising (a 256-token English text is ~1,500): "
                          "over it, reject answers 400 and truncate keeps the first max_chars_per_input")
    max_body_bytes: PositiveInt = Field(1 << 20, description="largest request body, bytes (413 above it)")


# The pruned variant batches without a window: a lone request does not wait for company (the 5 ms
# window cost 6-7 ms at low load), and under load a batch forms from what queued while the previous
# one ran. Measured, one run each: p50 8.8 vs 14.1 ms at 10 req/s, 7.2 vs 14.5 ms at 96 req/s,
# similar p99. The price is throughput at saturation (5% less answered at 332 req/s, 26% less at 415
# in another run): set 0.005 where traffic lives near saturation (BENCHMARKS.md).
PRUNED_BATCH_WAIT_S = 0.0


class ServingConfig(_Strict):
    """Arguments of the application builder (``service.serving.app:build_app``)."""

    artifact_dir: Path = Field(
        default_factory=lambda: _default_artifact_dir(),
        description="artifact directory published by `twinserve prune` (manifest.json inside)")
    dense: VariantConfig = Field(default_factory=VariantConfig)
    pruned: CpuVariantConfig = Field(
        default_factory=CpuVariantConfig,
        description=f"the CPU variant, in the ingress replicas; batch_wait_timeout_s defaults to "
                    f"{PRUNED_BATCH_WAIT_S} here (no window)")
    router: RouterConfig = Field(default_factory=RouterConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig,
        description="initial Router user_config; a `user_config` in the deployment options wins over it")

    @model_validator(mode="before")
    @classmethod
    def _pruned_batch_wait_default(cls, data):
        # One place for the pruned default: an absent `pruned:` section, or one that leaves the
        # batch wait out, gets PRUNED_BATCH_WAIT_S rather than VariantConfig's window.
        if isinstance(data, dict) and isinstance(pruned := data.get("pruned", {}), dict):
            moved = sorted(set(pruned) & (set(ReplicaConfig.model_fields) | {"num_gpus", "max_ongoing_requests"}))
            if moved:
                raise ValueError(
                    f"pruned.{moved[0]}: the CPU variant runs inside the ingress replicas, so its replicas, CPUs "
                    f"and placement are the router's; set router.{moved[0]} instead (or drop it)")
            data = {**data, "pruned": {"batch_wait_timeout_s": PRUNED_BATCH_WAIT_S, **pruned}}
        return data

    @model_validator(mode="after")
    def _batches_hold_a_request(self) -> ServingConfig:
        for name in VARIANTS:
            v: BatchingConfig = getattr(self, name)
            if v.max_batch_size < self.limits.max_inputs_per_request:
                raise ValueError(
                    f"{name}.max_batch_size ({v.max_batch_size}) is smaller than "
                    f"limits.max_inputs_per_request ({self.limits.max_inputs_per_request}): one request "
                    "must fit in one batch; raise the batch size or lower the input limit")
        return self


def _default_artifact_dir() -> Path:
    from service.settings import default_artifact_dir

    return default_artifact_dir()
