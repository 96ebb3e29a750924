"""The capacity search as a pure function over fake probes: ramp, bisect, confirm, noise, budget.

No server and no clock: a fake probe decides pass/fail from the offered rate (and, for noise,
from how often it has seen that rate) and reports a fixed wall time.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.capacity_search import (
    LatencyPercentiles,
    ProbeResult,
    SearchPlan,
    SearchResult,
    SloCriteria,
    probe_result,
    probe_verdict,
    search_capacity,
)
from service.loadgen import Answer

SLO = SloCriteria()  # p99 <= 100 ms, errors < 0.1%, answered >= 95% of offered
PLAN = SearchPlan(start_rps=8, growth=2, max_rps=4096, resolution=0.05, max_total_s=10_000)


def _probe_result(rate: float, phase: str, passed: bool, wall_s: float = 10.0) -> ProbeResult:
    p99 = 50.0 if passed else 500.0
    return ProbeResult(
        phase=phase, offered_rps=rate, window_s=10, warmup_s=2, sent=int(rate * 10), ok=int(rate * 10), errors=0,
        error_ratio=0.0, answered_rps=rate, achieved_ratio=1.0, latency=None, status_counts={"200": int(rate * 10)},
        texts_per_request_mean=1.0, send_lag_p99_ms=0.1, generator_cpu_cores=0.1, wall_s=wall_s, passed=passed,
        reasons=[] if passed else [f"p99 {p99} ms > SLO 100 ms"])


class FakeServer:
    """Passes every probe at or below ``capacity`` req/s; ``flaky`` rates fail their n-th visit."""

    def __init__(self, capacity: float, flaky: dict[float, set[int]] | None = None, wall_s: float = 10.0):
        self.capacity, self.flaky, self.wall_s = capacity, flaky or {}, wall_s
        self.calls: list[tuple[float, str]] = []

    def __call__(self, rate: float, phase: str) -> ProbeResult:
        visit = sum(1 for r, _ in self.calls if r == rate)
        self.calls.append((rate, phase))
        passed = rate <= self.capacity and visit not in self.flaky.get(rate, set())
        return _probe_result(rate, phase, passed, self.wall_s)


def test_ramp_then_bisect_finds_capacity_within_resolution_and_confirms_it():
    server = FakeServer(capacity=300)
    r = search_capacity(server, PLAN, SLO)
    assert r.status == "confirmed"
    assert 300 / 1.05 <= r.x_slo_rps <= 300
    ramp = [rate for rate, phase in server.calls if phase == "ramp"]
    assert ramp == [8, 16, 32, 64, 128, 256, 512]  # doubling until the first failure
    confirms = [(rate, phase) for rate, phase in server.calls if phase == "confirm"]
    assert confirms[0] == (512, "confirm")  # the ramp's failure is repeated before the bisection ...
    assert confirms[1] == (r.x_slo_rps, "confirm")  # ... the winner is repeated ...
    assert len(confirms) == 3 and confirms[2][0] > 300  # ... and so is the failure just above it
    assert not r.non_monotone and r.noisy_rps == [] and not r.lower_bound
    assert r.elapsed_s == 10.0 * len(server.calls)
    assert r.max_answered_rps == 512  # the fake answers everything offered


def test_first_probe_failing_ramps_down():
    server = FakeServer(capacity=2.5)
    r = search_capacity(server, PLAN, SLO)
    assert [rate for rate, phase in server.calls if phase == "ramp"] == [8, 4, 2]
    assert r.status == "confirmed" and 2.5 / 1.05 <= r.x_slo_rps <= 2.5


def test_nothing_passes_down_to_min_rps():
    server = FakeServer(capacity=0.1)
    r = search_capacity(server, PLAN.model_copy(update={"min_rps": 1.0}), SLO)
    assert r.status == "none" and r.x_slo_rps is None and r.best_single_pass_rps is None
    assert [rate for rate, _ in server.calls] == [8, 4, 2, 1]


def test_every_rate_passing_up_to_max_rps_is_a_lower_bound():
    server = FakeServer(capacity=1e9)
    r = search_capacity(server, PLAN.model_copy(update={"max_rps": 100}), SLO)
    assert [rate for rate, phase in server.calls if phase == "ramp"] == [8, 16, 32, 64, 100]
    assert r.x_slo_rps == 100 and r.lower_bound and r.status == "confirmed"
    assert any("lower bound" in n for n in r.notes)


def test_a_failed_repeat_is_reported_as_noise_and_a_lower_pass_is_confirmed():
    first = search_capacity(FakeServer(capacity=300), PLAN, SLO)
    winner = first.x_slo_rps
    server = FakeServer(capacity=300, flaky={winner: {1}})  # the repeat (second visit) of the winner fails
    r = search_capacity(server, PLAN, SLO)
    assert r.status == "confirmed" and r.x_slo_rps < winner
    assert r.noisy_rps == [winner] and not r.non_monotone  # one rate, two verdicts: noise, not inversion
    both = [p for p in r.probes if p.offered_rps == winner]
    assert [p.passed for p in both] == [True, False]  # both runs kept
    assert [p.phase for p in both][-1] == "confirm"
    assert any("noisy" in n for n in r.notes)


def test_no_repeat_holding_leaves_x_slo_unconfirmed():
    fails_on_repeat = {rate: {1} for rate in (8, 16, 32, 64, 128, 256, 512, 384, 320, 288, 304, 296, 300)}
    server = FakeServer(capacity=300, flaky=fails_on_repeat)
    plan = PLAN.model_copy(update={"max_confirm": 2})
    r = search_capacity(server, plan, SLO)
    assert r.status == "unconfirmed" and r.x_slo_rps is None
    assert r.best_single_pass_rps is not None and 300 / 1.05 <= r.best_single_pass_rps <= 300
    assert sum(1 for rate, phase in server.calls if phase == "confirm" and rate <= 300) == 2


def test_a_noisy_failure_in_the_ramp_is_repeated_and_the_ramp_goes_on():
    # 16 req/s fails on its first visit only; the capacity is really 300. Without the repeat the
    # search could only bracket [8, 16] (a demo run read 232 req/s where its neighbour read 480).
    server = FakeServer(capacity=300, flaky={16: {0}})
    r = search_capacity(server, PLAN, SLO)
    assert server.calls[:4] == [(8, "ramp"), (16, "ramp"), (16, "confirm"), (32, "ramp")]
    assert r.status == "confirmed" and 300 / 1.05 <= r.x_slo_rps <= 300
    assert [p.passed for p in r.probes if p.offered_rps == 16] == [False, True]  # both runs kept
    assert r.noisy_rps == [16] and any("failed once in the ramp" in n for n in r.notes)


@pytest.mark.parametrize("clear", [
    {"answered_rps": 256.0, "achieved_ratio": 0.5},  # the server fell behind: saturation, not noise
    {"latency": LatencyPercentiles(p50_ms=60, p90_ms=90, p99_ms=126, max_ms=200, mean_ms=60)},  # p99 > 1.25 x SLO
])
def test_a_clear_ramp_failure_is_not_repeated(clear):
    def probe(rate: float, phase: str) -> ProbeResult:
        p = _probe_result(rate, phase, rate <= 300)
        return p if p.passed else p.model_copy(update=clear)

    r = search_capacity(probe, PLAN, SLO)
    assert not any(p.offered_rps == 512 and p.phase == "confirm" for p in r.probes)
    assert [p.offered_rps for p in r.probes][:8] == [8, 16, 32, 64, 128, 256, 512, 384]  # on to the bisection
    assert r.status == "confirmed" and 300 / 1.05 <= r.x_slo_rps <= 300


def test_a_marginal_ramp_failure_is_repeated():
    marginal = LatencyPercentiles(p50_ms=60, p90_ms=90, p99_ms=124, max_ms=200, mean_ms=60)  # within 1.25 x SLO

    def probe(rate: float, phase: str) -> ProbeResult:
        p = _probe_result(rate, phase, rate <= 300)
        return p if p.passed else p.model_copy(update={"latency": marginal})

    r = search_capacity(probe, PLAN, SLO)
    assert [(p.offered_rps, p.phase) for p in r.probes][6:8] == [(512, "ramp"), (512, "confirm")]


def test_only_the_ramps_first_failure_is_repeated():
    # 16 and 64 each fail their first visit: 16's repeat passes and the ramp goes on; 64 is not
    # repeated in the ramp (one repeat bounds the cost), so the bisection searches below it and
    # the repeat of the bounding failure at the end reports it as noise.
    server = FakeServer(capacity=300, flaky={16: {0}, 64: {0}})
    r = search_capacity(server, PLAN, SLO)
    assert [(rate, phase) for rate, phase in server.calls if phase == "confirm"][0] == (16, "confirm")
    assert (64, "confirm") == server.calls[-1] and 32 <= r.x_slo_rps < 64
    assert any("may be higher" in n for n in r.notes)


class Scripted:
    """Verdicts by (rate, visit); unlisted visits pass at or below ``capacity``."""

    def __init__(self, capacity: float, script: dict[tuple[float, int], bool]):
        self.capacity, self.script, self.calls = capacity, script, []

    def __call__(self, rate: float, phase: str) -> ProbeResult:
        visit = sum(1 for r, _ in self.calls if r == rate)
        self.calls.append((rate, phase))
        return _probe_result(rate, phase, self.script.get((rate, visit), rate <= self.capacity))


def test_a_refuted_pass_bounds_a_search_that_goes_on_below_it():
    # The demo's pruned search at the mix (2026-11-30, 14:02): 512 passed in the ramp, 640 passed in
    # the bisection and failed its repeat; repeating 512 then reported 512 where an independent
    # search confirmed 608. Here the server carries 620: 640 passes once by luck.
    plan = PLAN.model_copy(update={"start_rps": 64, "max_confirm": 2})
    server = Scripted(capacity=620, script={(640.0, 0): True})
    r = search_capacity(server, plan, SLO)
    assert server.calls[:9] == [(64, "ramp"), (128, "ramp"), (256, "ramp"), (512, "ramp"), (1024, "ramp"),
                                (1024, "confirm"), (768, "bisect"), (640, "bisect"), (704, "bisect")]
    assert (640, "confirm") in server.calls and (576, "bisect") in server.calls  # on between 512 and 640
    assert r.status == "confirmed" and r.x_slo_rps == 608 and r.noisy_rps == [640]
    assert server.calls[-1] == (624, "confirm")  # the lowest rate that only failed, repeated
    assert any("640 req/s passed once and failed its repeat" in n for n in r.notes)


def test_a_pass_above_a_failure_is_non_monotone():
    # ramp 8 P, 16 P, 32 F, its repeat 32 F; bisect 24 P, 28 F, 26 P, 27 P; confirm 27 F (noisy),
    # 26 P; the failure at 28 is repeated and passes: 28 passed above the failed 27.
    server = Scripted(capacity=30, script={(32.0, 0): False, (28.0, 0): False, (27.0, 1): False})
    r = search_capacity(server, PLAN, SLO)
    assert [rate for rate, _ in server.calls] == [8, 16, 32, 32, 24, 28, 26, 27, 27, 26, 28]
    assert r.x_slo_rps == 26 and r.status == "confirmed"
    assert r.noisy_rps == [27, 28] and r.non_monotone
    assert any("non-monotone" in n for n in r.notes)


def test_a_clean_search_is_neither_noisy_nor_non_monotone():
    r = search_capacity(FakeServer(capacity=100), PLAN, SLO)
    assert r.noisy_rps == [] and not r.non_monotone and not any("noisy" in n for n in r.notes)


def test_the_time_budget_bounds_the_search_and_keeps_room_for_the_repeat():
    server = FakeServer(capacity=300, wall_s=20.0)
    plan = PLAN.model_copy(update={"max_total_s": 150, "min_duration_s": 10, "min_window_s": 5, "warmup_s": 2,
                                   "pause_s": 0, "min_requests": 1000})
    r = search_capacity(server, plan, SLO)
    # Each probe is planned at most 12 s and really takes 20 s: the search must stop starting probes
    # once what it spent plus the next probe and a repeat passes 150 s.
    assert r.elapsed_s <= 150 + 20
    assert r.status in ("confirmed", "budget")
    assert r.status == "confirmed"  # it kept room to confirm what it had
    assert r.x_slo_rps is not None and r.x_slo_rps < 300 / 1.05  # ... at the price of resolution
    assert any("time budget" in n for n in r.notes)


def test_a_failing_bisect_probe_still_leaves_room_to_confirm_the_lower_pass():
    # The demo's dense search at the mix (2026-11-30): 64 passed, 128 failed, then the bisection
    # spent the budget on failures (96, 80, 72, 68) with room kept only for repeating a passing mid,
    # so 64 was never repeated. Probes here take what they are planned to, plus the recovery gap
    # after a failure; the lower rate's probe is the longer one (1,000 requests, at most 20 s).
    plan = PLAN.model_copy(update={"start_rps": 32, "min_requests": 1000, "min_duration_s": 20, "warmup_s": 2,
                                   "pause_s": 0.5, "recovery_s": 3.0, "max_confirm": 2})

    def probe(rate: float, phase: str) -> ProbeResult:
        passed = rate <= 64
        return _probe_result(rate, phase, passed, plan.probe_s(rate) + (0 if passed else plan.recovery_s))

    for budget in range(60, 200, 5):
        r = search_capacity(probe, plan.model_copy(update={"max_total_s": budget}), SLO)
        if r.best_single_pass_rps == 64:  # the ramp reached 64 within this budget
            assert r.status == "confirmed" and r.x_slo_rps == 64, (budget, r.notes)
            assert r.elapsed_s <= budget, budget


def test_no_time_for_even_one_probe():
    server = FakeServer(capacity=300)
    r = search_capacity(server, PLAN.model_copy(update={"max_total_s": 1}), SLO)
    assert server.calls == [] and r.status == "budget" and r.x_slo_rps is None


def test_probe_window_is_1000_requests_or_20_s_whichever_comes_first_but_at_least_5_s():
    plan = SearchPlan()
    assert plan.window_s(10) == 20  # 1,000 requests would take 100 s
    assert plan.window_s(100) == 10  # 1,000 requests
    assert plan.window_s(1000) == 5  # 1 s of requests, held for the 5 s floor
    assert plan.probe_s(100) == plan.warmup_s + 10 + plan.pause_s


def test_plan_and_criteria_reject_nonsense():
    with pytest.raises(ValidationError):
        SearchPlan(growth=1.0)
    with pytest.raises(ValidationError):
        SearchPlan(unknown_key=1)
    with pytest.raises(ValidationError):
        SloCriteria(max_error_ratio=0)


# ---- one probe's verdict, from answers --------------------------------------------------------------

def test_probe_verdict_boundaries():
    ok = {"offered_rps": 100, "answered_rps": 95, "p99_ms": 100.0, "error_ratio": 0.0, "criteria": SLO}
    assert probe_verdict(**ok) == []  # p99 exactly at the SLO and answered exactly 95%: counts
    assert "p99" in probe_verdict(**ok | {"p99_ms": 100.1})[0]
    assert "errors" in probe_verdict(**ok | {"error_ratio": 0.001})[0]  # errors must be *under* 0.1%
    assert probe_verdict(**ok | {"error_ratio": 0.00099}) == []
    assert "answered" in probe_verdict(**ok | {"answered_rps": 94.9})[0]
    assert probe_verdict(**ok | {"p99_ms": None}) == ["nothing was answered"]


def _answers(rate: float, seconds: float, latency_s, status=lambda i: 200) -> list[Answer]:
    n = int(rate * seconds)
    return [Answer(i / rate, latency_s(i), status(i)) for i in range(n)]


def test_probe_result_counts_only_the_window_and_times_from_the_schedule():
    # 2 s warm-up (slow: 1 s each, must not count), then 10 s at 100 req/s answered in 10 ms.
    answers = _answers(100, 12, lambda i: 1.0 if i < 200 else 0.010)
    p = probe_result(answers, offered_rps=100, warmup_s=2, window_s=10, criteria=SLO, phase="ramp")
    assert p.sent == 1000 and p.ok == 1000 and p.errors == 0
    assert p.latency.p99_ms == pytest.approx(10.0) and p.latency.max_ms == pytest.approx(10.0)
    # answers completed inside [2 s, 12 s): the window's own (the last 10 ms ones finish at 12.0 s,
    # which is outside) plus the warm-up's slow ones that finish after 2 s.
    assert 0.95 * 100 <= p.answered_rps <= 1.2 * 100
    assert p.passed, p.reasons


def test_probe_result_fails_a_server_that_falls_behind_even_when_p99_reads_fine():
    # Offered 100 req/s for 10 s, but only every other request answered within the run (the rest
    # time out: status 0): errors 50%, answered 50 req/s.
    answers = _answers(100, 10, lambda i: 0.02, status=lambda i: 200 if i % 2 else 0)
    p = probe_result(answers, offered_rps=100, warmup_s=0, window_s=10, criteria=SLO, phase="bisect")
    assert p.errors == 500 and p.error_ratio == 0.5
    assert p.answered_rps == pytest.approx(50, abs=1)
    assert not p.passed and any("errors" in r for r in p.reasons) and any("answered" in r for r in p.reasons)
    assert p.status_counts == {"0": 500, "200": 500}


def test_probe_result_of_nothing_answered():
    answers = _answers(10, 5, lambda i: 10.0, status=lambda i: 0)
    p = probe_result(answers, offered_rps=10, warmup_s=0, window_s=5, criteria=SLO, phase="ramp")
    assert p.latency is None and p.ok == 0 and not p.passed and "nothing was answered" in p.reasons


def test_search_result_round_trips_as_json():
    r = search_capacity(FakeServer(capacity=50), PLAN, SLO)
    again = SearchResult.model_validate(json.loads(r.model_dump_json()))
    assert again == r


def test_a_generator_that_sends_late_is_flagged_and_fails_only_when_asked():
    answers = [Answer(i / 100, 0.030, 200, lag_s=0.025 if i % 10 == 0 else 0.0) for i in range(1000)]
    flagged = probe_result(answers, offered_rps=100, warmup_s=0, window_s=10, criteria=SLO, phase="ramp",
                           late_send_ms=10)
    assert flagged.generator_late and flagged.passed and flagged.send_lag_p99_ms == pytest.approx(25.0)
    failed = probe_result(answers, offered_rps=100, warmup_s=0, window_s=10, criteria=SLO, phase="ramp",
                          late_send_ms=10, fail_late=True)
    assert not failed.passed and failed.reasons[0].startswith("generator late")
    on_time = probe_result(answers, offered_rps=100, warmup_s=0, window_s=10, criteria=SLO, phase="ramp",
                           late_send_ms=30, fail_late=True)
    assert not on_time.generator_late and on_time.passed


def test_generator_late_probes_are_named_in_the_notes():
    def probe(rate, phase):
        return _probe_result(rate, phase, rate <= 100).model_copy(update={"generator_late": rate >= 64})

    r = search_capacity(probe, PLAN, SLO)
    note = next(n for n in r.notes if "behind schedule" in n)
    late = note.split(" at ", 1)[1].split(" req/s")[0].split(", ")
    assert late == [f"{x:.4g}" for x in sorted({p.offered_rps for p in r.probes if p.offered_rps >= 64})]
    assert "32" not in late and r.x_slo_rps is not None  # flagged, not failed: the fake passed them


def test_a_ramp_cut_by_the_time_budget_before_any_failure_is_a_lower_bound():
    server = FakeServer(capacity=300, wall_s=10.0)
    plan = PLAN.model_copy(update={"max_total_s": 30, "min_duration_s": 5, "min_window_s": 5, "warmup_s": 2,
                                   "pause_s": 0})
    r = search_capacity(server, plan, SLO)
    # 8 and 16 pass; 32 would not leave room for its repeat: no rate failed, so 16 is only a floor
    assert [rate for rate, _ in server.calls] == [8, 16, 16]
    assert r.status == "confirmed" and r.x_slo_rps == 16 and r.lower_bound
    assert any("ramp stopped by the time budget at 16 req/s" in n and "lower bound" in n for n in r.notes)
    # a bracketed X_slo is not a lower bound
    assert not search_capacity(FakeServer(capacity=300), PLAN, SLO).lower_bound
