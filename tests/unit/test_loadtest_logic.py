"""``twinserve loadtest`` without a server: the fixed-step sweep over fake probes (step verdicts, X_slo =
the highest passing step, the early stop), the file it writes and the report reading it; and the
locustfile's pure parts (the step shape's pacing, the traffic)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from loadtests._steps import StepShapeConfig, load_step_config
from loadtests._traffic import Traffic, sentences
from service.capacity_search import (
    CapacityRun,
    SearchPlan,
    SloCriteria,
    capacity_run,
    probe_result,
    sweep_plan,
    sweep_steps,
)
from service.loadgen import Answer

SLO = SloCriteria()  # p99 <= 100 ms, errors < 0.1%, answered >= 95% of offered
WINDOW_S = 10.0


class FakeServer:
    """Answers every request in ``latency_ms`` up to ``capacity`` req/s; above it, only ``capacity`` of
    them (the rest get no answer, status 0). ``slow`` rates answer everything, but in 300 ms."""

    def __init__(self, capacity: float, latency_ms: float = 10.0, slow: frozenset[float] = frozenset()):
        self.capacity, self.latency_ms, self.slow = capacity, latency_ms, slow
        self.calls: list[tuple[float, str]] = []

    def __call__(self, rate: float, phase: str):
        self.calls.append((rate, phase))
        n = int(rate * WINDOW_S)
        keep = min(1.0, self.capacity / rate)  # share of requests answered
        latency = 0.3 if rate in self.slow else self.latency_ms / 1000
        answers = [Answer(i / rate, latency, 200 if int((i + 1) * keep) > int(i * keep) else 0) for i in range(n)]
        return probe_result(answers, offered_rps=rate, warmup_s=0.0, window_s=WINDOW_S, criteria=SLO, phase=phase)


def _plan(*rates: float, stop_after_saturated: int = 2):
    return sweep_plan(rates, step_s=WINDOW_S + 2, warmup_s=2, stop_after_saturated=stop_after_saturated)


def test_each_step_runs_once_in_order_and_x_slo_is_the_highest_passing_step():
    server = FakeServer(capacity=30)
    r = sweep_steps(server, _plan(5, 10, 20, 40), SLO)
    assert server.calls == [(5, "step"), (10, "step"), (20, "step"), (40, "step")]  # no ramp, bisection or repeat
    assert [p.passed for p in r.probes] == [True, True, True, False]
    assert any("answered" in reason for reason in r.probes[-1].reasons)  # 30 of 40 req/s: saturated
    assert r.status == "swept" and r.x_slo_rps == 20 and r.best_single_pass_rps == 20
    assert not r.lower_bound and not r.non_monotone and r.noisy_rps == []
    assert r.max_answered_rps == pytest.approx(30, abs=0.2)
    assert r.elapsed_s == sum(p.wall_s for p in r.probes)


def test_a_step_failing_on_latency_alone_does_not_count_and_a_pass_above_it_is_non_monotone():
    server = FakeServer(capacity=1000, slow=frozenset({10.0}))
    r = sweep_steps(server, _plan(5, 10, 20, 40), SLO)
    assert [p.passed for p in r.probes] == [True, False, True, True]
    assert r.probes[1].reasons == ["p99 300.0 ms > SLO 100 ms"]
    assert r.x_slo_rps == 40 and r.non_monotone and r.lower_bound
    assert any(n.startswith("non-monotone: 40 req/s passed but 10 req/s failed") for n in r.notes)
    assert any("X_slo is at least 40 req/s" in n for n in r.notes)


def test_no_passing_step_means_no_x_slo():
    r = sweep_steps(FakeServer(capacity=100, latency_ms=150), _plan(5, 10), SLO)
    assert r.status == "none" and r.x_slo_rps is None and r.best_single_pass_rps is None and not r.lower_bound
    assert any("no step met the SLO" in n for n in r.notes)


def test_the_sweep_stops_after_saturated_steps_in_a_row_and_says_which_it_skipped():
    server = FakeServer(capacity=12)
    r = sweep_steps(server, _plan(5, 10, 20, 40, 80, 160), SLO)
    assert [rate for rate, _ in server.calls] == [5, 10, 20, 40]  # 20 and 40 saturated: stop
    assert r.x_slo_rps == 10
    assert any("stopped after 2 saturated steps in a row" in n and "not run: 80, 160 req/s" in n for n in r.notes)
    # a step failing on latency alone is not saturated: it does not count towards the stop
    slow = FakeServer(capacity=1000, slow=frozenset({10.0, 20.0}))
    assert len(sweep_steps(slow, _plan(5, 10, 20, 40), SLO).probes) == 4
    # 0: every step runs
    every = FakeServer(capacity=12)
    sweep_steps(every, _plan(5, 10, 20, 40, 80, stop_after_saturated=0), SLO)
    assert [rate for rate, _ in every.calls] == [5, 10, 20, 40, 80]


def test_sweep_plan_measures_step_minus_warmup_and_refuses_a_warmup_as_long_as_the_step():
    plan = sweep_plan([5, 50, 500], step_s=20, warmup_s=5)
    assert plan.rates_rps == [5, 50, 500] and plan.warmup_s == 5
    assert {plan.window_s(r) for r in plan.rates_rps} == {15.0}  # the same window at every rate
    with pytest.raises(ValueError, match=r"warmup_s \(3\) must be shorter than step_s \(2\)"):
        sweep_plan([5], step_s=2, warmup_s=3)
    with pytest.raises(ValidationError):
        sweep_plan([], step_s=20, warmup_s=5)
    with pytest.raises(ValueError, match="rates_rps"):
        sweep_steps(FakeServer(capacity=10), SearchPlan(), SLO)  # a search's plan: no steps


def _files(tmp_path, capacity: dict[str, float]) -> list:
    """What ``twinserve loadtest --variants dense pruned --shapes mix`` writes, one file per variant."""
    paths = []
    for variant, cap in capacity.items():
        sweep = sweep_steps(FakeServer(capacity=cap), _plan(5, 10, 20, 40, 80), SLO)
        run = capacity_run("http://127.0.0.1:8000/v1/embeddings", {"mix": sweep}, headers={"X-Variant": variant},
                           variant=variant)
        path = tmp_path / f"loadtest-{variant}.json"
        path.write_text(run.model_dump_json(indent=2))
        paths.append(path)
    return paths


def test_the_sweeps_file_is_a_capacity_file_the_report_reads(tmp_path):
    from pathlib import Path

    from service.cost.capacity import capacity_measurement, load_capacity_run
    from service.cost.report import ReportConfig, build_report, write_report

    dense, pruned = _files(tmp_path, {"dense": 8, "pruned": 50})
    run = load_capacity_run(pruned)  # the search's own loader
    assert isinstance(run, CapacityRun) and run.variant == "pruned" and run.headers == {"X-Variant": "pruned"}
    assert run.searches["mix"].status == "swept" and run.searches["mix"].plan.rates_rps == [5, 10, 20, 40, 80]
    m = capacity_measurement(run, "mix", str(pruned))
    assert m.x_slo_rps == 40 and m.method.startswith("open-loop fixed-step sweep (twinserve loadtest: 5, 10, 20, "
                                                     "40, 80 req/s once each, 10 s measured after 2 s warm-up")
    prices = Path(__file__).resolve().parents[2] / "deploy" / "prices.yaml"
    report, data = build_report(capacity=[dense, pruned], prices=prices, config=ReportConfig(cost_shape="mix"))
    assert report.variants["pruned"].x_slo_rps == 40 and report.variants["dense"].x_slo_rps == 5
    assert report.variants["pruned"].shapes["mix"].status == "swept"
    assert report.variants["pruned"].generator_cpu_cores_at_x_slo is not None  # the passing step at X_slo
    write_report(report, data, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Status **swept**" in md and "fixed-step sweep" in md


def test_this_machine_is_recorded_as_the_server(tmp_path):
    import os
    import platform

    run = CapacityRun.model_validate(json.loads(_files(tmp_path, {"pruned": 50})[0].read_text()))
    assert run.cpu_arch == platform.machine()  # and its CPU flags: test_hardware_projection.py
    assert run.cpu_count == (os.cpu_count() or 1) and run.gpu_model is None
    assert run.shapes == {"mix": "mix: 80% of requests 1 text, 20% 2-8 texts (the locustfile's default mix)"}


def test_the_cli_sweeps_each_variant_and_shape_and_writes_one_file_each(tmp_path, monkeypatch, capsys):
    import service.capacity_search as cs
    from service.cli import main

    calls = []

    def fake_http_probe(url, *, shape, plan, criteria, headers, model, on_probe):
        server = FakeServer(capacity={"dense": 8, "pruned": 50}[headers["X-Variant"]])

        def probe(rate, phase):
            calls.append((url, shape.name, headers["X-Variant"], model, rate))
            p = server(rate, phase)
            on_probe(p)
            return p
        return probe

    monkeypatch.setattr(cs, "http_probe", fake_http_probe)
    out = tmp_path / "lt.json"
    rc = main(["loadtest", "--rates", "5", "10", "20", "--variants", "dense", "pruned", "--shapes", "mix", "1",
               "--step-s", "4", "--warmup-s", "1", "--server-instance-type", "c7i.xlarge", "--out", str(out)])
    assert rc == 0
    assert {(u, s, v, m) for u, s, v, m, _ in calls} == {
        ("http://127.0.0.1:8000/v1/embeddings", s, v, f"twinserve-{v}") for s in ("mix", "1") for v in ("dense", "pruned")}
    runs = {v: CapacityRun.model_validate_json((tmp_path / f"lt-{v}.json").read_text()) for v in ("dense", "pruned")}
    assert not out.exists()
    assert runs["dense"].searches["mix"].x_slo_rps == 5 and runs["pruned"].searches["1"].x_slo_rps == 20
    assert runs["pruned"].instance_type == "c7i.xlarge" and list(runs["pruned"].searches) == ["mix", "1"]
    assert runs["pruned"].searches["mix"].plan.min_window_s == 3.0
    text = capsys.readouterr()
    assert "pruned at 1 text per request: X_slo 20 req/s" in text.out
    assert f"--capacity {tmp_path / 'lt-dense.json'} {tmp_path / 'lt-pruned.json'}" in text.out
    assert "  step        5.0 req/s offered" in text.err


def test_the_cli_refuses_a_remote_server_and_a_warmup_as_long_as_a_step(tmp_path, capsys):
    from service.cli import main

    code = main(["loadtest", "--url", "http://10.255.0.1:8000", "--out", str(tmp_path / "lt.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("twinserve loadtest: error:") and "loopback" in err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
    code = main(["loadtest", "--rates", "5", "--step-s", "2", "--warmup-s", "3", "--out", str(tmp_path / "lt.json")])
    assert code == 2 and "warmup_s (3) must be shorter than step_s (2)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---- the locustfile's pure parts ---------------------------------------------------------------------

def test_step_shape_config_paces_users_to_the_offered_rate():
    cfg = StepShapeConfig(rates_rps=[5, 12.5, 40], step_duration_s=10, per_user_rps=2)
    s = cfg.step(1)
    assert (s.users, s.offered_rps) == (7, 12.5)  # ceil(12.5 / 2) users
    assert s.interval_s == pytest.approx(7 / 12.5)  # together exactly 12.5 req/s
    assert cfg.step_at(25.0).index == 2 and cfg.step_at(30.0) is None and cfg.total_s == 30
    with pytest.raises(ValidationError, match="Extra inputs"):
        StepShapeConfig(rates_rps=[5], step_duration_s=2, users=3)
    with pytest.raises(ValidationError):
        StepShapeConfig(rates_rps=[], step_duration_s=2)
    assert load_step_config('{"rates_rps": [1], "step_duration_s": 3}').rates_rps == [1.0]
    assert load_step_config("") is None


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
