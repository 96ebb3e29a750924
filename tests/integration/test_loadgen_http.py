"""The open-loop generator and the capacity search against a small local HTTP server (the
stand-in: real HTTP, fake embeddings, each variant one request at a time for a fixed service
time, so it saturates like a single-worker server). No Ray, no model.

Timing is never asserted: only counts, schedules, statuses, and the limits that follow from the
server's own capacity (a server that answers one request per 20 ms cannot answer 95% of 80 req/s).
"""

from __future__ import annotations

import pytest

from service.capacity_search import SearchPlan, SloCriteria, find_capacity
from service.loadgen import SHAPES, embedding_bodies, open_loop
from tests.integration.standin_server import StandinServer


@pytest.fixture(scope="module")
def standin():
    # pruned: 20 ms per request, one at a time, so at most 50 answers per second.
    with StandinServer({"pruned": 0.020, "dense": 5.0}) as server:
        yield server


def test_every_scheduled_request_gets_one_answer_on_schedule(standin):
    url = f"{standin.url}/v1/embeddings"
    bodies = embedding_bodies(SHAPES["8"], 40)
    run = open_loop(url, 20.0, 2.0, bodies, headers={"X-Variant": "pruned"}, texts=SHAPES["8"].counts(40))
    assert len(run.answers) == 40
    assert [a.scheduled_s for a in run.answers] == pytest.approx([i / 20.0 for i in range(40)])
    assert all(a.status == 200 and a.variant == "pruned" and a.reason == "override" for a in run.answers)
    assert all(a.texts == 8 for a in run.answers)
    assert all(a.latency_s >= a.lag_s >= 0 for a in run.answers)  # timed from the schedule, not the send
    assert run.cpu_s > 0 and run.wall_s > 0 and run.event_loop in ("uvloop", "asyncio")


def test_max_requests_bounds_the_count_and_errors_are_recorded(standin):
    url = f"{standin.url}/v1/embeddings"
    bad = [b'{"input": []}'] * 100  # the server answers 400
    run = open_loop(url, 50.0, 2.0, bad, max_requests=7)
    assert [a.status for a in run.answers] == [400] * 7


def test_a_request_past_its_timeout_counts_as_no_answer(standin):
    url = f"{standin.url}/v1/embeddings"
    run = open_loop(url, 4.0, 1.0, embedding_bodies(SHAPES["1"], 4), headers={"X-Variant": "dense"}, timeout_s=0.3)
    assert len(run.answers) == 4 and all(a.status == 0 for a in run.answers)  # dense takes 5 s


def test_non_loopback_targets_are_refused_before_anything_is_sent():
    with pytest.raises(ValueError, match="loopback"):
        open_loop("http://192.0.2.1:80/v1/embeddings", 1.0, 1.0, [b"{}"])


def test_capacity_search_is_bounded_by_what_the_server_can_answer(standin):
    plan = SearchPlan(start_rps=10, growth=2, max_rps=200, resolution=0.1, min_requests=60, min_duration_s=1.5,
                      min_window_s=1.0, warmup_s=0.3, timeout_s=3, pause_s=0.2, max_total_s=60)
    slo = SloCriteria(slo_p99_ms=2000)  # loose: the limit under test is the answered rate, not this machine's p99
    result = find_capacity(f"{standin.url}/v1/embeddings", shape=SHAPES["1"], plan=plan, criteria=slo,
                           headers={"X-Variant": "pruned"})
    print(result.model_dump_json(indent=1, exclude={"probes"}))
    assert result.probes
    assert result.best_single_pass_rps is not None
    assert result.best_single_pass_rps <= 50 / 0.95 + 1e-9  # 50 answers/s at most: 95% of at most 52.6 offered
    for p in result.probes:
        assert abs(p.sent - p.offered_rps * p.window_s) <= 1  # the window holds its share of the schedule
        assert p.answered_rps <= 50 * 1.1  # one request per 20 ms, whatever the generator thinks
        if p.offered_rps > 55:
            assert not p.passed and any("answered" in r for r in p.reasons)
    assert result.status in ("confirmed", "unconfirmed", "budget")


def test_capacity_verb_writes_typed_json_and_a_plot(standin, tmp_path):
    from service.capacity_search import CapacityRun
    from service.cli import main

    out = tmp_path / "capacity.json"
    rc = main(["capacity", "--url", standin.url, "--variant", "pruned", "--shapes", "1", "8", "--start-rps", "8",
               "--min-requests", "20", "--min-duration-s", "1", "--min-window-s", "1", "--warmup-s", "0.2",
               "--timeout-s", "3", "--max-total-s", "12", "--slo-p99-ms", "2000", "--out", str(out)])
    assert rc == 0
    run = CapacityRun.model_validate_json(out.read_text())
    results = run.searches
    assert set(results) == {"1", "8"} and run.headers == {"X-Variant": "pruned"} and run.cpu_count >= 1
    assert all(p.texts_per_request_mean == 8 for p in results["8"].probes)
    assert out.with_suffix(".png").stat().st_size > 0


def test_capacity_verb_refuses_a_remote_url(tmp_path, capsys):
    from service.cli import main

    rc = main(["capacity", "--url", "http://198.51.100.7:8000", "--out", str(tmp_path / "c.json")])
    assert rc == 2 and "loopback" in capsys.readouterr().err
