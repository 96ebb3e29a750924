"""The edge, a real HAProxy, in front of a backend: pass-through, admission with Retry-After, JSON errors.

The backend here is the load tests' stand-in server (NOT the service; fake embeddings) with a
0.5 s service time for the pruned variant and one request at a time, so "the slot is taken"
lasts far longer than the edge's 50 ms queue wait and the outcome does not depend on timing luck.
The real service behind the edge is exercised by test_serve_cli.py.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from service._platform import free_port, metric_sum
from service.serving.edge import Edge, EdgeConfig, EdgeError, read_access_log
from tests.integration.standin_server import StandinServer

SLOW_S = 0.5


@pytest.fixture(scope="module")
def slow_backend():
    with StandinServer(service_time_s={"pruned": SLOW_S}) as server:
        yield server


def _edge(backend_port: int, metrics_port: int | None = None, access_log=None, **cfg) -> Edge:
    return Edge(EdgeConfig(**cfg), listen_host="127.0.0.1", listen_port=free_port(), backend_port=backend_port,
                metrics_port=metrics_port, access_log=access_log)


def test_requests_and_answers_pass_through_unchanged(slow_backend):
    with _edge(slow_backend.port) as edge:
        r = httpx.post(f"{edge.url}/v1/embeddings", json={"input": ["a", "b"]}, headers={"X-Variant": "dense"})
        assert r.status_code == 200, r.text
        assert (r.headers["x-variant"], r.headers["x-route-reason"]) == ("dense", "override")
        assert len(r.json()["data"]) == 2
        bad = httpx.post(f"{edge.url}/v1/embeddings", json={"input": []})
        assert bad.status_code == 400 and "non-empty" in bad.json()["error"]["message"]


async def _concurrent(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await asyncio.gather(*(http.post("/v1/embeddings", json={"input": f"text {i}"}) for i in range(n)))


def _edge_5xx(metrics_port: int) -> float:
    """Requests the edge answered 5xx, from HAProxy's own Prometheus exporter."""
    return metric_sum(f"http://127.0.0.1:{metrics_port}/metrics", "haproxy_frontend_http_responses_total",
                      proxy="twinserve", code="5xx")


def test_beyond_max_in_flight_requests_wait_then_are_shed_with_json_and_retry_after(slow_backend):
    metrics_port = free_port()
    with _edge(slow_backend.port, metrics_port, max_in_flight=1, queue_timeout_ms=50, retry_after_s=3) as edge:
        assert _edge_5xx(metrics_port) == 0
        answers = asyncio.run(_concurrent(edge.url, 6))
        ok = [r for r in answers if r.status_code == 200]
        shed = [r for r in answers if r.status_code == 503]
        # One slot, held 0.5 s; a 50 ms queue: the first is served, the others cannot all wait it out.
        assert len(ok) >= 1 and len(shed) >= 1 and len(ok) + len(shed) == 6, [r.status_code for r in answers]
        for r in shed:
            assert r.headers["retry-after"] == "3" and r.headers["content-type"] == "application/json"
            err = r.json()["error"]
            assert err["code"] == "overloaded" and "retry after 3 s" in err["message"]
        assert _edge_5xx(metrics_port) == len(shed)  # visible to Prometheus, though Ray never saw them
        # The burst over, the slot is free again.
        assert httpx.post(f"{edge.url}/v1/embeddings", json={"input": "again"}, timeout=30).status_code == 200


def test_the_access_log_times_each_request_at_the_edge_queue_included(slow_backend, tmp_path):
    log = tmp_path / "edge-access.log"
    with _edge(slow_backend.port, access_log=log, max_in_flight=1, queue_timeout_ms=2_000) as edge:
        fast = httpx.post(f"{edge.url}/v1/embeddings", json={"input": "x"}, headers={"X-Variant": "dense"})
        answers = asyncio.run(_concurrent(edge.url, 3))  # pruned: 0.5 s each, one at a time
        assert fast.status_code == 200 and [r.status_code for r in answers] == [200] * 3
        deadline = time.monotonic() + 5  # HAProxy writes the line once the answer is sent
        while len(rows := read_access_log(log)[0]) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    rows, end = read_access_log(log)
    assert end == log.stat().st_size and len(rows) == 4, log.read_text()
    assert [status for status, _, _ in rows] == [200] * 4
    first, *slow = rows
    assert first[1] < SLOW_S * 1e3  # the dense stand-in answers at once
    # One slot: the three slow requests took 0.5, 1.0 and 1.5 s, two of them mostly in the queue.
    totals, queued = sorted(r[1] for r in slow), sorted(r[2] for r in slow)
    assert totals[0] >= SLOW_S * 1e3 and totals[2] >= 3 * SLOW_S * 1e3, rows
    assert queued[2] >= 2 * SLOW_S * 1e3 - 50, rows
    assert read_access_log(log, end) == ([], end)  # reading on from the end finds nothing new


def test_a_backend_that_is_not_listening_answers_503_json_not_a_hang():
    with _edge(free_port()) as edge:  # nothing listens there
        r = httpx.post(f"{edge.url}/v1/embeddings", json={"input": "x"}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"


def test_a_port_in_use_is_a_clear_error_and_leaves_nothing_running(slow_backend):
    edge = Edge(EdgeConfig(), listen_host="127.0.0.1", listen_port=slow_backend.port, backend_port=free_port())
    with pytest.raises(EdgeError, match="cannot listen on"), edge:
        pass

