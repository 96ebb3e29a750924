"""``build_report``: capacity files, prices and the other inputs into one :class:`Report`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from service._schema import VARIANTS
from service.capacity_search import CapacityRun, SearchResult
from service.cost.capacity import (
    CapacityFileError,
    Measurement,
    capacity_cells,
    capacity_measurement,
    load_capacity_run,
    search_method,
)
from service.cost.gpu import GpuCapacityError, load_gpu_capacity
from service.cost.prices import PriceCatalog, load_prices
from service.cost.prometheus import Fetch, http_get
from service.cost.report.fleet import break_even_rows, build_fleet
from service.cost.report.inputs import query_shadow_agreement, read_bench, read_manifest, sha256_file
from service.cost.report.schema import (
    BenchRow,
    BenchSummary,
    CostCell,
    Criteria,
    InputFile,
    LiveShadow,
    Report,
    ReportConfig,
    ReportError,
    ShapeCapacity,
    SourcedFidelity,
    StepSummary,
    VariantSummary,
)


def _step(p) -> StepSummary:
    return StepSummary(phase=p.phase, offered_rps=p.offered_rps, achieved_rps=p.answered_rps,
                       p50_ms=p.latency.p50_ms if p.latency else None, p99_ms=p.latency.p99_ms if p.latency else None,
                       error_ratio=p.error_ratio, generator_cpu_cores=p.generator_cpu_cores,
                       generator_late=p.generator_late, passed=p.passed, reasons=p.reasons)


def _shape_capacity(shape: str, description: str, r: SearchResult, costed: bool) -> ShapeCapacity:
    return ShapeCapacity(shape=shape, description=description, x_slo_rps=r.x_slo_rps, status=r.status,
                         lower_bound=r.lower_bound, best_single_pass_rps=r.best_single_pass_rps,
                         max_answered_rps=r.max_answered_rps, non_monotone=r.non_monotone, noisy_rps=r.noisy_rps,
                         probes=len(r.probes), elapsed_s=r.elapsed_s, method=search_method(r), costed=costed,
                         notes=r.notes)


def _variant_summary(run: CapacityRun, shape: str, source: str) -> VariantSummary:
    r = run.searches[shape]
    at_x = [p for p in r.probes if r.x_slo_rps is not None and p.offered_rps == r.x_slo_rps and p.passed
            and p.phase in ("confirm", "step")]
    return VariantSummary(
        variant=run.variant or "routed", x_slo_rps=r.x_slo_rps, shape=shape,
        shape_description=run.shapes.get(shape, shape),
        shapes={k: _shape_capacity(k, run.shapes.get(k, k), v, k == shape) for k, v in run.searches.items()},
        slo_p99_ms=r.criteria.slo_p99_ms, hardware=run.hardware, cpu_count=run.cpu_count, cpu_flags=run.cpu_flags,
        gpu_model=run.gpu_model, instance_type=run.instance_type, source=source,
        generator_cpu_cores_at_x_slo=at_x[-1].generator_cpu_cores if at_x else None,
        generator_late_at_x_slo=at_x[-1].generator_late if at_x else None,
        steps=[_step(p) for p in r.probes], notes=r.notes, fidelity=None, live_shadow=None)


def _read_input(path, load, errors: type[Exception], kind: str, inputs: list[InputFile]):
    """``(path, load(path))``, its error as a ReportError; the file's hash recorded in ``inputs``."""
    try:
        item = load(path)
    except errors as e:
        raise ReportError(str(e)) from None
    inputs.append(InputFile(kind=kind, path=str(path), sha256=sha256_file(Path(path))))
    return Path(path), item


