"""``twinserve report`` from synthetic typed inputs: numbers equal the inputs, real PNGs, HTML that stands alone.

The report's capacity input is the capacity search's file (``CapacityRun``, one per variant); a dense search with a
GPU named in it also feeds the GPU capacity file of ``make gpu-bench``."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from PIL import Image
from pydantic import BaseModel

from service.artifacts.manifest import CorpusInfo, Fidelity, LatencyRow, Manifest, VariantInfo
from service.bench import BenchCell, BenchResult
from service.capacity_search import (
    CapacityRun,
    LatencyPercentiles,
    ProbeResult,
    SearchPlan,
    SearchResult,
    SloCriteria,
    probe_verdict,
)
from service.cli import main
from service.cost.model import Offer, crossover
from service.cost.prices import load_prices
from service.cost.report import Report, ReportConfig, ReportError, build_report, query_shadow_agreement, write_report
from service.model.encoder import LayerShape

REPO = Path(__file__).resolve().parents[2]
PRICES = REPO / "deploy" / "prices.yaml"


class Box(BaseModel):
    """The server's machine, as a capacity file records it."""
    description: str
    cpu_count: int
    cpu_arch: str
    gpu_model: str | None = None
    instance_type: str | None = None
    cpu_flags: list[str] | None = None


CPU_BOX = Box(description="Test CPU 3000, 2 logical CPUs", cpu_count=2, cpu_arch="x86_64")
T4_BOX = Box(description="g4dn.xlarge, NVIDIA T4", cpu_count=4, cpu_arch="x86_64", gpu_model="Tesla T4",
             instance_type="g4dn.xlarge")


def _search(spec: list[tuple[float, float, float]], slo: SloCriteria) -> SearchResult:
    """A capacity search whose probes are ``spec``: (offered, answered, p99) in the order run; the highest
    pass is repeated (phase confirm) and is X_slo."""
    probes = []
    for offered, answered, p99 in spec:
        reasons = probe_verdict(offered_rps=offered, answered_rps=answered, p99_ms=p99, error_ratio=0.0, criteria=slo)
        n = int(offered * 10)
        probes.append(ProbeResult(
            phase="ramp", offered_rps=offered, window_s=10.0, warmup_s=2.0, sent=n, ok=n, errors=0, error_ratio=0.0,
            answered_rps=answered, achieved_ratio=answered / offered,
            latency=LatencyPercentiles(p50_ms=5.0, p90_ms=p99 / 2, p99_ms=p99, max_ms=p99 * 1.5, mean_ms=6.0),
            status_counts={"200": n}, texts_per_request_mean=1.8, send_lag_p99_ms=0.5, generator_cpu_cores=0.1,
            wall_s=13.0, passed=not reasons, reasons=reasons))
    passed = [p for p in probes if p.passed]
    x = max((p.offered_rps for p in passed), default=None)
    if x is not None:
        probes.append(next(p for p in passed if p.offered_rps == x).model_copy(update={"phase": "confirm"}))
    return SearchResult(criteria=slo, plan=SearchPlan(start_rps=spec[0][0]), status="confirmed" if x else "none",
                        x_slo_rps=x, lower_bound=False, best_single_pass_rps=x,
                        max_answered_rps=max(a for _, a, _ in spec), non_monotone=False, noisy_rps=[], notes=[],
                        elapsed_s=13.0 * len(probes), probes=probes)


MIX = "mix: 80% of requests 1 text, 20% 2-8 texts (the locustfile's default mix)"


def _capacity(tmp_path: Path, name: str, server: Box, specs: dict, slo: SloCriteria | None = None,
              single: dict | None = None) -> list[Path]:
    """Capacity files as ``twinserve capacity --variant V --shapes mix 1`` writes them, one per variant of
    ``specs`` (the mix); at 1 text per request, ``single``'s spec, else the mix's at twice the rates."""
    slo = slo or SloCriteria()
    paths = []
    for v, spec in specs.items():
        one = (single or {}).get(v) or [(o * 2, a * 2, p) for o, a, p in spec]
        run = CapacityRun(created_at=datetime.now(timezone.utc), url="http://127.0.0.1:8000/v1/embeddings",
                          headers={"X-Variant": v}, variant=v, hardware=server.description, cpu_count=server.cpu_count,
                          cpu_arch=server.cpu_arch, gpu_model=server.gpu_model, instance_type=server.instance_type,
                          cpu_flags=server.cpu_flags or [], shapes={"mix": MIX, "1": "1 text per request"},
                          searches={"mix": _search(spec, slo), "1": _search(one, slo)})
        path = tmp_path / f"{Path(name).stem}-{v}.json"
        path.write_text(run.model_dump_json(indent=2))
        paths.append(path)
    return paths


