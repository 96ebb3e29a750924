"""``twinserve report``: capacity files + bench + manifest + prices (+ Prometheus) → report.md/.html/.json + PNGs.

Capacity comes from one input format: the capacity search's file (:class:`CapacityRun`, written by
``twinserve capacity --variant V`` and ``twinserve demo``), one per variant, each with X_slo per
request shape (1 text, 8 texts, the locustfile's mix). The costs use one shape (``cost_shape``,
the mix by default), and the report says which, beside every X_slo. (The GPU capacity file of
``make gpu-bench`` is a separate, GPU-only input for the break-even.)

``report.json`` is the machine-readable truth (:class:`Report`); the Markdown and the
self-contained HTML (plots inline as base64) are rendered from the same numbers. Every
capacity names the hardware it was measured on; projected figures say so and give their
rule; cells that no measurement covers say "not measured" and carry no number.
"""

from __future__ import annotations

import hashlib
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.capacity_search import CapacityRun, SearchResult, plot_searches
from service.cost import _plots
from service.cost._doc import Doc
from service.cost._hardware import feature_names
from service.cost.capacity import (
    CapacityCell,
    CapacityFileError,
    Measurement,
    capacity_cells,
    capacity_measurement,
    load_capacity_run,
    search_method,
)
from service.cost.gpu import BreakEven, GpuCapacityError, break_even_x_slo, load_gpu_capacity
from service.cost.model import Crossover, Offer, blended_usd_per_million, crossover, split_fleet
from service.cost.prices import InstancePrice, PriceCatalog, load_prices

__all__ = [
    "DEFAULT_SHADOW_METRIC",
    "Report",
    "ReportConfig",
    "ReportError",
    "build_report",
    "dense_share_from_serve_config",
    "query_shadow_agreement",
    "write_report",
]

# Ray prefixes custom metrics with ray_. The mean agreement is <prefix>_cosine_sum_total /
# <prefix>_texts_total: exact counters (a Ray histogram's _sum is made of bucket midpoints).
DEFAULT_SHADOW_METRIC = "ray_twinserve_shadow"
VARIANTS = ("dense", "pruned")


