"""Real Locust against the REAL service (the session's Ray Serve application, tiny artifacts).

A short sweep through ``run_sweep`` (the ``twinserve loadtest --sweep`` path: the locust CLI as a
subprocess, one run per variant forced with X-Variant). No timing is asserted: the SLO is set loose
so both variants get a capacity figure on any machine, and only the consistency of what was
measured is checked. (The report reads the capacity search's files: ``test_demo_search.py``.)
"""

from __future__ import annotations

from pathlib import Path

from service.cost.loadtest import LoadTestResult, RawRun, SloCriteria, SweepPlan, run_sweep, select_x_slo


def test_locust_sweep_against_real_service(serve_app, tmp_path):
    plan = SweepPlan(rates_rps=[2, 4], step_duration_s=4.0, warmup_s=1.0, arrival="constant", multi_share=0.3,
                     max_inputs=4, user_pool=20, stop_after_saturated_steps=0, seed=11)
    # Loose on purpose: latency on a shared 2-core machine is not what this test is about.
    slo = SloCriteria(slo_p99_ms=30_000, max_error_ratio=0.5, min_achieved_ratio=0.3)
    out = tmp_path / "loadtest.json"
    result = run_sweep(serve_app.url, variants=["dense", "pruned"], plan=plan, slo=slo, out=out)

    assert LoadTestResult.model_validate_json(out.read_text()) == result
    assert result.server.shares_machine_with_generator and result.server.gpu_model is None
    for sweep in result.variants:
        assert sweep.forced and [s.offered_rps for s in sweep.steps] == [2.0, 4.0]
        for s in sweep.steps:
            assert s.requests > 0 and s.failures == 0, (sweep.variant, s.status_counts)
            assert s.status_counts == {"200": s.requests}
            # the real router answered with the forced variant: a pinned request never falls back
            assert s.answered_by == {sweep.variant: s.requests}
            assert s.route_reasons == {"override": s.requests}
            assert s.latency is not None and s.latency.p50_ms <= s.latency.p99_ms <= s.latency.max_ms
        assert (sweep.x_slo_rps, sweep.x_slo_step) == select_x_slo(sweep.steps)
        assert sweep.x_slo_rps is not None
        raw = RawRun.model_validate_json(Path(sweep.raw_file).read_text())
        assert raw.host == serve_app.url and [len(r.latencies_ms) for r in raw.steps] == [s.requests for s in
                                                                                          sweep.steps]