def _manifest(tmp_path: Path) -> Path:
    layers = [LayerShape(heads=4, ffn=64, source_index=i) for i in range(2)]
    variant = dict(layers=layers, parameters=1000, encoder_parameters=500, flops_per_token={"128": 10})
    m = Manifest(
        name="tiny", created_at=datetime.now(timezone.utc), fingerprint="f", source_model="tiny",
        source_model_sha256="0" * 64, max_tokens=128, criterion="taylor", schedule={}, config={},
        corpus=CorpusInfo(source="wordnet", path=None, sha256="0" * 64, n_train=100, n_heldout=64),
        dense=VariantInfo(onnx_file="dense.onnx", precision="fp32", **variant),
        pruned=VariantInfo(onnx_file="pruned.onnx", precision="int8", **variant,
                           fidelity=Fidelity(mean_cosine=0.931, p5_cosine=0.85, recall_at_10=0.71, n_texts=64)),
        candidates={}, quantization={}, latency_hardware="test",
        latency=[LatencyRow(variant="dense", batch=1, seq_len=16, median_ms=1.0, p90_ms=1.0, runs=1)],
        build_seconds=1.0, files={})
    d = tmp_path / "artifacts"
    d.mkdir()
    (d / "manifest.json").write_text(m.model_dump_json())
    return d


def _bench(tmp_path: Path) -> Path:
    b = BenchResult(created_at=datetime.now(timezone.utc), artifact_dir="a", hardware="Test CPU 3000", cpu_count=2,
                    threads=2, device="cpu",
                    cells=[BenchCell(variant="dense", batch=1, seq_len=16, median_ms=4.0, p90_ms=5.0, runs=3,
                                     texts_per_s=250.0, speedup_vs_dense=1.0),
                           BenchCell(variant="pruned", batch=1, seq_len=16, median_ms=1.0, p90_ms=1.2, runs=3,
                                     texts_per_s=1000.0, speedup_vs_dense=4.0)])
    p = tmp_path / "bench.json"
    p.write_text(b.model_dump_json())
    return p


CPU_SPECS = {"dense": [(10, 10.0, 40), (20, 19.8, 80), (40, 30.0, 300)],
             "pruned": [(10, 10.0, 10), (20, 20.0, 12), (40, 39.5, 30), (80, 79.0, 95)]}


def _cell(report: Report, variant: str, instance: str):
    return next(c for c in report.cells if c.variant == variant and c.instance == instance)


