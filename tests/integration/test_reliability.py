"""Reliability scenarios, CI-sized, on the session's real Ray Serve instance (tiny artifacts).

The same functions run at full length on the default artifacts in ``make reliability``; the
figures (p99 under overload, recovery time, RSS growth over a soak) are recorded in
BENCHMARKS.md, not asserted here: this machine's timing is not something a test can promise.
"""

from __future__ import annotations

import pytest

from service import reliability as rel
from tests.integration.conftest import INITIAL_WEIGHTS


@pytest.mark.parametrize("variant", ["pruned", "dense"])
def test_killed_replica_costs_no_client_request_and_is_replaced(serve_app, variant):
    result = rel.replica_failure(serve_app.url, variant, weights=INITIAL_WEIGHTS, rate_rps=20, duration_s=12,
                                 kill_at_s=3, split_requests=300,
                                 metrics_url=f"http://127.0.0.1:{serve_app.metrics_port}/metrics")
    print(result.model_dump_json(indent=1))
    assert result.passed, result.reasons
    assert result.load.sent == 240
    if variant == "dense":  # the CPU variant lives in every ingress replica: losing one needs no fallback
        # Owed once the ingress could have marked dense down; a faster replacement leaves it no reason.
        assert result.fallbacks_in_answers > 0 or result.replaced_after_s <= result.detect_s


def test_overload_is_shed_with_retry_after_and_the_service_recovers(tight_app):
    """The tight application's pruned variant takes one request at a time (about 2 req/s); 20 req/s
    pinned to it must be shed, not queued: 429 with Retry-After, no other failure, no replica lost.
    The SLO is set loose: this checks behaviour; the p99 figure is measured by `make reliability`."""
    result = rel.overload(tight_app, x_slo_rps=2.0, slo_p99_ms=30_000, factor=10, duration_s=5,
                          recovery_limit_s=60, window_s=1.0, app="tight")
    print(result.model_dump_json(indent=1))
    assert result.passed, result.reasons
    assert result.burst.shed > 0 and result.burst.ok > 0 and set(result.burst.by_status) <= {"200", "429"}
    assert result.replicas_after == result.replicas_before and all(result.replicas_before.values())
