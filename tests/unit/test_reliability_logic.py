"""The pure parts of service.reliability: how answers are counted and summarised."""

from __future__ import annotations

from service.reliability import Answer, overload_factor, summarise


def _a(status: int, latency_s: float = 0.01, variant: str = "pruned", reason: str = "weight",
       retry_after: bool = False) -> Answer:
    return Answer(0.0, latency_s, status, variant, reason, retry_after)


def test_summary_separates_answered_shed_and_failed():
    answers = ([_a(200, 0.001 * i) for i in range(1, 101)] + [_a(200, reason="fallback", variant="dense")]
               + [_a(429, retry_after=True), _a(503, retry_after=False)] + [_a(0), _a(500), _a(400)])
    s = summarise(answers, offered_rps=10, duration_s=10)
    assert (s.sent, s.ok, s.shed, s.failed) == (106, 101, 2, 3)
    assert s.shed_without_retry_after == 1
    assert s.by_status == {"0": 1, "200": 101, "400": 1, "429": 1, "500": 1, "503": 1}
    assert s.by_route == {"dense/fallback": 1, "pruned/weight": 100}  # answered requests only
    assert s.failure_ratio == 3 / 106
    # nearest rank over the 101 answered: 1..100 ms and one more at 10 ms
    assert s.ok_p50_ms == 50.0 and s.ok_p99_ms == 99.0


def test_summary_of_nothing_answered_has_no_percentiles():
    s = summarise([_a(503, retry_after=True)] * 3, offered_rps=1, duration_s=3)
    assert (s.ok, s.shed, s.ok_p50_ms, s.ok_p99_ms, s.failure_ratio) == (0, 3, None, None, 0.0)


def test_overload_offers_at_least_3x_x_slo_or_twice_what_was_answered():
    assert overload_factor(64.0) == 3.0
    assert overload_factor(64.0, answered_rps=80.0) == 3.0  # 2 x 80 = 160 < 3 x 64
    assert overload_factor(64.0, answered_rps=166.0) == 2 * 166.0 / 64
    assert overload_factor(64.0, answered_rps=166.0, overload_rps=512.0) == 8.0
    assert overload_factor(64.0, overload_rps=100.0) == 3.0


def test_a_run_with_no_scenario_is_a_fail_not_a_pass():
    from service.reliability import verdict

    assert verdict({}) is False
    assert verdict({"soak": {"passed": True}}) is True
    assert verdict({"soak": {"passed": True}, "overload": {"passed": False}}) is False
    assert verdict({"overload": {}}) is False  # a scenario that never wrote its verdict