def test_report_numbers_equal_inputs_and_files_are_valid(tmp_path):
    lt = _capacity(tmp_path, "loadtest.json", CPU_BOX, CPU_SPECS)
    report, data = build_report(capacity=lt, prices=PRICES, bench=_bench(tmp_path), manifest=_manifest(tmp_path),
                                config=ReportConfig(utilisation=0.7, dense_share=0.25))
    out = tmp_path / "report"
    files = write_report(report, data, out)

    src = {p.name: CapacityRun.model_validate_json(p.read_text()) for p in lt}
    doc = json.loads((out / "report.json").read_text())
    Report.model_validate(doc)  # the file is the typed model, unknown keys rejected
    for v in ("dense", "pruned"):
        run = src[f"loadtest-{v}.json"]
        assert doc["variants"][v]["x_slo_rps"] == run.searches["mix"].x_slo_rps  # the costed shape: the mix
        assert doc["variants"][v]["shape"] == "mix" and doc["variants"][v]["shape_description"] == MIX
        assert doc["variants"][v]["shapes"]["1"]["x_slo_rps"] == run.searches["1"].x_slo_rps
        assert doc["variants"][v]["shapes"]["mix"]["costed"] and not doc["variants"][v]["shapes"]["1"]["costed"]
        assert [s["offered_rps"] for s in doc["variants"][v]["steps"]] == [
            p.offered_rps for p in run.searches["mix"].probes]
        assert doc["variants"][v]["slo_p99_ms"] == 100.0
        assert doc["variants"][v]["hardware"] == "Test CPU 3000, 2 logical CPUs"
    assert doc["variants"]["dense"]["x_slo_rps"] == 20.0  # 40 req/s failed (p99 300 ms)
    assert doc["variants"]["pruned"]["x_slo_rps"] == 80.0
    assert doc["variants"]["pruned"]["shapes"]["1"]["x_slo_rps"] == 160.0
    assert doc["cost_shape"] == "mix" and doc["cost_shape_description"] == MIX

    prices = {p.instance_type: p.price_usd_per_hour for p in load_prices(PRICES).instances}
    cells = {(c["variant"], c["instance"]): c for c in doc["cells"]}
    assert len(cells) == 2 * len(prices)
    c = cells[("pruned", "c7i.xlarge")]  # 2 CPUs measured -> 4 vCPUs: linear in cores, projected
    x = 80.0 * 4 / 2
    assert c["projected"] is True and "linear in cores" in c["projection_rule"]
    assert c["capacity_rps"] == pytest.approx(x)
    assert c["usd_per_million_at_u"] == pytest.approx(0.1785 * 1e6 / (3600 * 0.7 * x))
    assert c["usd_per_million_at_u1"] == pytest.approx(0.1785 * 1e6 / (3600 * 1.0 * x))
    assert cells[("pruned", "c7i.2xlarge")]["capacity_rps"] == pytest.approx(80.0 * 8 / 2)
    for gpu in ("g4dn.xlarge", "g5.xlarge", "g6.xlarge"):  # never measured on a GPU: no invented figure
        d = cells[("dense", gpu)]
        assert d["status"] == "not_measured" and d["usd_per_million_at_u"] is None and d["capacity_rps"] is None
        assert cells[("pruned", gpu)]["status"] == "not_applicable"
    assert cells[("pruned", "t4g.xlarge")]["burstable"]
    for arm in ("c7g.xlarge", "t4g.xlarge"):  # measured on x86_64: not carried to arm64, and said so
        c = cells[("pruned", arm)]
        assert c["status"] == "not_comparable" and c["cross_arch"] and c["capacity_rps"] is None
        assert c["usd_per_million_at_u"] is None and "not comparable" in c["note"]
    # the same $/1M, keyed by variant then instance, with the projected flag
    for (v, inst), c in cells.items():
        m = doc["usd_per_million"][v][inst]
        assert (m["usd_per_million_at_u"], m["usd_per_million_at_u1"], m["projected"]) == (
            c["usd_per_million_at_u"], c["usd_per_million_at_u1"], c["projected"])
    assert doc["criteria"] == {"slo_p99_ms": 100.0, "max_error_ratio": 0.001, "min_achieved_ratio": 0.95}

    fleet = doc["fleet"]
    assert fleet["choices"]["pruned"]["instance"] == "c6i.xlarge"  # cheapest like-for-like (not t4g, not arm64)
    offers = {v: Offer(v, ch["instance"], ch["price_usd_per_hour"], ch["capacity_rps"])
              for v, ch in fleet["choices"].items()}
    expected = crossover(offers["dense"], offers["pruned"], 0.7)
    assert fleet["crossover"]["rate_rps"] == expected.rate_rps
    assert fleet["blended_usd_per_million_at_u"] == pytest.approx(
        0.25 * offers["dense"].usd_per_million(0.7) + 0.75 * offers["pruned"].usd_per_million(0.7))
    zero = next(r for r in fleet["table"] if r["rate_rps"] == 0)
    assert zero["instances"] == {"dense": 1, "pruned": 1, "split_dense": 1, "split_pruned": 1}  # the floor
    assert doc["variants"]["pruned"]["fidelity"]["mean_cosine"] == 0.931
    assert doc["variants"]["dense"]["fidelity"]["mean_cosine"] == 1.0
    assert doc["bench"]["rows"][1]["speedup_vs_dense"] == 4.0

    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {"latency_vs_load.png", "x_slo.png", "usd_per_million.png", "fleet_cost.png",
                                      "fidelity_vs_cost.png"}
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 300
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert "<script" not in html and "<link" not in html
    assert html.count('src="data:image/png;base64,') == len(pngs)
    md = (out / "report.md").read_text()
    for p in pngs:
        assert f"]({p.name})" in md
    assert "not measured" in md and "projected" in md and "Test CPU 3000" in md
    assert "p99 <= 100 ms timed from the scheduled send (open loop), errors < 0.10%, answered rate >= 95% of " \
           "offered, and confirmed by a repeat" in md
    assert f"request shape **mix** ({MIX})" in md  # the traffic behind the costed X_slo
    assert f"| pruned | {MIX} | 80 **(costed)** |" in md
    assert "| pruned | 1 text per request | 160 |" in md
    assert set(report.files) >= {"markdown", "html", "json"} and files["json"].is_file()


