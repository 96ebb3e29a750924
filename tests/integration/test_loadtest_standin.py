"""``twinserve loadtest`` against a STAND-IN HTTP server (fake embeddings, real HTTP; each variant one
request at a time for a fixed service time, so it saturates like a single-worker server). No Ray,
no model.

The fixed-step sweep end to end: every step offered once per variant through the open-loop
generator, the verdict of the capacity search, X_slo the highest step that passed, and the files
the cost report reads. Timing is never asserted, only what follows from the server's own capacity
(a server answering one request per 30 ms cannot answer 95% of 120 req/s).
"""

from __future__ import annotations

from service.cli import main
from service.cost.capacity import capacity_measurement, load_capacity_run
from tests.integration.standin_server import StandinServer

SERVICE_TIME_S = {"dense": 0.03, "pruned": 0.01}  # at most 33 and 100 answers per second


def test_the_sweep_against_a_standin_server_writes_the_files_the_report_reads(tmp_path, capsys):
    out = tmp_path / "loadtest.json"
    with StandinServer(SERVICE_TIME_S) as srv:
        rc = main(["loadtest", "--url", srv.url, "--variants", "dense", "pruned", "--rates", "8", "120",
                   "--shapes", "1", "--step-s", "2.5", "--warmup-s", "0.5", "--slo-p99-ms", "2000",
                   "--stop-after-saturated", "0", "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]
    for variant in ("dense", "pruned"):
        path = tmp_path / f"loadtest-{variant}.json"
        run = load_capacity_run(path)  # the report's loader
        assert run.variant == variant and run.headers == {"X-Variant": variant}
        assert run.url == f"{srv.url}/v1/embeddings" and list(run.searches) == ["1"]
        r = run.searches["1"]
        assert [(p.phase, p.offered_rps) for p in r.probes] == [("step", 8.0), ("step", 120.0)]
        assert all(p.window_s == 2.0 and p.warmup_s == 0.5 for p in r.probes)
        assert all(abs(p.sent - p.offered_rps * p.window_s) <= 1 for p in r.probes)  # the schedule held
        top = r.probes[1]
        assert not top.passed and any("answered" in reason for reason in top.reasons), top
        assert top.answered_rps <= 1.1 / SERVICE_TIME_S[variant]  # no more than the server can answer
        low = r.probes[0]
        assert low.passed == (not low.reasons)
        assert r.x_slo_rps == (8.0 if low.passed else None) and r.status == ("swept" if low.passed else "none")
        assert not r.lower_bound
        m = capacity_measurement(run, "1", str(path))
        assert m.variant == variant and m.x_slo_rps == r.x_slo_rps
        assert m.method.startswith("open-loop fixed-step sweep (twinserve loadtest: 8, 120 req/s once each")
        assert f"{variant} at 1 text per request: X_slo" in printed.out