class ReportError(ValueError):
    """An input of the report is missing or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReportConfig(_Strict):
    utilisation: float = Field(0.7, gt=0, le=1, description="target utilisation u of each instance")
    dense_share: float = Field(0.5, ge=0, le=1, description="share of routed traffic sent to dense in the A/B split")
    dense_share_source: str | None = Field(
        None, description="where dense_share came from (e.g. the serving config), shown in the report's notes")
    dense_instance: str | None = Field(None, description="instance for the dense fleet (default: cheapest $/1M)")
    pruned_instance: str | None = Field(None, description="instance for the pruned fleet (default: cheapest $/1M)")
    traffic_max_rps: float | None = Field(None, gt=0, description="right end of the fleet-cost plot, req/s")
    shadow_window: str = Field("1h", pattern=r"^\d+[smhdw]$", description="PromQL range for live shadow agreement")
    cost_shape: str = Field("mix", description="request shape whose X_slo the costs use (1, 8, mix: the "
                                               "locustfile's traffic mix)")
    shadow_metric: str = Field(DEFAULT_SHADOW_METRIC, description="prefix of the shadow counters (<prefix>_cosine_sum_total, <prefix>_texts_total), label `variant`")


class Criteria(_Strict):
    """What every capacity in the report had to meet, as the load tests recorded it."""

    slo_p99_ms: float = Field(description="client-side p99 latency within which a rate counts, ms")
    max_error_ratio: float = Field(description="errors must stay below this share of requests")
    min_achieved_ratio: float = Field(description="answered rate must be at least this share of the offered rate")


class CostCell(_Strict):
    usd_per_million_at_u: float | None
    usd_per_million_at_u1: float | None
    projected: bool
    status: str
    capacity_rps: float | None


class InputFile(_Strict):
    kind: str
    path: str
    sha256: str


class StepSummary(_Strict):
    """One probe of the capacity search, in the order run."""

    phase: str = Field(description="ramp, bisect or confirm (a repeat)")
    offered_rps: float
    achieved_rps: float = Field(description="200 answers completed inside the window, per second")
    p50_ms: float | None
    p99_ms: float | None
    error_ratio: float
    generator_cpu_cores: float
    generator_late: bool = False
    passed: bool
    reasons: list[str]


class ShapeCapacity(_Strict):
    """X_slo of one variant at one request shape, as its search found it."""

    shape: str
    description: str = Field(description="what each request carries")
    x_slo_rps: float | None = Field(description="confirmed X_slo (passed twice), req/s; None: none confirmed")
    status: str = Field(description="the search's status: confirmed, none, unconfirmed, budget")
    lower_bound: bool
    best_single_pass_rps: float | None
    max_answered_rps: float
    non_monotone: bool
    noisy_rps: list[float]
    probes: int
    elapsed_s: float
    method: str
    costed: bool = Field(description="the costs use this shape's X_slo")
    notes: list[str]


class Fidelity(_Strict):
    mean_cosine: float
    p5_cosine: float
    recall_at_10: float
    n_texts: int
    source: str


class LiveShadow(_Strict):
    mean_cosine: float | None
    samples: float | None
    query: str
    note: str = ""


class VariantSummary(_Strict):
    variant: str
    x_slo_rps: float | None = Field(description="measured X_slo on `hardware` at `shape`, req/s (the figure the "
                                                "costs use); None: no rate met the SLO twice")
    shape: str = Field(description="the request shape of x_slo_rps")
    shape_description: str = Field(description="what each request carried: the traffic mix behind x_slo_rps")
    shapes: dict[str, ShapeCapacity] = Field(description="X_slo at every request shape measured, by shape")
    slo_p99_ms: float
    hardware: str
    cpu_count: int
    cpu_flags: list[str] | None = Field(None, description="GEMM features of the measured CPU; None: not recorded")
    gpu_model: str | None
    instance_type: str | None
    source: str
    generator_cpu_cores_at_x_slo: float | None
    generator_late_at_x_slo: bool | None = Field(description="the generator sent late (p99) at X_slo's confirm probe")
    steps: list[StepSummary] = Field(description="the probes of the costed shape's search")
    notes: list[str]
    fidelity: Fidelity | None = Field(description="from the manifest: agreement with dense on held-out text")
    live_shadow: LiveShadow | None = Field(description="from Prometheus: live shadow agreement")
    other_measurements: list[Measurement] = Field(default_factory=list)


class FleetChoice(_Strict):
    variant: str
    instance: str
    price_usd_per_hour: float
    capacity_rps: float
    projected: bool
    usd_per_million_at_u: float
    usd_per_million_at_u1: float


class FleetRow(_Strict):
    rate_rps: float
    instances: dict[str, int] = Field(description="single-variant fleets serving all of R, and the split fleet")
    usd_per_hour: dict[str, float] = Field(description="keys: dense, pruned (all traffic on it), split")


class CrossoverInfo(_Strict):
    cheaper_at_scale: str | None
    other: str | None
    rate_rps: float | None
    first_cheaper_rps: float | None
    note: str


class Fleet(_Strict):
    utilisation: float
    choices: dict[str, FleetChoice]
    crossover: CrossoverInfo | None
    dense_share: float
    blended_usd_per_million_at_u: float | None = Field(description="A/B split at steady state (floors amortised)")
    blended_usd_per_million_at_u1: float | None
    table: list[FleetRow]
    note: str = ""


class BenchRow(_Strict):
    variant: str
    batch: int
    seq_len: int
    median_ms: float
    texts_per_s: float
    speedup_vs_dense: float | None


class BenchSummary(_Strict):
    hardware: str
    device: str
    threads: int
    source: str
    rows: list[BenchRow]


class Report(_Strict):
    schema_version: int = 2
    created_at: datetime
    inputs: list[InputFile]
    utilisation: float
    slo_p99_ms: float
    criteria: Criteria
    cost_shape: str = Field(description="the request shape whose X_slo the costs use")
    cost_shape_description: str = Field(description="what each request of that shape carries")
    variants: dict[str, VariantSummary]
    prices: list[InstancePrice]
    cells: list[CapacityCell] = Field(description="per variant x instance: $/1M at u and at u = 1, projected or not")
    usd_per_million: dict[str, dict[str, CostCell]] = Field(
        description="the cells' cost, by variant then instance: $/1M at u and at u = 1, projected or not")
    break_even: list[BreakEven] = Field(
        description="per GPU instance: the dense X_slo needed to match the CPU variant's $/1M (a requirement), "
                    "beside the measured one when a GPU capacity file gives it")
    fleet: Fleet | None
    bench: BenchSummary | None
    notes: list[str]
    files: dict[str, str] = Field(default_factory=dict, description="what was written, by role")


# --------------------------------------------------------------------------- inputs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(path: Path):
    from service.artifacts.manifest import ArtifactIntegrityError, load_manifest

    try:
        return load_manifest(path if path.is_dir() else path.parent)
    except ArtifactIntegrityError as e:
        raise ReportError(str(e)) from None


def _bench(path: Path):
    from service.bench import BenchResult

    try:
        return BenchResult.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"bench results {path} not found: run `twinserve bench` first") from None
    except (ValidationError, ValueError) as e:
        raise ReportError(f"{path} is not a twinserve bench result: {e}") from None


Fetch = Callable[[str], bytes]


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (user-supplied Prometheus URL)
        return r.read()


def query_shadow_agreement(prometheus_url: str, *, metric: str = DEFAULT_SHADOW_METRIC, window: str = "1h",
                           fetch: Fetch = _http_get) -> dict[str, LiveShadow]:
    """Mean live shadow cosine and sample count per shadow variant over ``window`` (Prometheus HTTP API)."""
    base = prometheus_url.rstrip("/")
    queries = {
        "mean": f"sum by (variant) (increase({metric}_cosine_sum_total[{window}])) / "
                f"sum by (variant) (increase({metric}_texts_total[{window}]))",
        "count": f"sum by (variant) (increase({metric}_texts_total[{window}]))",
    }
    got: dict[str, dict[str, float]] = {}
    for key, q in queries.items():
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            doc = json.loads(fetch(url))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ReportError(f"Prometheus at {prometheus_url} did not answer `{q}`: {e}") from None
        if doc.get("status") != "success":
            raise ReportError(f"Prometheus rejected `{q}`: {doc.get('error', doc)}")
        got[key] = {}
        for item in doc.get("data", {}).get("result", []):
            v = float(item["value"][1])
            if math.isfinite(v):
                got[key][item.get("metric", {}).get("variant", "unknown")] = v
    out = {}
    for variant in sorted(set(got["mean"]) | set(got["count"])):
        out[variant] = LiveShadow(mean_cosine=got["mean"].get(variant), samples=got["count"].get(variant),
                                  query=queries["mean"])
    return out


def dense_share_from_serve_config(path: str | Path) -> float:
    """The dense routing weight of a Ray Serve config (``deploy/serve_config.yaml``).

    The Router deployment's ``user_config`` wins, as it does when the config is deployed; without one,
    the application's ``args.routing``; without either, the serving default.
    """
    import yaml

    from service.serving.config import RoutingConfig

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"serving config {path} not found; pass --dense-share instead") from None
    except yaml.YAMLError as e:
        raise ReportError(f"{path} is not YAML: {e}") from None
    apps = [a for a in (doc or {}).get("applications") or [] if isinstance(a, dict)]
    ours = [a for a in apps if str(a.get("import_path", "")).startswith("service.serving.app:")] or apps
    if not ours:
        raise ReportError(f"{path} has no applications; pass --dense-share instead")
    app = ours[0]
    routing = next((d.get("user_config") for d in app.get("deployments") or []
                    if d.get("name") == "Router" and d.get("user_config") is not None), None)
    if routing is None:
        routing = (app.get("args") or {}).get("routing") or {}
    try:
        return RoutingConfig.model_validate(routing).weights.dense
    except ValidationError as e:
        raise ReportError(f"{path}: the Router's routing config is invalid: {e}") from None


# --------------------------------------------------------------------------- building


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
    at_x = [p for p in r.probes if r.x_slo_rps is not None and p.offered_rps == r.x_slo_rps and p.phase == "confirm"]
    return VariantSummary(
        variant=run.variant or "routed", x_slo_rps=r.x_slo_rps, shape=shape,
        shape_description=run.shapes.get(shape, shape),
        shapes={k: _shape_capacity(k, run.shapes.get(k, k), v, k == shape) for k, v in run.searches.items()},
        slo_p99_ms=r.criteria.slo_p99_ms, hardware=run.hardware, cpu_count=run.cpu_count, cpu_flags=run.cpu_flags,
        gpu_model=run.gpu_model, instance_type=run.instance_type, source=source,
        generator_cpu_cores_at_x_slo=at_x[-1].generator_cpu_cores if at_x else None,
        generator_late_at_x_slo=at_x[-1].generator_late if at_x else None,
        steps=[_step(p) for p in r.probes], notes=r.notes, fidelity=None, live_shadow=None)


def _choose(cells: Sequence[CapacityCell], variant: str, wanted: str | None) -> CapacityCell | None:
    mine = [c for c in cells if c.variant == variant]
    if wanted is not None:
        cell = next((c for c in mine if c.instance == wanted or c.instance.split(" ")[0] == wanted), None)
        if cell is None:
            raise ReportError(f"no price row {wanted!r} for the {variant} fleet; known: "
                              f"{', '.join(c.instance for c in mine)}")
        if cell.usd_per_million_at_u is None:
            raise ReportError(f"{variant} on {wanted} has no capacity figure ({cell.status}): {cell.note}")
        return cell
    # Automatic choice: a like-for-like figure first (not burstable, not carried across CPU architectures).
    priced = [c for c in mine if c.usd_per_million_at_u is not None]
    return min(priced, key=lambda c: (c.burstable, c.cross_arch, c.usd_per_million_at_u, c.projected)) \
        if priced else None


def _nice_rates(top: float, extra: Sequence[float]) -> list[float]:
    rates = {0.0}
    k = 1.0
    while k <= top * 1.0001:
        rates.update(x for x in (k, 2 * k, 5 * k) if x <= top * 1.0001)
        k *= 10
    rates.update(x for x in extra if x is not None and 0 <= x <= top)
    return sorted(rates)


def _fleet(cells: Sequence[CapacityCell], config: ReportConfig) -> tuple[Fleet | None, dict]:
    u = config.utilisation
    chosen = {v: _choose(cells, v, getattr(config, f"{v}_instance")) for v in VARIANTS}
    missing = [v for v, c in chosen.items() if c is None]
    if missing:
        return None, {"missing": missing}
    offers = {v: Offer(v, c.instance, c.price_usd_per_hour, c.capacity_rps) for v, c in chosen.items()}
    cross: Crossover = crossover(offers["dense"], offers["pruned"], u)
    shares = {"dense": config.dense_share, "pruned": 1.0 - config.dense_share}
    per_m = {v: offers[v].usd_per_million(u) for v in VARIANTS}
    per_m1 = {v: offers[v].usd_per_million(1.0) for v in VARIANTS}
    top = config.traffic_max_rps or max(
        2.5 * (cross.rate_rps or 0.0), 20 * u * max(o.x_slo_rps for o in offers.values()))

    def row(r: float) -> FleetRow:
        counts, split_cost = split_fleet(r, offers, shares, u)
        inst = {v: offers[v].instances(r, u) for v in VARIANTS}
        inst.update({f"split_{v}": counts[v] for v in VARIANTS})
        cost = {v: offers[v].fleet_usd_per_hour(r, u) for v in VARIANTS}
        cost["split"] = split_cost
        return FleetRow(rate_rps=r, instances=inst, usd_per_hour=cost)

    table = [row(r) for r in _nice_rates(top, [cross.rate_rps, cross.first_cheaper_rps])]
    fleet = Fleet(
        utilisation=u,
        choices={v: FleetChoice(variant=v, instance=c.instance, price_usd_per_hour=c.price_usd_per_hour,
                                capacity_rps=c.capacity_rps, projected=c.projected,
                                usd_per_million_at_u=c.usd_per_million_at_u,
                                usd_per_million_at_u1=c.usd_per_million_at_u1) for v, c in chosen.items()},
        crossover=CrossoverInfo(cheaper_at_scale=cross.cheaper_at_scale, other=cross.other, rate_rps=cross.rate_rps,
                                first_cheaper_rps=cross.first_cheaper_rps, note=cross.note),
        dense_share=config.dense_share,
        blended_usd_per_million_at_u=blended_usd_per_million(per_m, shares),
        blended_usd_per_million_at_u1=blended_usd_per_million(per_m1, shares),
        table=table,
        note="each single-variant fleet serves all of R on its own; the split fleet sends dense_share of R to dense "
             "and the rest to pruned; every fleet keeps at least one instance per variant it runs")
    lo = min(1.0, top / 1000, *(x / 10 for x in (cross.rate_rps, cross.first_cheaper_rps) if x))
    steps = 800
    grid = sorted({lo * (top / lo) ** (i / steps) for i in range(steps + 1)}
                  | {r.rate_rps for r in table if r.rate_rps >= lo})
    curves = {"dense": [offers["dense"].fleet_usd_per_hour(r, u) for r in grid],
              "pruned": [offers["pruned"].fleet_usd_per_hour(r, u) for r in grid],
              "split": [split_fleet(r, offers, shares, u)[1] for r in grid]}
    return fleet, {"grid": grid, "curves": curves, "offers": offers}


def _break_even(cells: Sequence[CapacityCell], catalog: PriceCatalog, found: Sequence[Measurement],
                config: ReportConfig) -> list[BreakEven]:
    """Per GPU instance: dense X_slo needed to match the CPU variant's $/1M on its chosen instance."""
    ref = _choose(cells, "pruned", config.pruned_instance) if any(c.variant == "pruned" for c in cells) else None
    u = config.utilisation
    out = []
    for price in catalog.instances:
        if price.gpu is None:
            continue
        cell = next((c for c in cells if c.variant == "dense" and c.instance == price.key), None)
        measured = cell if cell is not None and cell.status in ("measured", "projected") else None
        m = None
        if measured is not None:
            m = next((m for m in found if m.variant == "dense" and m.hardware == measured.measured_on
                      and m.gpu_model), None)
        if ref is None or ref.capacity_rps is None:
            required = None
            verdict = "no break-even: the CPU variant has no capacity figure on a priced CPU instance"
        else:
            required = break_even_x_slo(price.price_usd_per_hour, ref.price_usd_per_hour, ref.capacity_rps)
            if measured is None or m is None:
                verdict = (f"required, not measured: dense must serve at least {required:.4g} req/s within the SLO on "
                           f"one {price.instance_type} ({price.gpu.count}x {price.gpu.model}) to cost no more per "
                           f"request than pruned on {ref.instance}; no GPU capacity file covers a {price.gpu.model}")
            else:
                ratio = measured.capacity_rps / required
                verdict = (f"measured {measured.capacity_rps:.4g} req/s on {m.gpu_model} ({m.hardware}) vs "
                           f"{required:.4g} required: dense on {price.instance_type} costs "
                           + (f"{1 / ratio:.2f}x less" if ratio > 1 else f"{1 / ratio:.2f}x more")
                           + f" per request than pruned on {ref.instance}")
        out.append(BreakEven(
            gpu_instance=price.key, gpu_model=price.gpu.model, gpu_count=price.gpu.count,
            price_usd_per_hour=price.price_usd_per_hour, required_x_slo_rps=required,
            reference_variant="pruned", reference_instance=ref.instance if ref else None,
            reference_price_usd_per_hour=ref.price_usd_per_hour if ref else None,
            reference_capacity_rps=ref.capacity_rps if ref else None,
            reference_projected=ref.projected if ref else None,
            reference_usd_per_million_at_u=ref.usd_per_million_at_u if ref else None,
            reference_usd_per_million_at_u1=ref.usd_per_million_at_u1 if ref else None,
            formula=f"X_gpu = price_gpu / price_cpu x X_cpu (both fleets at u = {u:g}, so u cancels; the same "
                    "holds at u = 1)",
            measured_x_slo_rps=measured.capacity_rps if m is not None else None,
            measured_on=f"{m.hardware}: {m.method}" if m is not None else None,
            measured_source=m.source if m is not None else None, verdict=verdict))
    return out