def test_gpu_measurement_prices_its_own_gpu_only(tmp_path):
    cpu = _capacity(tmp_path, "cpu.json", CPU_BOX, CPU_SPECS)
    gpu = _capacity(tmp_path, "gpu.json", T4_BOX, {"dense": [(100, 100.0, 20), (200, 199.0, 60), (400, 300.0, 500)]})
    report, data = build_report(capacity=cpu + gpu, prices=PRICES)
    g4 = _cell(report, "dense", "g4dn.xlarge")
    assert g4.status == "measured" and not g4.projected and g4.capacity_rps == 200.0
    assert g4.usd_per_million_at_u == pytest.approx(0.526 * 1e6 / (3600 * 0.7 * 200.0))
    assert _cell(report, "dense", "g5.xlarge").status == "not_measured"  # an A10G is not a T4
    assert report.variants["dense"].other_measurements[0].gpu_model == "Tesla T4"
    write_report(report, data, tmp_path / "r")


def test_no_capacity_and_missing_variant_degrade_with_notes(tmp_path):
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, {"dense": [(10, 5.0, 500)], "pruned": [(10, 10.0, 10)]})
    report, data = build_report(capacity=lt, prices=PRICES)
    assert report.variants["dense"].x_slo_rps is None
    assert _cell(report, "dense", "c7i.xlarge").status == "no_capacity"
    assert report.fleet is None and any("missing: dense" in n for n in report.notes)
    write_report(report, data, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "no rate met the SLO twice" in md
    # No fleet, but the variant with a capacity keeps its cheapest $/1M beside its fidelity.
    pruned_cells = report.usd_per_million["pruned"]
    cheapest = min((c.usd_per_million_at_u, i) for i, c in pruned_cells.items() if c.usd_per_million_at_u is not None)
    row = next(line for line in md.split("## Fidelity beside cost")[1].splitlines() if line.startswith("| pruned |"))
    usd = f"${cheapest[0]:,.2f}" if cheapest[0] >= 1 else f"${cheapest[0]:.4g}"
    assert row.endswith(f"| {usd} on {cheapest[1]} |"), row


def test_live_shadow_agreement_from_prometheus_api(tmp_path):
    seen = []

    def fetch(url: str) -> bytes:
        seen.append(url)
        value = "0.97" if "%2F" in url else "1234"  # the mean query divides, the count query does not
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"variant": "pruned"}, "value": [1700000000, value]}]}}).encode()

    live = query_shadow_agreement("http://prom:9090/", window="30m", fetch=fetch)
    assert live["pruned"].mean_cosine == 0.97 and live["pruned"].samples == 1234
    assert all(u.startswith("http://prom:9090/api/v1/query?query=") for u in seen) and "30m" in seen[0]
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    report, _ = build_report(capacity=lt, prices=PRICES, prometheus_url="http://prom:9090", fetch=fetch)
    assert report.variants["pruned"].live_shadow.mean_cosine == 0.97
    assert "no shadow samples" in report.variants["dense"].live_shadow.note

    def broken(url: str) -> bytes:
        return json.dumps({"status": "error", "error": "parse error"}).encode()

    with pytest.raises(ReportError, match="Prometheus rejected"):
        query_shadow_agreement("http://prom:9090", fetch=broken)


def test_bad_inputs_fail_in_words(tmp_path):
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    with pytest.raises(ReportError, match="not found"):
        build_report(capacity=[tmp_path / "missing.json"], prices=PRICES)
    with pytest.raises(ReportError, match="no price row 'x9.huge'"):
        build_report(capacity=lt, prices=PRICES, config=ReportConfig(pruned_instance="x9.huge"))
    with pytest.raises(ReportError, match="not_measured"):
        build_report(capacity=lt, prices=PRICES, config=ReportConfig(dense_instance="g5.xlarge"))


