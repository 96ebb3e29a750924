"""Real Prometheus (Debian's binary, deploy/prometheus.yml retargeted) scraping the session's Ray.

N requests per variant, forced with X-Variant, with every answer shadowed to the other variant.
Checked by PromQL over the HTTP API: the scraped request and latency-histogram counts equal what
was sent; every query of the Grafana dashboard answers for both variants with finite numbers
(p99 from histogram_quantile included); the price gauge reads back as configured; the report's
live shadow-agreement query finds the samples. Ray exports with a delay (metrics report interval,
1 s in this session), so every wait polls against a deadline; nothing asserts a timing.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from service.cost.prometheus import PrometheusServer
from service.cost.report import DEFAULT_SHADOW_METRIC, query_shadow_agreement
from tests.integration.conftest import METRICS_REPORT_INTERVAL_MS, PRICES_USD_PER_HOUR

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "twinserve-dashboard.json"
N = 6  # requests per variant, sent in two halves so rate() sees an increase even on fresh series
VARIANTS = ("dense", "pruned")
WINDOW = "1m"  # stands in for Grafana's $__rate_interval
# Unchanged for longer than two export intervals plus a scrape: every earlier increment is in.
QUIET_S = 2 * METRICS_REPORT_INTERVAL_MS / 1000 + 1.5
DEADLINE_S = 90
WARM_UP = 8  # shadowed requests per variant before the counters are read (see `traffic`)

COUNTERS = {
    "requests": 'sum by (variant) (ray_twinserve_requests_total{reason="override",status="ok"})',
    "latency_count": 'sum by (variant) (ray_twinserve_request_latency_seconds_count{reason="override"})',
    "shadow_ok": 'sum by (variant) (ray_twinserve_shadow_requests_total{status="ok"})',
}


def _read(prom: PrometheusServer) -> dict[str, dict[str, float]]:
    return {k: {v: prom.query(q).get(v, 0.0) for v in VARIANTS} for k, q in COUNTERS.items()}


def _settled(prom: PrometheusServer) -> dict[str, dict[str, float]]:
    """The counters once they have not moved for QUIET_S."""
    deadline = time.monotonic() + DEADLINE_S
    last, since = None, time.monotonic()
    while True:
        now_values = _read(prom)
        now = time.monotonic()
        if now_values != last:
            last, since = now_values, now
        elif now - since >= QUIET_S:
            return now_values
        assert now < deadline, f"counters never settled: {now_values}"
        time.sleep(0.25)


def _wait_at_least(prom: PrometheusServer, want: dict[str, dict[str, float]]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = _read(prom)
        if all(got[k][v] >= want[k][v] for k in want for v in VARIANTS):
            return
        assert time.monotonic() < deadline, f"Prometheus did not see the requests: want {want}, got {got}"
        time.sleep(0.25)


CLIENT_LATENCY_S: dict[str, list[float]] = {v: [] for v in VARIANTS}  # what _send saw, per variant


def _texts(variant: str, i: int) -> list[str]:
    return [f"metrics test {variant} {i}", "a second text"]


def _send(serve_app, n: int) -> None:
    for i in range(n):
        for variant in VARIANTS:
            t0 = time.perf_counter()
            r = serve_app.http.post("/v1/embeddings", headers={"X-Variant": variant},
                                    json={"input": _texts(variant, i)})
            CLIENT_LATENCY_S[variant].append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.headers["x-variant"] == variant, r.text


@pytest.fixture(scope="module")
def prometheus(serve_app, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("prometheus")
    with PrometheusServer.start([f"127.0.0.1:{serve_app.metrics_port}"], data_dir, scrape_interval_s=1.0) as prom:
        prom.wait_for_target()
        yield prom
    assert prom.proc.poll() is not None  # stopped


@pytest.fixture(scope="module")
def traffic(serve_app, prometheus):
    """Send N per variant (every answer shadowed); return the counters before and after."""
    before_routing = serve_app.routing()["routing"]
    r = serve_app.http.put("/admin/routing", headers=serve_app.admin, json={"shadow_fraction": 1.0})
    r.raise_for_status()
    try:
        # Ray makes a labelled counter series at its first increment, so a series first seen during the
        # measured traffic starts at its value then and increase() misses that step. A few shadowed
        # requests first, on every ingress replica alike, so the measured ones move series Prometheus
        # has already scraped (the full suite once read 0 live shadow samples for pruned without this).
        for i in range(WARM_UP):
            for variant in VARIANTS:
                serve_app.http.post("/v1/embeddings", headers={"X-Variant": variant},
                                    json={"input": f"warm-up {i}"}).raise_for_status()
        before = _settled(prometheus)
        half = N // 2
        _send(serve_app, half)
        _wait_at_least(prometheus, {k: {v: before[k][v] + half for v in VARIANTS} for k in COUNTERS})
        _send(serve_app, N - half)
        _wait_at_least(prometheus, {k: {v: before[k][v] + N for v in VARIANTS} for k in COUNTERS})
        after = _settled(prometheus)
    finally:
        serve_app.http.put("/admin/routing", headers=serve_app.admin,
                           json={"shadow_fraction": before_routing["shadow_fraction"]}).raise_for_status()
    return before, after


def test_scraped_counts_equal_requests_sent(traffic):
    before, after = traffic
    for variant in VARIANTS:
        assert after["requests"][variant] - before["requests"][variant] == N
        assert after["latency_count"][variant] - before["latency_count"][variant] == N
        # every answer was shadowed to the other variant: N shadows each way, all completed
        assert after["shadow_ok"][variant] - before["shadow_ok"][variant] == N


def test_p99_from_the_histogram_agrees_with_what_the_client_saw(traffic, prometheus):
    """The server's latency (parsed body to response) is part of the client's (which adds HTTP), so the
    histogram's p99 lies at or below the top of the bucket that holds the client's slowest request.
    A unit slip (ms for s) or a histogram fed the wrong time fails it. (Not the mean: Ray exports a
    histogram's _sum from bucket midpoints.)"""
    from service.serving.metrics import LATENCY_BUCKETS_S

    q = ("histogram_quantile(0.99, sum by (variant, le) "
         f"(rate(ray_twinserve_request_latency_seconds_bucket{{reason=\"override\"}}[{WINDOW}])))")
    p99 = prometheus.query(q)
    for variant in VARIANTS:
        client = CLIENT_LATENCY_S[variant]
        top = next((b for b in LATENCY_BUCKETS_S if b >= max(client)), math.inf)
        assert 0 < p99[variant] <= top, (variant, p99, max(client), top)


def _dashboard_targets() -> list[tuple[str, str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["legendFormat"], t["expr"]) for p in doc["panels"] for t in p["targets"]]


def test_dashboard_names_only_metrics_ray_exports(serve_app, traffic):
    """Every series name the dashboard and the report use is on Ray's metrics port, as named."""
    import httpx

    exported = set(re.findall(r"^(ray_twinserve_\w+)", httpx.get(
        f"http://127.0.0.1:{serve_app.metrics_port}/metrics", timeout=30).text, flags=re.M))
    used = {m for _, _, e in _dashboard_targets() for m in re.findall(r"\bray_\w+", e)}
    used |= {f"{DEFAULT_SHADOW_METRIC}_cosine_sum_total", f"{DEFAULT_SHADOW_METRIC}_texts_total"}
    assert used <= exported, f"not exported by Ray: {sorted(used - exported)}; exported: {sorted(exported)}"


def test_every_dashboard_query_answers_for_both_variants(traffic, prometheus):
    targets = _dashboard_targets()
    assert len(targets) >= 10
    for title, legend, expr in targets:
        result = prometheus.query_raw(expr.replace("$__rate_interval", WINDOW))
        assert result, f"{title} ({legend}): no data for `{expr}`"
        values = {item["metric"].get("variant"): float(item["value"][1]) for item in result}
        if "{{variant}}" in legend:
            for variant in VARIANTS:
                got = [float(i["value"][1]) for i in result if i["metric"].get("variant") == variant]
                assert got and all(math.isfinite(x) for x in got), f"{title} ({legend}) {variant}: {values}"
        else:
            assert any(math.isfinite(float(i["value"][1])) for i in result), f"{title} ({legend}): {values}"
        if "error ratio" in title:
            assert all(0.0 <= x <= 1.0 for x in values.values()), values
        if "$ per 1M" in title:
            assert all(x > 0 for x in values.values()), values


def test_price_gauge_reads_back_and_live_cost_follows_from_it(traffic, prometheus):
    assert prometheus.query("sum by (variant) (ray_twinserve_instance_price_usd_per_hour)") == \
        pytest.approx(PRICES_USD_PER_HOUR)
    # the dashboard's live $/1M is price x 10^6 / (3600 x ok req/s): check the arithmetic in PromQL
    at = time.time() - 1.0  # both queries at one instant: a rate moves as its window slides
    rate = prometheus.query(f'sum by (variant) (rate(ray_twinserve_requests_total{{status="ok"}}[{WINDOW}]))',
                            at=at)
    (expr,) = [e for t, legend, e in _dashboard_targets() if "$ per 1M" in t and legend == "{{variant}}"]
    per_million = prometheus.query(expr.replace("$__rate_interval", WINDOW), at=at)
    for variant in VARIANTS:
        assert per_million[variant] == pytest.approx(PRICES_USD_PER_HOUR[variant] * 1e6 / (3600 * rate[variant]),
                                                     rel=1e-6)


def test_report_reads_live_shadow_agreement_as_the_artifacts_compute_it(traffic, prometheus, serve_app):
    """The live mean shadow cosine per shadow variant lies among the cosines the artifacts' own graphs
    give for the texts that were shadowed (dense.onnx stands in for torch: they agree to ~1e-6)."""
    import numpy as np

    from service.model.backends import OnnxBackend, cpu_variant_backend

    dense, cpu = OnnxBackend(serve_app.artifact_dir, variant="dense", threads=1), \
        cpu_variant_backend(serve_app.artifact_dir, threads=1)
    dense.load()
    cpu.load()
    live = query_shadow_agreement(prometheus.url, window="10m")
    for shadow in VARIANTS:
        asked = "dense" if shadow == "pruned" else "pruned"  # every request to one was shadowed to the other
        texts = [t for i in range(N) for t in _texts(asked, i)]
        cos = np.sum(dense.embed(texts) * cpu.embed(texts), axis=1)
        assert live[shadow].samples > 0
        assert cos.min() - 1e-3 <= live[shadow].mean_cosine <= cos.max() + 1e-3, (shadow, live[shadow], cos)
