"""Every twinserve serving metric, declared once. Labels: ``variant``, ``reason``, ``status``, and
``key`` (an API key's short id, never the key) on the per-key counter.

Ray exports them on each node's metrics port with a ``ray_`` prefix and adds its own
``deployment``, ``replica`` and ``application`` labels, e.g. ``ray_twinserve_requests_total``.
Created lazily, once per process, because Ray metrics need a connected Ray worker.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache

__all__ = ["LATENCY_BUCKETS_S", "ServingMetrics", "keep_price_gauge", "serving_metrics"]

# Resolve 1-100 ms finely (where both variants live), then coarser out to 10 s.
LATENCY_BUCKETS_S = [
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.06, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
]
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
COSINE_BUCKETS = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0001]


class ServingMetrics:
    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = Counter(
            "twinserve_requests_total",
            description="Inference requests answered by the router, by variant, route reason and status.",
            tag_keys=("variant", "reason", "status"))
        self.e2e_latency = Histogram(
            "twinserve_request_latency_seconds",
            description="Router time per inference request, from parsed body to response, seconds.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("variant", "reason"))
        self.model_latency = Histogram(
            "twinserve_model_latency_seconds",
            description="Padding + model time per batch (the CPU variant in the ingress replica, the dense one "
                        "in its own replica), seconds.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("variant",))
        self.batch_size = Histogram(
            "twinserve_batch_size",
            description="Texts per model call.", boundaries=BATCH_SIZE_BUCKETS, tag_keys=("variant",))
        self.shadow_cosine = Histogram(
            "twinserve_shadow_cosine",
            description="Cosine between the answering and the shadow variant's embedding of the same text; "
                        "variant is the shadow. For its distribution (quantiles); the mean is in the counters.",
            boundaries=COSINE_BUCKETS, tag_keys=("variant",))
        # The exact mean agreement: Ray exports a histogram's _sum from bucket midpoints (its
        # OpenTelemetry recorder), so shadow_cosine_sum / shadow_cosine_count was off by up to half
        # a bucket (0.15 in [0.5, 0.8)). Two counters carry the exact sum and count.
        self.shadow_cosine_sum = Counter(
            "twinserve_shadow_cosine_sum_total",
            description="Sum of the cosines between the answering and the shadow variant's embeddings, one per "
                        "text; divided by twinserve_shadow_texts_total it is the exact mean agreement.",
            tag_keys=("variant",))
        self.shadow_texts = Counter(
            "twinserve_shadow_texts_total", description="Texts compared by shadow requests, per shadow variant.",
            tag_keys=("variant",))
        self.shadow_latency = Histogram(
            "twinserve_shadow_latency_seconds",
            description="Latency of shadow requests, seconds; variant is the shadow.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("variant",))
        self.shadow_requests = Counter(
            "twinserve_shadow_requests_total",
            description="Shadow requests by shadow variant and status (ok, shed, unavailable, skipped, error).",
            tag_keys=("variant", "status"))
        self.key_requests = Counter(
            "twinserve_api_key_requests_total",
            description="Inference requests per API key id (first 8 hex digits of the key's sha256) and status; "
                        "only when API keys are on.",
            tag_keys=("key", "status"))
        self.variant_up = Gauge(
            "twinserve_variant_up",
            description="1 while a variant is up for routing, 0 while it is marked down (missed probes or "
                        "errors over the window).",
            tag_keys=("variant",))
        self.price = Gauge(
            "twinserve_instance_price_usd_per_hour",
            description="Configured price of the instance a variant replica runs on, USD per hour.",
            tag_keys=("variant",))


@lru_cache(maxsize=1)
def serving_metrics() -> ServingMetrics:
    return ServingMetrics()


def keep_price_gauge(variant: str, price_usd_per_hour: float | None, every_s: float = 1.0) -> None:
    """Export the variant's instance price from a daemon thread, re-set every ``every_s``.

    Ray's metrics agent drops a gauge series that has not been recorded for two report intervals, so
    a price set once at start vanished from long-lived replicas.
    """
    if price_usd_per_hour is None:
        return
    gauge, tags = serving_metrics().price, {"variant": variant}

    def loop() -> None:
        while True:
            gauge.set(price_usd_per_hour, tags=tags)
            time.sleep(every_s)

    threading.Thread(target=loop, name=f"twinserve-{variant}-price-gauge", daemon=True).start()
