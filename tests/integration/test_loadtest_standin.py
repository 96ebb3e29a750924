"""Real Locust, headless, against a STAND-IN HTTP server (fake embeddings, not the real service).

Proves the locustfile (plain ``locust`` CLI and the step shape) and the sweep fit together: the
sweep's results file is valid typed JSON consistent with its steps. (The cost report reads the
open-loop capacity search's files, not Locust sweeps: ``test_demo_search.py``.) No timing is
asserted: what X_slo comes out depends on the machine; only its consistency with the measured
steps is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.cost.loadtest import LoadTestResult, RawRun, SweepPlan, run_sweep, select_x_slo
from tests.integration.standin_server import StandinServer

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


def test_plain_locust_cli_against_standin_server():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSERVE_LOADTEST_")}
    with StandinServer() as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "3", "-r", "3", "-t", "2s",
             "--host", srv.url, "--only-summary", "--twinserve-variant", "pruned", "--twinserve-per-user-rps", "5"],
            env=env, capture_output=True, text=True, timeout=90)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]  # Locust exits 1 if any request failed
    assert "/v1/embeddings" in out and "Aggregated" in out


def test_locust_sweep_against_standin_server(tmp_path):
    plan = SweepPlan(rates_rps=[8, 30], step_duration_s=3.0, warmup_s=0.5, multi_share=0.5, max_inputs=4,
                     user_pool=50, stop_after_saturated_steps=0, seed=3)
    seen: list[tuple[str, int]] = []
    out = tmp_path / "loadtest.json"
    with StandinServer() as srv:
        result = run_sweep(srv.url, variants=["dense", "pruned"], plan=plan, out=out,
                           on_step=lambda v, s: seen.append((v, s.index)))

    saved = LoadTestResult.model_validate_json(out.read_text())
    assert saved == result
    assert sorted(seen) == [("dense", 0), ("dense", 1), ("pruned", 0), ("pruned", 1)]
    assert result.server.shares_machine_with_generator and result.server.cpu_count >= 1
    assert any("load generator ran on the server's machine" in n for n in result.notes)
    for sweep in result.variants:
        assert sweep.forced and [s.offered_rps for s in sweep.steps] == [8.0, 30.0]
        for s in sweep.steps:
            assert s.requests > 0 and s.failures == 0 and s.latency is not None
            assert s.answered_by == {sweep.variant: s.requests}  # X-Variant forced and echoed
            assert s.route_reasons == {"override": s.requests}
            assert s.inputs_per_request_mean > 1.0  # half the requests carry several inputs
            assert s.generator_cpu_cores >= 0.0 and 0.0 <= s.machine_cpu_percent <= 100.0
            assert s.latency.p50_ms <= s.latency.p99_ms <= s.latency.max_ms
            assert s.passed == (not s.reasons)
        assert (sweep.x_slo_rps, sweep.x_slo_step) == select_x_slo(sweep.steps)
        raw = RawRun.model_validate_json(Path(sweep.raw_file).read_text())
        assert [len(r.latencies_ms) for r in raw.steps] == [s.requests for s in sweep.steps]

