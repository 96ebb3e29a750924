"""The demo's capacity step (``service.demo.search_variants``) and the report that reads its files.

Against a STAND-IN HTTP server (fake embeddings, real HTTP on loopback: ``standin_server``) and
against the REAL service (the session's Ray Serve application, tiny artifacts). The searches are
cut to toy sizes (tens of requests per probe, a loose SLO) because what is checked is the
plumbing: each variant pinned, each request shape searched and recorded, the files the report
reads, and the report carrying their figures unchanged, with the shape behind every X_slo. No
timing is asserted: which rate passes depends on the machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from PIL import Image

from service.capacity_search import CapacityRun, SearchPlan, SloCriteria
from service.cli import main
from service.cost.capacity import GPU_VARIANTS
from service.cost.prices import load_prices
from service.cost.report import ReportConfig, build_report, write_report
from service.demo import search_variants
from service.loadgen import SHAPES
from tests.integration.standin_server import StandinServer

REPO = Path(__file__).resolve().parents[2]
PRICES = REPO / "deploy" / "prices.yaml"
# Toy probes: 40 requests or 1 s, after 0.2 s; loose criteria so a busy CI machine still finds a rate.
TOY_PLAN = SearchPlan(min_requests=40, min_duration_s=1.0, min_window_s=0.5, warmup_s=0.2, pause_s=0.0,
                      recovery_s=0.2, timeout_s=5.0, max_rps=64.0, max_confirm=2)
LOOSE = SloCriteria(slo_p99_ms=5_000, max_error_ratio=0.5, min_achieved_ratio=0.5)


def _check_runs(runs: dict[str, CapacityRun], files: dict[str, Path], shapes: list[str]) -> None:
    for v, run in runs.items():
        assert CapacityRun.model_validate_json(files[v].read_text()) == run
        assert run.variant == v and run.headers == {"X-Variant": v}
        assert list(run.searches) == shapes and run.shapes == {k: SHAPES[k].description for k in shapes}
        for k, r in run.searches.items():
            assert r.criteria == LOOSE and r.probes, (v, k)
            assert r.plan.max_total_s > 0 and r.plan.min_requests == TOY_PLAN.min_requests
            if r.x_slo_rps is not None:  # confirmed: passed at least twice at that rate
                assert sum(p.passed for p in r.probes if p.offered_rps == r.x_slo_rps) >= 2
            for p in r.probes:
                assert p.sent > 0 and p.passed == (not p.reasons)
                if k == "8":
                    assert p.texts_per_request_mean == 8.0
                if k == "1":
                    assert p.texts_per_request_mean == 1.0


def test_search_variants_against_standin_then_report(tmp_path):
    shapes = ["mix", "1", "8"]
    lines: list[str] = []
    with StandinServer(service_time_s={"dense": 0.02, "pruned": 0.01}) as srv:
        runs, files = search_variants(srv.url, shapes=shapes, cost_shape="mix", deadline=time.monotonic() + 40,
                                      out_dir=tmp_path, criteria=LOOSE, base_plan=TOY_PLAN,
                                      starts={"dense": 4.0, "pruned": 8.0}, say=lines.append)
    assert set(runs) == {"dense", "pruned"}
    _check_runs(runs, files, shapes)
    # the costed shape of both variants was searched first, the first ramps from `starts`
    searched = [(v, k) for ln in lines for v in ("pruned", "dense") for k in shapes
                if ln.strip().startswith(f"{v} at {SHAPES[k].description}: ramp from ")]
    assert searched == [(v, k) for k in shapes for v in ("pruned", "dense")]
    assert runs["pruned"].searches["mix"].plan.start_rps == 8.0 and runs["pruned"].searches["mix"].plan.growth == 2.0
    for v, run in runs.items():  # later shapes ramp from the variant's mix X_slo, by 1.5
        if run.searches["mix"].x_slo_rps is not None:
            assert run.searches["1"].plan.growth == 1.5
            assert run.searches["1"].plan.start_rps > run.searches["8"].plan.start_rps
    with Image.open(tmp_path / "capacity.png") as im:
        im.verify()

    report, data = build_report(capacity=[files["dense"], files["pruned"]], prices=PRICES,
                                config=ReportConfig(cost_shape="mix"))
    write_report(report, data, tmp_path / "report")
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert doc["cost_shape"] == "mix" and doc["cost_shape_description"] == SHAPES["mix"].description
    assert doc["criteria"] == LOOSE.model_dump()
    for v, run in runs.items():
        got = doc["variants"][v]
        assert got["x_slo_rps"] == run.searches["mix"].x_slo_rps
        assert {k: s["x_slo_rps"] for k, s in got["shapes"].items()} == {
            k: r.x_slo_rps for k, r in run.searches.items()}
        assert [s["offered_rps"] for s in got["steps"]] == [p.offered_rps for p in run.searches["mix"].probes]
    md = (tmp_path / "report" / "report.md").read_text()
    for k in shapes:
        assert SHAPES[k].description in md


def test_search_variants_against_real_service_then_cli_report(serve_app, tmp_path):
    shapes = ["mix", "8"]
    runs, files = search_variants(serve_app.url, shapes=shapes, cost_shape="mix", deadline=time.monotonic() + 40,
                                  out_dir=tmp_path, criteria=LOOSE, base_plan=TOY_PLAN.model_copy(
                                      update={"max_rps": 8.0}),
                                  starts={"dense": 2.0, "pruned": 2.0}, say=lambda _: None)
    _check_runs(runs, files, shapes)
    for run in runs.values():
        assert run.searches["mix"].x_slo_rps is not None  # 2 req/s within 5 s on any machine

    serve_config = tmp_path / "serve_config.yaml"
    serve_config.write_text(yaml.safe_dump(serve_app.config))
    (router,) = [d for d in serve_app.config["applications"][0]["deployments"] if d["name"] == "Router"]
    report_dir = tmp_path / "report"
    assert main(["report", "--capacity", str(files["dense"]), str(files["pruned"]), "--prices", str(PRICES),
                 "--manifest", str(serve_app.artifact_dir), "--serve-config", str(serve_config),
                 "--out-dir", str(report_dir)]) == 0
    doc = json.loads((report_dir / "report.json").read_text())
    for v, run in runs.items():
        got = doc["variants"][v]
        assert got["x_slo_rps"] == run.searches["mix"].x_slo_rps and got["hardware"] == run.hardware
        assert got["fidelity"] is not None
    assert doc["fleet"]["dense_share"] == router["user_config"]["weights"]["dense"]
    # No GPU was measured: the dense variant on every GPU instance is "not measured", with no number.
    gpu_instances = {p.key for p in load_prices(PRICES).instances if p.gpu is not None}
    dense_gpu = [c for c in doc["cells"] if c["variant"] in GPU_VARIANTS and c["instance"] in gpu_instances]
    assert dense_gpu and all(c["status"] == "not_measured" and c["usd_per_million_at_u"] is None for c in dense_gpu)
    for name in ("latency", "x_slo", "usd_per_million"):
        with Image.open(report_dir / doc["files"][name]) as im:
            im.verify()