def build_report(
    *,
    capacity: Sequence[Path],
    prices: Path,
    bench: Path | None = None,
    manifest: Path | None = None,
    prometheus_url: str | None = None,
    config: ReportConfig | None = None,
    fetch: Fetch = http_get,
    gpu_capacity: Sequence[Path] = (),
) -> tuple[Report, dict]:
    """Assemble the report's numbers (no files written). Returns the report and what the plots need.

    ``capacity``: capacity files (``twinserve capacity --variant V``, ``twinserve demo``), one per variant;
    the costs use each file's search at ``config.cost_shape``."""
    config = config or ReportConfig()
    if not capacity:
        raise ReportError("give at least one capacity file (`twinserve capacity --variant pruned --shapes 1 8 mix` "
                          "or `twinserve demo` writes one)")
    catalog: PriceCatalog = load_prices(prices)
    inputs = [InputFile(kind="prices", path=str(prices), sha256=sha256_file(Path(prices)))]
    results: list[tuple[Path, CapacityRun]] = [_read_input(p, load_capacity_run, CapacityFileError, "capacity", inputs)
                                               for p in capacity]
    gpu_caps = [_read_input(p, load_gpu_capacity, GpuCapacityError, "gpu_capacity", inputs) for p in gpu_capacity]
    crits = {(s.criteria.slo_p99_ms, s.criteria.max_error_ratio, s.criteria.min_achieved_ratio)
             for _, r in results for s in r.searches.values()}
    crits |= {(g.slo.slo_p99_ms, g.slo.max_error_ratio, g.slo.min_achieved_ratio) for _, g in gpu_caps}
    if len(crits) > 1:
        raise ReportError("the capacities were found with different criteria (p99 ms, error ratio, answered share: "
                          f"{sorted(crits)}); compare runs made with one set")
    if not crits:
        raise ReportError(f"the capacity files hold no search: {', '.join(str(p) for p, _ in results)}")
    slo_p99_ms, max_error_ratio, min_achieved_ratio = crits.pop()
    criteria = Criteria(slo_p99_ms=slo_p99_ms, max_error_ratio=max_error_ratio,
                        min_achieved_ratio=min_achieved_ratio)

    shape = config.cost_shape
    found: list[Measurement] = []
    variants: dict[str, VariantSummary] = {}
    descriptions = set()
    for path, r in results:
        try:
            m = capacity_measurement(r, shape, str(path))
        except CapacityFileError as e:
            raise ReportError(str(e)) from None
        descriptions.add(m.shape_description)
        if m.variant == "routed":
            continue  # a routed run measures the policy's blend, not a variant
        found.append(m)
        if m.variant not in variants:
            variants[m.variant] = _variant_summary(r, shape, str(path))
    for path, g in gpu_caps:
        found.append(g.measurement(str(path)))
    for name, summary in variants.items():
        summary.other_measurements = [m for m in found if m.variant == name and
                                      (m.source, m.hardware) != (summary.source, summary.hardware)]
    notes: list[str] = []
    if results:
        notes.append("the open-loop generator ran on the server's machine (loopback only) and took CPU from it: see "
                     "generator_cpu_cores per probe; capacities are therefore conservative for a dedicated machine")
    if any(p.burstable for p in catalog.instances):
        notes.append("burstable instances (" + ", ".join(p.instance_type for p in catalog.instances if p.burstable)
                     + "): sustained load adds CPU-credit charges that their hourly price excludes")

    if manifest is not None:
        m = read_manifest(Path(manifest))
        mpath = Path(manifest) if Path(manifest).is_file() else Path(manifest) / "manifest.json"
        inputs.append(InputFile(kind="manifest", path=str(mpath), sha256=sha256_file(mpath)))
        for name, info in (("dense", m.dense), ("pruned", m.pruned)):
            if name in variants:
                f = info.fidelity
                if name == "pruned" and m.cpu_variant is not None:  # what the CPU replica serves (job v5+)
                    served = {c.name: c for c in m.frontier}.get(m.cpu_variant.candidate)
                    f = next(iter(served.fidelity.values())) if served is not None else f
                variants[name].fidelity = (
                    SourcedFidelity(mean_cosine=1.0, p5_cosine=1.0, recall_at_10=1.0, n_texts=m.corpus.n_heldout,
                                    source=f"{mpath}: the dense model is the reference") if f is None else
                    SourcedFidelity(**f.model_dump(), source=f"{mpath}: held-out {m.corpus.source} text"))
    else:
        notes.append("no artifact manifest given (--manifest): offline fidelity is not shown")

    if prometheus_url:
        live = query_shadow_agreement(prometheus_url, metric=config.shadow_metric, window=config.shadow_window,
                                      fetch=fetch)
        for name, summary in variants.items():
            summary.live_shadow = live.get(name) or LiveShadow(
                mean_cosine=None, samples=None, query=f"{config.shadow_metric} (variant={name})",
                note=f"no shadow samples for {name} in the last {config.shadow_window}")
    else:
        notes.append("no Prometheus URL given (--prometheus-url): live shadow agreement is not shown")

    bench_summary = None
    if bench is not None:
        b = read_bench(Path(bench))
        inputs.append(InputFile(kind="bench", path=str(bench), sha256=sha256_file(Path(bench))))
        bench_summary = BenchSummary(
            hardware=b.hardware, device=b.device, threads=b.threads, source=str(bench),
            rows=[BenchRow(variant=c.variant, batch=c.batch, seq_len=c.seq_len, median_ms=c.median_ms,
                           texts_per_s=c.texts_per_s, speedup_vs_dense=c.speedup_vs_dense)
                  for c in sorted(b.cells, key=lambda c: (c.batch, c.seq_len, c.variant))])

    cells = capacity_cells(found, catalog.instances, [v for v in VARIANTS if v in variants], config.utilisation)
    fleet, plot_data = build_fleet(cells, config)
    breaks = break_even_rows(cells, catalog, found, config)
    if fleet is not None and config.dense_share_source:
        notes.append(f"A/B split: dense share {config.dense_share:g} from {config.dense_share_source}")
    if fleet is None:
        notes.append("fleet cost and crossover need a capacity figure for both variants; missing: "
                     + ", ".join(plot_data["missing"]))
    per_m: dict[str, dict[str, CostCell]] = {}
    for c in cells:
        per_m.setdefault(c.variant, {})[c.instance] = CostCell(
            usd_per_million_at_u=c.usd_per_million_at_u, usd_per_million_at_u1=c.usd_per_million_at_u1,
            projected=c.projected, status=c.status, capacity_rps=c.capacity_rps)
    report = Report(created_at=datetime.now(timezone.utc), inputs=inputs, utilisation=config.utilisation,
                    slo_p99_ms=slo_p99_ms, criteria=criteria, cost_shape=shape,
                    cost_shape_description=" / ".join(sorted(descriptions)), variants=variants,
                    prices=catalog.instances, cells=cells,
                    usd_per_million=per_m, break_even=breaks, fleet=fleet, bench=bench_summary, notes=notes)
    plot_data["results"] = results
    return report, plot_data
