"""Reliability scenarios, CI-sized, on the session's real Ray Serve instance (tiny artifacts).

The same functions run at full length on the default artifacts in ``make reliability``; the
figures (p99 under overload, recovery time, RSS growth over a soak) are recorded in
BENCHMARKS.md, not asserted here: this machine's timing is not something a test can promise.
"""

from __future__ import annotations

import pytest

from service import reliability as rel
from tests.integration.conftest import INITIAL_WEIGHTS


@pytest.mark.parametrize("deployment", ["Pruned", "Dense"])
def test_killed_replica_falls_back_without_client_failures_and_is_replaced(serve_app, deployment):
    result = rel.replica_failure(serve_app.url, deployment, weights=INITIAL_WEIGHTS, rate_rps=20, duration_s=12,
                                 kill_at_s=3, split_requests=300,
                                 metrics_url=f"http://127.0.0.1:{serve_app.metrics_port}/metrics")
    print(result.model_dump_json(indent=1))
    assert result.passed, result.reasons
    assert result.load.sent == 240 and result.fallbacks_in_answers > 0
