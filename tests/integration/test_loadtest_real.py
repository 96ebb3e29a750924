"""Real Locust against the REAL service (the session's Ray Serve application, tiny artifacts).

A short sweep through ``run_sweep`` (the ``twinserve loadtest --sweep`` path: the locust CLI as a
subprocess, one run per variant forced with X-Variant), then ``twinserve report`` on its results
file. No timing is asserted: the SLO is set loose so both variants get a capacity figure on any
machine, and only the consistency of what was measured with what the report shows is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from PIL import Image

from service.cli import main
from service.cost.capacity import GPU_VARIANTS
from service.cost.loadtest import LoadTestResult, RawRun, SloCriteria, SweepPlan, run_sweep, select_x_slo
from service.cost.prices import load_prices

REPO = Path(__file__).resolve().parents[2]
PRICES = REPO / "deploy" / "prices.yaml"


def test_locust_sweep_against_real_service_and_report(serve_app, tmp_path):
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

    # `twinserve report` on that file; the A/B split comes from the serving config as deployed
    serve_config = tmp_path / "serve_config.yaml"
    serve_config.write_text(yaml.safe_dump(serve_app.config))
    (router,) = [d for d in serve_app.config["applications"][0]["deployments"] if d["name"] == "Router"]
    report_dir = tmp_path / "report"
    assert main(["report", "--loadtest", str(out), "--prices", str(PRICES), "--manifest",
                 str(serve_app.artifact_dir), "--serve-config", str(serve_config), "--out-dir", str(report_dir)]) == 0

    doc = json.loads((report_dir / "report.json").read_text())
    for sweep in result.variants:
        v = doc["variants"][sweep.variant]
        assert v["x_slo_rps"] == sweep.x_slo_rps and v["hardware"] == result.server.description
        assert [s["p99_ms"] for s in v["steps"]] == [s.latency.p99_ms for s in sweep.steps]
        assert [s["achieved_rps"] for s in v["steps"]] == [s.achieved_rps for s in sweep.steps]
        assert v["fidelity"] is not None
    assert doc["fleet"]["dense_share"] == router["user_config"]["weights"]["dense"]
    # No GPU was measured: the dense variant on every GPU instance is "not measured", with no number.
    gpu_instances = {p.key for p in load_prices(PRICES).instances if p.gpu is not None}
    dense_gpu = [c for c in doc["cells"] if c["variant"] in GPU_VARIANTS and c["instance"] in gpu_instances]
    assert dense_gpu and all(c["status"] == "not_measured" and c["usd_per_million_at_u"] is None for c in dense_gpu)
    assert "not measured" in (report_dir / "report.md").read_text()
    pngs = sorted(report_dir.glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG"
    assert (report_dir / "report.html").stat().st_size > 10_000
