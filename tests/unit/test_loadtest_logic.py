"""Load-test logic without Locust: percentiles, the step verdict, X_slo selection, the step plan, the traffic."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loadtests._steps import StepShapeConfig, load_step_config
from loadtests._traffic import Traffic, sentences
from service.cost.loadtest import (
    RawStep,
    SloCriteria,
    SweepPlan,
    percentile,
    select_x_slo,
    step_result,
    step_verdict,
    summarise_run,
)

SLO = SloCriteria()  # p99 <= 100 ms, errors < 0.1%, achieved >= 95% of offered


def test_nearest_rank_percentiles():
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 99) == 10.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_step_verdict_boundaries():
    ok = dict(offered_rps=100, achieved_rps=95, p99_ms=100.0, error_ratio=0.0, slo=SLO)
    assert step_verdict(**ok) == []  # p99 exactly at the SLO and achieved exactly 95%: counts
    assert "p99" in step_verdict(**ok | {"p99_ms": 100.1})[0]
    assert "errors" in step_verdict(**ok | {"error_ratio": 0.001})[0]  # errors must be *under* 0.1%
    assert step_verdict(**ok | {"error_ratio": 0.00099}) == []
    assert step_verdict(**ok | {"achieved_rps": 94.9}) == ["answered 94.9 req/s < 95% of 100.0 offered"]
    assert step_verdict(**ok | {"p99_ms": None}) == ["nothing was answered"]
    strict = SloCriteria(slo_p99_ms=50)
    assert step_verdict(**ok | {"p99_ms": 60.0, "slo": strict})


def _raw(index, offered, latencies, failures=0, window=10.0, cpu_s=1.0) -> RawStep:
    return RawStep(index=index, offered_rps=offered, users=max(1, int(offered)), start_s=index * 12 + 2.0,
                   window_s=window, latencies_ms=latencies, failures=failures, inputs_total=len(latencies) * 2,
                   status_counts={"200": len(latencies) - failures, "503": failures}, answered_by={"pruned": 1},
                   route_reasons={"override": 1}, generator_cpu_s=cpu_s, machine_cpu_percent=80.0)


def test_step_result_summarises_by_hand():
    lat = [10.0] * 98 + [90.0, 500.0]  # 100 requests in 10 s
    s = step_result(_raw(0, 10, lat, cpu_s=2.5), SLO, planned_window_s=10.0)
    assert s.requests == 100 and s.achieved_rps == pytest.approx(10.0) and s.achieved_ratio == pytest.approx(1.0)
    assert s.latency.p50_ms == 10.0 and s.latency.p99_ms == 90.0 and s.latency.max_ms == 500.0
    assert s.inputs_per_request_mean == 2.0
    assert s.generator_cpu_cores == pytest.approx(0.25) and not s.generator_cpu_bound
    assert s.passed and s.reasons == []
    busy = step_result(_raw(0, 10, lat, cpu_s=9.5), SLO, planned_window_s=10.0)
    assert busy.generator_cpu_bound  # 0.95 cores: Locust's one process is (nearly) saturated
    failing = step_result(_raw(0, 10, lat, failures=1), SLO, planned_window_s=10.0)
    assert not failing.passed and failing.error_ratio == pytest.approx(0.01)
    cut = step_result(_raw(0, 10, lat, window=4.0), SLO, planned_window_s=10.0)
    assert cut.partial and not cut.passed


def _steps(spec):
    """spec: (offered, achieved, p99) per step -> StepResults built through the real summariser."""
    out = []
    for i, (offered, achieved, p99) in enumerate(spec):
        n = int(round(achieved * 10))
        k = max(1, -(-n * 2 // 100))  # the slowest 2% at `p99`, so the 99th percentile is `p99`
        lat = [1.0] * (n - k) + [p99] * k
        out.append(step_result(_raw(i, offered, lat, window=10.0), SLO, planned_window_s=10.0))
    return out


def test_select_x_slo_highest_passing_step_and_achieved_rate():
    steps = _steps([(10, 10.0, 20), (20, 19.5, 40), (40, 39.0, 90), (80, 60.0, 400)])
    assert [s.passed for s in steps] == [True, True, True, False]
    x, idx = select_x_slo(steps)
    assert idx == 2 and x == pytest.approx(39.0)  # the achieved rate of the highest passing step
    over = _steps([(10, 10.3, 20)])
    assert select_x_slo(over) == (pytest.approx(10.0), 0)  # capped at the offered rate


def test_select_x_slo_none_and_noisy_lower_step():
    assert select_x_slo(_steps([(10, 5.0, 20), (20, 19.9, 500)])) == (None, None)
    noisy = _steps([(10, 10.0, 150), (20, 20.0, 50)])
    assert select_x_slo(noisy) == (pytest.approx(20.0), 1)
    plan = SweepPlan(rates_rps=[10, 20], step_duration_s=12, warmup_s=2)
    from service.cost.loadtest import RawRun

    raw = RawRun(format="twinserve-locust-steps/1", locust_version="x", variant="pruned", host=None, cpu_count=2,
                 pid=1, plan={}, stopped_early=False, multi_share=0.2, max_inputs=8, user_pool=10,
                 steps=[_raw(0, 10, [150.0] * 100), _raw(1, 20, [50.0] * 200)])
    sweep = summarise_run("pruned", raw, plan, SLO)
    assert sweep.x_slo_rps == pytest.approx(20.0) and sweep.x_slo_step == 1
    assert any("lower step failed" in n for n in sweep.notes)


def test_step_shape_config_paces_users_to_the_offered_rate():
    cfg = StepShapeConfig(rates_rps=[5, 12.5, 40], step_duration_s=10, warmup_s=2, per_user_rps=2)
    s = cfg.step(1)
    assert (s.users, s.offered_rps) == (7, 12.5)  # ceil(12.5 / 2) users
    assert s.interval_s == pytest.approx(7 / 12.5)  # together exactly 12.5 req/s
    assert (s.start_s, s.measure_from_s, s.end_s) == (10, 12, 20)
    assert cfg.step_at(25.0).index == 2 and cfg.step_at(30.0) is None and cfg.total_s == 30
    with pytest.raises(ValidationError, match="shorter than step_duration_s"):
        StepShapeConfig(rates_rps=[5], step_duration_s=2, warmup_s=2)
    with pytest.raises(ValidationError, match="Extra inputs"):
        StepShapeConfig(rates_rps=[5], step_duration_s=2, warmup_s=1, users=3)
    with pytest.raises(ValidationError):
        StepShapeConfig(rates_rps=[], step_duration_s=2)
    assert load_step_config('{"rates_rps": [1], "step_duration_s": 3}').rates_rps == [1.0]
    assert load_step_config("") is None


def test_sweep_plan_maps_onto_the_shape_config():
    plan = SweepPlan(rates_rps=[5, 10], step_duration_s=8, warmup_s=2, per_user_rps=2, stop_after_saturated_steps=1)
    cfg = StepShapeConfig.model_validate(plan.shape_config(SloCriteria(min_achieved_ratio=0.9)))
    assert cfg.rates_rps == [5, 10] and cfg.min_achieved_ratio == 0.9 and cfg.stop_after_saturated_steps == 1


def test_traffic_is_varied_sticky_and_forced():
    pool = sentences()
    lengths = sorted(len(t) for t in pool)
    assert len(pool) >= 30 and lengths[0] < 40 < lengths[-1]
    t = Traffic(multi_share=0.5, max_inputs=4, user_pool=3, variant="pruned", seed=1)
    reqs = [t.request() for _ in range(400)]
    multi = [b for b, _, n in reqs if n > 1]
    assert 100 < len(multi) < 300
    assert all(isinstance(b["input"], list) and 2 <= len(b["input"]) <= 4 for b in multi)
    assert all(isinstance(b["input"], str) for b, _, n in reqs if n == 1)
    assert {h["X-User-Id"] for _, h, _ in reqs} <= {"user-000000", "user-000001", "user-000002"}
    assert all(h["X-Variant"] == "pruned" and b["user"] == h["X-User-Id"] for b, h, _ in reqs)
    plain = Traffic(multi_share=0.0, user_pool=0, seed=2).request()
    assert isinstance(plain[0]["input"], str) and plain[1] == {} and "user" not in plain[0]
    with pytest.raises(ValueError, match="variant"):
        Traffic(variant="gpu")
    with pytest.raises(ValueError, match="multi_share"):
        Traffic(multi_share=1.5)


def test_cli_loadtest_refuses_a_remote_server_without_its_hardware(tmp_path, capsys):
    from service.cli import main

    code = main(["loadtest", "--url", "http://10.255.0.1:8000", "--out", str(tmp_path / "lt.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("twinserve loadtest: error:") and "--server-hardware" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "lt.json").exists()
    code = main(["loadtest", "--sweep", "--rates", "5", "--step-s", "2", "--warmup-s", "3"])
    assert code == 2 and "warmup_s" in capsys.readouterr().err