def test_cli_report_writes_and_says_where(tmp_path, capsys):
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    out = tmp_path / "rep"
    assert main(["report", "--capacity", *map(str, lt), "--out-dir", str(out), "-u", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert f"report written to {out}" in printed.splitlines()[-1]
    assert json.loads((out / "report.json").read_text())["utilisation"] == 0.5
    assert main(["report", "--capacity", str(tmp_path / "none.json"), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twinserve report: error:") and "Traceback" not in err and len(err.splitlines()) == 1


def test_dense_share_from_the_serving_config(tmp_path):
    from service.cost.report import dense_share_from_serve_config

    shipped = yaml.safe_load((REPO / "deploy" / "serve_config.yaml").read_text())
    (router,) = [d for d in shipped["applications"][0]["deployments"] if d["name"] == "Router"]
    want = router["user_config"]["weights"]["dense"]
    assert dense_share_from_serve_config(REPO / "deploy" / "serve_config.yaml") == want

    router["user_config"]["weights"] = {"dense": 0.2, "pruned": 0.8}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(shipped))
    assert dense_share_from_serve_config(tmp_path / "a.yaml") == 0.2
    # without a user_config, the application's args.routing; without either, the serving default
    del router["user_config"]
    shipped["applications"][0]["args"]["routing"] = {"weights": {"dense": 0.9, "pruned": 0.1}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(shipped))
    assert dense_share_from_serve_config(tmp_path / "b.yaml") == 0.9
    del shipped["applications"][0]["args"]["routing"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(shipped))
    assert dense_share_from_serve_config(tmp_path / "c.yaml") == 0.5

    router["user_config"] = {"weights": {"dense": 0.7, "pruned": 0.7}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(shipped))
    with pytest.raises(ReportError, match="weights must sum to 1.0"):
        dense_share_from_serve_config(tmp_path / "d.yaml")
    with pytest.raises(ReportError, match="not found"):
        dense_share_from_serve_config(tmp_path / "missing.yaml")


def test_cli_report_takes_the_split_from_the_serving_config(tmp_path):
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    cfg = yaml.safe_load((REPO / "deploy" / "serve_config.yaml").read_text())
    cfg["applications"][0]["deployments"][0]["user_config"]["weights"] = {"dense": 0.25, "pruned": 0.75}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "rep"
    assert main(["report", "--capacity", *map(str, lt), "--out-dir", str(out), "--serve-config",
                 str(tmp_path / "serve.yaml")]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["fleet"]["dense_share"] == 0.25
    assert any("dense share 0.25 from" in n and "serve.yaml" in n for n in doc["notes"])
    assert main(["report", "--capacity", *map(str, lt), "--out-dir", str(out), "--serve-config",
                 str(tmp_path / "serve.yaml"), "--dense-share", "0.6"]) == 0
    assert json.loads((out / "report.json").read_text())["fleet"]["dense_share"] == 0.6


def test_break_even_per_gpu_instance_is_a_requirement_from_the_cpu_figure(tmp_path):
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    report, data = build_report(capacity=lt, prices=PRICES, config=ReportConfig(utilisation=0.7))
    catalog = load_prices(PRICES)
    gpus = [p for p in catalog.instances if p.gpu is not None]
    assert [b.gpu_instance for b in report.break_even] == [p.key for p in gpus]
    ref = _cell(report, "pruned", "c6i.xlarge")  # the pruned fleet's choice: cheapest like-for-like
    assert report.fleet.choices["pruned"].instance == ref.instance
    for b, p in zip(report.break_even, gpus, strict=True):
        assert b.kind == "requirement" and b.measured_x_slo_rps is None and b.measured_on is None
        assert b.reference_instance == "c6i.xlarge" and b.reference_projected is True
        assert b.required_x_slo_rps == pytest.approx(p.price_usd_per_hour / 0.17 * ref.capacity_rps)
        # at the requirement, dense on the GPU costs per request exactly what pruned costs, at u and at u = 1
        for u in (0.7, 1.0):
            gpu_cost = p.price_usd_per_hour * 1e6 / (3600 * u * b.required_x_slo_rps)
            cpu_cost = ref.usd_per_million_at_u if u == 0.7 else ref.usd_per_million_at_u1
            assert gpu_cost == pytest.approx(cpu_cost)
        assert "required, not measured" in b.verdict
    write_report(report, data, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "GPU break-even (a requirement, not a measurement)" in md and "(requirement)" in md
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert doc["break_even"][0]["required_x_slo_rps"] == pytest.approx(report.break_even[0].required_x_slo_rps)


def test_gpu_capacity_file_is_used_and_labelled_with_its_hardware(tmp_path):
    from service.cost.gpu import gpu_capacity_from_search, load_gpu_capacity

    cpu = _capacity(tmp_path, "cpu.json", CPU_BOX, CPU_SPECS)
    box = T4_BOX.model_copy(update={"cpu_flags": ["avx2", "avx512f", "avx512_vnni"]})
    (search,) = _capacity(tmp_path, "gpu-search.json", box,
                          {"dense": [(100, 100.0, 20), (199, 199.0, 60), (400, 300.0, 500)]})
    cap = gpu_capacity_from_search(CapacityRun.model_validate_json(search.read_text()), search)
    path = tmp_path / "capacity.json"
    path.write_text(cap.model_dump_json(indent=2))
    assert load_gpu_capacity(path).x_slo_rps == pytest.approx(199.0)

    report, data = build_report(capacity=cpu, prices=PRICES, gpu_capacity=[path])
    g4 = _cell(report, "dense", "g4dn.xlarge")
    assert g4.status == "measured" and g4.capacity_rps == pytest.approx(199.0) and g4.measured_on == box.description
    assert g4.measured_cpu_flags == ["avx2", "avx512f", "avx512_vnni"]
    be = {b.gpu_instance: b for b in report.break_even}
    assert be["g4dn.xlarge"].measured_x_slo_rps == pytest.approx(199.0)
    assert box.description in be["g4dn.xlarge"].measured_on and "open-loop capacity search" in be["g4dn.xlarge"].measured_on
    ratio = 199.0 / be["g4dn.xlarge"].required_x_slo_rps
    assert (f"{1 / ratio:.2f}x less" if ratio > 1 else f"{1 / ratio:.2f}x more") in be["g4dn.xlarge"].verdict
    assert be["g5.xlarge"].measured_x_slo_rps is None  # an A10G is not a T4: still only the requirement
    assert any(i.kind == "gpu_capacity" for i in report.inputs)
    write_report(report, data, tmp_path / "r")
    assert "g4dn.xlarge, NVIDIA T4" in (tmp_path / "r" / "report.md").read_text()

    (cpu_only,) = _capacity(tmp_path, "cpu-only.json", CPU_BOX, {"dense": [(10, 10.0, 10)]})
    from service.cost.gpu import GpuCapacityError
    with pytest.raises(GpuCapacityError, match="named no GPU"):
        gpu_capacity_from_search(CapacityRun.model_validate_json(cpu_only.read_text()), cpu_only)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ReportError, match="not a twinserve GPU capacity file"):
        build_report(capacity=cpu, prices=PRICES, gpu_capacity=[tmp_path / "junk.json"])


def test_report_states_the_criteria_its_data_used(tmp_path):
    slo = SloCriteria(slo_p99_ms=250, max_error_ratio=0.01, min_achieved_ratio=0.9)
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS, slo=slo)
    report, data = build_report(capacity=lt, prices=PRICES)
    assert report.criteria.model_dump() == {"slo_p99_ms": 250, "max_error_ratio": 0.01, "min_achieved_ratio": 0.9}
    write_report(report, data, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "p99 <= 250 ms timed from the scheduled send (open loop), errors < 1.00%, answered rate >= 90%" in md
    assert "0.10%" not in md.split("\n\n")[1]
    other = _capacity(tmp_path, "other.json", CPU_BOX, CPU_SPECS,
                      slo=SloCriteria(slo_p99_ms=250, max_error_ratio=0.001))
    with pytest.raises(ReportError, match="different criteria"):
        build_report(capacity=lt + other, prices=PRICES)


def test_cli_report_reads_a_gpu_capacity_file(tmp_path, capsys):
    from service.cost.gpu import gpu_capacity_from_search

    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    (search,) = _capacity(tmp_path, "gpu.json", T4_BOX, {"dense": [(100, 100.0, 20)]})
    cap = tmp_path / "capacity.json"
    cap.write_text(gpu_capacity_from_search(CapacityRun.model_validate_json(search.read_text()), search)
                   .model_dump_json())
    out = tmp_path / "rep"
    assert main(["report", "--capacity", *map(str, lt), "--gpu-capacity", str(cap), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "break-even g4dn.xlarge: measured 100 req/s" in printed
    assert "break-even g5.xlarge: required, not measured" in printed


def test_pruned_fidelity_is_the_served_cpu_variants(tmp_path):
    """Job version 5 manifests name the CPU variant; the report shows its fidelity, not pruned.onnx's."""
    from service.artifacts.manifest import CandidateMeasurement, CpuVariant

    d = _manifest(tmp_path)
    m = Manifest.model_validate_json((d / "manifest.json").read_text())
    served = Fidelity(mean_cosine=0.983, p5_cosine=0.95, recall_at_10=0.868, n_texts=64)
    cand = CandidateMeasurement(name="pruned-openvino-int8", model="pruned", runtime="openvino", precision="int8",
                                fidelity={"heldout": served}, latency_ms={"1x16": 1.0},
                                speedup_vs_dense_fp32={"1x16": 2.0}, meets_floor=True)
    cv = CpuVariant(candidate=cand.name, file="pruned-openvino.xml", files=["pruned-openvino.xml"],
                    runtime="openvino", precision="int8", cpu="Test CPU", cpu_flags=[], threads=2, meets_floor=True,
                    min_mean_cosine=0.97, min_recall_at_10=0.85, summary="chosen")
    (d / "manifest.json").write_text(m.model_copy(update={"frontier": [cand], "cpu_variant": cv}).model_dump_json())
    lt = _capacity(tmp_path, "loadtest.json", CPU_BOX, CPU_SPECS)
    report, _ = build_report(capacity=lt, prices=PRICES, manifest=d,
                             config=ReportConfig(utilisation=0.7, dense_share=0.25))
    assert report.variants["pruned"].fidelity.mean_cosine == 0.983  # not pruned.onnx's 0.931
    assert report.variants["pruned"].fidelity.recall_at_10 == 0.868


def test_costs_use_the_named_request_shape_and_refuse_a_missing_one(tmp_path):
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    report, data = build_report(capacity=lt, prices=PRICES, config=ReportConfig(cost_shape="1"))
    assert report.cost_shape == "1" and report.cost_shape_description == "1 text per request"
    assert report.variants["pruned"].x_slo_rps == 160.0  # the 1-text search, not the mix's 80
    assert _cell(report, "pruned", "c7i.xlarge").capacity_rps == pytest.approx(160.0 * 4 / 2)
    write_report(report, data, tmp_path / "r")
    assert "request shape **1** (1 text per request)" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(ReportError, match=r"has no search at request shape '8' \(it has mix, 1\)"):
        build_report(capacity=lt, prices=PRICES, config=ReportConfig(cost_shape="8"))


def test_a_noisy_search_is_reported_with_both_runs(tmp_path):
    from service.capacity_search import search_capacity

    slo = SloCriteria()
    outcome = {}  # rate -> p99 of each successive probe at that rate: 40 passes once, then fails its repeat

    def probe(rate, phase):  # (30: the search goes on below the refuted 40)
        seq = {10.0: [20.0], 20.0: [30.0], 30.0: [150.0], 40.0: [60.0, 140.0], 60.0: [200.0], 80.0: [400.0]}[rate]
        k = outcome.setdefault(rate, 0)
        outcome[rate] = k + 1
        (p,) = _search([(rate, rate, seq[min(k, len(seq) - 1)])], slo).probes[:1]
        return p.model_copy(update={"phase": phase})

    noisy = search_capacity(probe, SearchPlan(start_rps=10.0, resolution=0.99, max_total_s=1000), slo)
    assert noisy.x_slo_rps == 20.0 and noisy.noisy_rps == [40.0]
    lt = _capacity(tmp_path, "lt.json", CPU_BOX, CPU_SPECS)
    run = CapacityRun.model_validate_json(lt[1].read_text())
    run.searches["mix"] = noisy
    lt[1].write_text(run.model_dump_json())
    report, data = build_report(capacity=lt, prices=PRICES)
    pruned = report.variants["pruned"]
    assert pruned.x_slo_rps == 20.0 and pruned.shapes["mix"].noisy_rps == [40.0]
    at40 = [s for s in pruned.steps if s.offered_rps == 40.0]
    assert [(s.phase, s.passed, s.p99_ms) for s in at40] == [("ramp", True, 60.0), ("confirm", False, 140.0)]
    write_report(report, data, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "noisy at 40 req/s" in md and "40 req/s passed once and failed its repeat: noisy" in md
    assert "| confirm | 40 | 40.0 | 5.0 | 140.0 |" in md and "| ramp | 40 | 40.0 | 5.0 | 60.0 |" in md