def build_report(
    *,
    capacity: Sequence[Path],
    prices: Path,
    bench: Path | None = None,
    manifest: Path | None = None,
    prometheus_url: str | None = None,
    config: ReportConfig | None = None,
    fetch: Fetch = _http_get,
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
    inputs = [InputFile(kind="prices", path=str(prices), sha256=_sha256(Path(prices)))]
    results: list[tuple[Path, CapacityRun]] = []
    for p in capacity:
        try:
            results.append((Path(p), load_capacity_run(p)))
        except CapacityFileError as e:
            raise ReportError(str(e)) from None
        inputs.append(InputFile(kind="capacity", path=str(p), sha256=_sha256(Path(p))))
    gpu_caps = []
    for p in gpu_capacity:
        try:
            gpu_caps.append((Path(p), load_gpu_capacity(p)))
        except GpuCapacityError as e:
            raise ReportError(str(e)) from None
        inputs.append(InputFile(kind="gpu_capacity", path=str(p), sha256=_sha256(Path(p))))
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
        m = _manifest(Path(manifest))
        mpath = Path(manifest) if Path(manifest).is_file() else Path(manifest) / "manifest.json"
        inputs.append(InputFile(kind="manifest", path=str(mpath), sha256=_sha256(mpath)))
        for name, info in (("dense", m.dense), ("pruned", m.pruned)):
            if name in variants:
                f = info.fidelity
                if name == "pruned" and m.cpu_variant is not None:  # what the CPU replica serves (job v5+)
                    served = {c.name: c for c in m.frontier}.get(m.cpu_variant.candidate)
                    f = next(iter(served.fidelity.values())) if served is not None else f
                variants[name].fidelity = (
                    Fidelity(mean_cosine=1.0, p5_cosine=1.0, recall_at_10=1.0, n_texts=m.corpus.n_heldout,
                             source=f"{mpath}: the dense model is the reference") if f is None else
                    Fidelity(mean_cosine=f.mean_cosine, p5_cosine=f.p5_cosine, recall_at_10=f.recall_at_10,
                             n_texts=f.n_texts, source=f"{mpath}: held-out {m.corpus.source} text"))
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
        b = _bench(Path(bench))
        inputs.append(InputFile(kind="bench", path=str(bench), sha256=_sha256(Path(bench))))
        bench_summary = BenchSummary(
            hardware=b.hardware, device=b.device, threads=b.threads, source=str(bench),
            rows=[BenchRow(variant=c.variant, batch=c.batch, seq_len=c.seq_len, median_ms=c.median_ms,
                           texts_per_s=c.texts_per_s, speedup_vs_dense=c.speedup_vs_dense)
                  for c in sorted(b.cells, key=lambda c: (c.batch, c.seq_len, c.variant))])

    cells = capacity_cells(found, catalog.instances, [v for v in VARIANTS if v in variants], config.utilisation)
    fleet, plot_data = _fleet(cells, config)
    breaks = _break_even(cells, catalog, found, config)
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


# --------------------------------------------------------------------------- rendering


def _f(x: float | None, fmt: str = ".3g", none: str = "n/a") -> str:
    return none if x is None else format(x, fmt)


def _usd(x: float | None, status: str = "not_measured") -> str:
    if x is None:
        return {"not_applicable": "n/a", "no_capacity": "no capacity within SLO",
                "not_comparable": "not comparable"}.get(status, "not measured")
    return f"${x:.4g}" if x < 1 else f"${x:,.2f}"


def _plots_for(report: Report, data: dict, out_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    panels: dict[str, dict[str, SearchResult]] = {}
    rows = []
    for _, r in data["results"]:
        label = f"{r.variant or 'routed'} @ {r.instance_type or r.hardware[:32]}"
        for k, search in r.searches.items():
            panels.setdefault(r.shapes.get(k, k), {})[label] = search
            rows.append((r.variant or "routed", f"{label}, {k} ({'costed' if k == report.cost_shape else 'shape'})",
                         search.x_slo_rps))
    files["latency"] = plot_searches(panels, out_dir / "latency_vs_load.png",
                                     title="capacity searches: latency from the scheduled send vs offered load")
    files["x_slo"] = _plots.x_slo_bars(rows, report.slo_p99_ms, out_dir / "x_slo.png")
    instances = [p.key for p in report.prices]
    vs = sorted({c.variant for c in report.cells})
    cells = {(c.variant, c.instance): (c.usd_per_million_at_u, c.projected, c.status) for c in report.cells}
    files["usd_per_million"] = _plots.usd_per_million_bars(instances, vs, cells, report.utilisation,
                                                           out_dir / "usd_per_million.png")
    if report.fleet is not None:
        ch = report.fleet.choices
        labels = {v: f"{v} only on {ch[v].instance}" + (" (projected)" if ch[v].projected else "") for v in VARIANTS}
        labels["split"] = f"A/B split, {report.fleet.dense_share:.0%} dense"
        files["fleet"] = _plots.fleet_cost(data["grid"], data["curves"], labels,
                                           report.fleet.crossover.rate_rps if report.fleet.crossover else None,
                                           out_dir / "fleet_cost.png")
        points = []
        for v in VARIANTS:
            fid = report.variants[v].fidelity
            if fid is not None:
                points.append((v, ch[v].usd_per_million_at_u, fid.mean_cosine,
                               f"{v} on {ch[v].instance}: {_usd(ch[v].usd_per_million_at_u)}, "
                               f"cos {fid.mean_cosine:.3f}"))
        if points:
            files["fidelity"] = _plots.fidelity_vs_cost(points, out_dir / "fidelity_vs_cost.png")
    return files


def _document(report: Report, files: dict[str, Path]) -> Doc:
    u = report.utilisation
    doc = Doc("twinserve cost report")
    cr = report.criteria
    doc.p(f"Generated {report.created_at:%Y-%m-%d %H:%M} UTC. Criteria every capacity was found with (as the "
          f"capacity searches recorded them): p99 <= {cr.slo_p99_ms:g} ms timed from the scheduled send (open "
          f"loop), errors < {cr.max_error_ratio:.2%}, answered rate >= {cr.min_achieved_ratio:.0%} of offered, and "
          f"confirmed by a repeat. The costs use X_slo at request shape **{report.cost_shape}** "
          f"({report.cost_shape_description}). Cost: `$/1M = price_usd_per_hour x 10^6 / (3600 x u x X_slo)`, "
          f"u = {u:g} (u = 1 beside it). `report.json` holds every number shown here.")

    doc.h("Capacity within the SLO (X_slo)")
    doc.p("Each variant pinned with `X-Variant`, each request shape searched on its own: exponential ramp, binary "
          "search, the winner and the failure above it repeated. X_slo is the highest offered rate that passed "
          "twice; a rate that passed once and failed once is **noisy** and both runs are listed below.")
    shape_rows = []
    for v in report.variants.values():
        for sc in v.shapes.values():
            x = _f(sc.x_slo_rps, ".4g", "none confirmed") + (" (lower bound)" if sc.lower_bound else "")
            flags = [f"noisy at {', '.join(f'{r:.4g}' for r in sc.noisy_rps)} req/s"] if sc.noisy_rps else []
            flags += ["non-monotone"] if sc.non_monotone else []
            shape_rows.append([v.variant, sc.description, x + (" **(costed)**" if sc.costed else ""),
                               sc.status, _f(sc.best_single_pass_rps, ".4g", "-"), f"{sc.max_answered_rps:.1f}",
                               f"{sc.probes} probes, {sc.elapsed_s:.0f} s", "; ".join(flags) or "-"])
    doc.table(["variant", "request shape (traffic mix)", "X_slo req/s", "search", "best single pass",
               "most answered req/s", "effort", "flags"], shape_rows)
    doc.table(["variant", f"X_slo req/s at {report.cost_shape}", "measured on", "CPUs", "CPU features",
               "generator CPU at X_slo", "source"],
              [[v.variant, _f(v.x_slo_rps, ".4g", "no rate met the SLO twice"), v.hardware + (
                  f" ({v.instance_type})" if v.instance_type else "") + (f", GPU {v.gpu_model}" if v.gpu_model else ""),
                str(v.cpu_count), "not recorded" if v.cpu_flags is None else (feature_names(v.cpu_flags) or "none"),
                "n/a" if v.generator_cpu_cores_at_x_slo is None else
                f"{v.generator_cpu_cores_at_x_slo:.2f} cores" + (" (sent late!)" if v.generator_late_at_x_slo
                                                                  else ""), f"`{v.source}`"]
               for v in report.variants.values()])
    doc.img(files["x_slo"], "X_slo per variant and request shape, with the hardware it was measured on")
    doc.h("Latency vs offered load", 3)
    doc.img(files["latency"], "Latency percentiles from the scheduled send vs offered load, one panel per request "
                              "shape; every probe is a point, repeats hollow")
    for v in report.variants.values():
        doc.p(f"**{v.variant}** at {v.shape} ({v.shape_description}), every probe in the order run:")
        doc.table([f"{v.variant}: phase", "offered req/s", "answered req/s", "p50 ms", "p99 ms", "errors",
                   "generator cores", "counts?"],
                  [[s.phase, f"{s.offered_rps:.4g}", f"{s.achieved_rps:.1f}", _f(s.p50_ms, ".1f"), _f(s.p99_ms, ".1f"),
                    f"{s.error_ratio:.2%}", f"{s.generator_cpu_cores:.2f}" + (" (late)" if s.generator_late else ""),
                    "yes" if s.passed else "no: " + "; ".join(s.reasons)] for s in v.steps])
        doc.ul([f"{k}: {n}" for k, sc in v.shapes.items() for n in sc.notes])
        doc.p(f"Method: {v.shapes[v.shape].method}.")

    doc.h("Cost per million requests, variant x instance")
    doc.p(f"At u = {u:g} and at u = 1. **projected** figures were measured on other hardware and carried over by "
          "the rule shown, with the CPU features (AMX, AVX-512 VNNI, ...) that differ between the two; **not "
          "comparable** means the figure was measured on another CPU architecture (x86_64 vs arm64) and is not "
          "carried over; **not measured** means no capacity measurement covers that hardware, so there is no figure.")
    doc.table(["variant", "instance", "$/h", "X_slo req/s", f"$/1M at u={u:g}", "$/1M at u=1", "status",
               "measured on"],
              [[c.variant, c.instance, f"{c.price_usd_per_hour:g}", _f(c.capacity_rps, ".4g", "-"),
                _usd(c.usd_per_million_at_u, c.status), _usd(c.usd_per_million_at_u1, c.status),
                c.status.replace("_", " ") + (f": {c.projection_rule}" if c.projection_rule else "")
                + (f". {c.note}" if c.note else ""), c.measured_on or "-"] for c in report.cells])
    doc.img(files["usd_per_million"], f"$ per 1M requests at u = {u:g}; hatched bars are projections")

    doc.h("GPU break-even (a requirement, not a measurement)")
    if not report.break_even:
        doc.p("The price catalog lists no GPU instance.")
    else:
        ref = report.break_even[0]
        if ref.required_x_slo_rps is None:
            doc.p(ref.verdict + ".")
        else:
            doc.p(f"The dense variant's X_slo that each GPU instance needs, within the same criteria, to cost per request "
                  f"what the pruned variant costs on {ref.reference_instance} "
                  f"({_f(ref.reference_capacity_rps, '.4g')} req/s"
                  f"{', projected' if ref.reference_projected else ''}, {_usd(ref.reference_usd_per_million_at_u)} "
                  f"per 1M at u = {u:g}): `{ref.formula}`. A dense X_slo above the requirement makes the GPU "
                  "cheaper per request; below it, dearer. Where a GPU capacity file (`make gpu-bench`) measured the "
                  "dense variant on that GPU model, the measured figure and its hardware stand beside it.")
        doc.table(["GPU instance", "GPU", "$/h", "required dense X_slo req/s", "measured dense X_slo req/s",
                   "measured on", "verdict"],
                  [[b.gpu_instance, f"{b.gpu_count}x {b.gpu_model}", f"{b.price_usd_per_hour:g}",
                    _f(b.required_x_slo_rps, ".4g") + (" (requirement)" if b.required_x_slo_rps else ""),
                    _f(b.measured_x_slo_rps, ".4g", "not measured"), b.measured_on or "-", b.verdict]
                   for b in report.break_even])

    doc.h("Fleet cost vs traffic")
    if report.fleet is None:
        doc.p("Not computed: both variants need a capacity figure on some priced instance.")
    else:
        fl = report.fleet
        doc.p("Instances = ceil(R / (u x X_slo)), at least one per variant. Chosen instances (cheapest $/1M among "
              "non-burstable instances of the measured CPU architecture, unless named with --dense-instance / "
              "--pruned-instance): " + "; ".join(f"{v}: {c.instance} ({_f(c.capacity_rps, '.4g')} req/s"
                                     f"{', projected' if c.projected else ''}, {_usd(c.usd_per_million_at_u)}/1M)"
                                     for v, c in fl.choices.items()) + ".")
        if fl.crossover is not None:
            doc.p(f"**Crossover:** {fl.crossover.note}.")
        doc.p(f"**Blended cost of the A/B split** ({fl.dense_share:.0%} dense, {1 - fl.dense_share:.0%} pruned) at "
              f"steady state: {_usd(fl.blended_usd_per_million_at_u)} per 1M at u = {u:g} "
              f"({_usd(fl.blended_usd_per_million_at_u1)} at u = 1); at low traffic the floor dominates (table).")
        doc.img(files["fleet"], "Fleet cost vs traffic, with the crossover")
        doc.table(["R req/s", "dense only: inst, $/h", "pruned only: inst, $/h", "split: dense+pruned inst, $/h",
                   "split $/1M"],
                  [[f"{r.rate_rps:g}", f"{r.instances['dense']}, ${r.usd_per_hour['dense']:.3f}",
                    f"{r.instances['pruned']}, ${r.usd_per_hour['pruned']:.3f}",
                    f"{r.instances['split_dense']}+{r.instances['split_pruned']}, ${r.usd_per_hour['split']:.3f}",
                    "-" if r.rate_rps == 0 else _usd(r.usd_per_hour["split"] * 1e6 / (3600 * r.rate_rps))]
                   for r in fl.table])

    doc.h("Fidelity beside cost")
    rows = []
    for v in report.variants.values():
        choice = report.fleet.choices.get(v.variant) if report.fleet else None
        live = v.live_shadow
        rows.append([v.variant, _f(v.fidelity.mean_cosine, ".4f") if v.fidelity else "no manifest",
                     _f(v.fidelity.p5_cosine, ".4f") if v.fidelity else "-",
                     _f(v.fidelity.recall_at_10, ".3f") if v.fidelity else "-",
                     "not queried" if live is None else (live.note or f"{_f(live.mean_cosine, '.4f')} "
                                                         f"({_f(live.samples, '.0f')} samples)"),
                     _usd(choice.usd_per_million_at_u) + f" on {choice.instance}" if choice else "-"])
    doc.table(["variant", "mean cosine to dense", "p5 cosine", "recall@10", "live shadow cosine",
               f"$/1M at u={u:g}"], rows)
    if "fidelity" in files:
        doc.img(files["fidelity"], "Fidelity (manifest, held-out text) vs cost per million requests")

    if report.bench is not None:
        b = report.bench
        doc.h("Model-level latency (no HTTP)")
        doc.p(f"From `{b.source}`: {b.hardware}, device {b.device}, {b.threads} threads. Medians.")
        doc.table(["variant", "batch", "tokens", "median ms", "texts/s", "vs dense"],
                  [[r.variant, str(r.batch), str(r.seq_len), f"{r.median_ms:.2f}", f"{r.texts_per_s:.1f}",
                    _f(r.speedup_vs_dense, ".2f") + ("x" if r.speedup_vs_dense else "")] for r in b.rows])

    doc.h("Prices")
    doc.table(["instance", "$/h", "vCPU", "memory GiB", "GPU", "arch", "region", "date", "basis", "source"],
              [[p.key, f"{p.price_usd_per_hour:g}", str(p.vcpus), f"{p.memory_gib:g}",
                f"{p.gpu.count}x {p.gpu.model}" if p.gpu else "-", p.cpu_arch, p.region, p.date.isoformat(), p.basis,
                p.source + (f" NOTE: {p.note}" if p.note else "")] for p in report.prices])
    doc.h("Notes")
    doc.ul(report.notes)
    doc.h("Inputs")
    doc.ul([f"{i.kind}: `{i.path}` (sha256 {i.sha256[:12]}…)" for i in report.inputs])
    return doc


def write_report(report: Report, plot_data: dict, out_dir: Path) -> dict[str, Path]:
    """Write PNGs, report.md, report.html (self-contained) and report.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _plots_for(report, plot_data, out_dir)
    doc = _document(report, files)
    (out_dir / "report.md").write_text(doc.markdown(), encoding="utf-8")
    (out_dir / "report.html").write_text(doc.html(), encoding="utf-8")
    written = {**files, "markdown": out_dir / "report.md", "html": out_dir / "report.html",
               "json": out_dir / "report.json"}
    report.files = {k: p.name for k, p in written.items()}
    (out_dir / "report.json").write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return written
