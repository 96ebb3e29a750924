"""Typed content of ``report.json``: the :class:`Report` and its parts, the config, the error."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from service._schema import Strict
from service.cost.capacity import CapacityCell, Measurement
from service.cost.gpu import BreakEven
from service.cost.model import Crossover
from service.cost.prices import InstancePrice
from service.artifacts.manifest import Fidelity


DEFAULT_SHADOW_METRIC = "ray_twinserve_shadow"


class ReportError(ValueError):
    """An input of the report is missing or inconsistent."""


class ReportConfig(Strict):
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


class Criteria(Strict):
    """What every capacity in the report had to meet, as the load tests recorded it."""

    slo_p99_ms: float = Field(description="client-side p99 latency within which a rate counts, ms")
    max_error_ratio: float = Field(description="errors must stay below this share of requests")
    min_achieved_ratio: float = Field(description="answered rate must be at least this share of the offered rate")


class CostCell(Strict):
    usd_per_million_at_u: float | None
    usd_per_million_at_u1: float | None
    projected: bool
    status: str
    capacity_rps: float | None


class InputFile(Strict):
    kind: str
    path: str
    sha256: str


class StepSummary(Strict):
    """One probe of the capacity search, in the order run."""

    phase: str = Field(description="ramp, bisect or confirm (a repeat); step: a fixed-step sweep's")
    offered_rps: float
    achieved_rps: float = Field(description="200 answers completed inside the window, per second")
    p50_ms: float | None
    p99_ms: float | None
    error_ratio: float
    generator_cpu_cores: float
    generator_late: bool = False
    passed: bool
    reasons: list[str]


class ShapeCapacity(Strict):
    """X_slo of one variant at one request shape, as its search found it."""

    shape: str
    description: str = Field(description="what each request carries")
    x_slo_rps: float | None = Field(description="confirmed X_slo (passed twice; swept: the highest step that passed "
                                                "once), req/s; None: none")
    status: str = Field(description="the search's status: confirmed, none, unconfirmed, budget; swept: a fixed-step "
                                    "sweep (twinserve loadtest)")
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


class SourcedFidelity(Fidelity):
    """The manifest's fidelity of a variant, and the manifest it was read from."""

    source: str


class LiveShadow(Strict):
    mean_cosine: float | None
    samples: float | None
    query: str
    note: str = ""


class VariantSummary(Strict):
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
    fidelity: SourcedFidelity | None = Field(description="from the manifest: agreement with dense on held-out text")
    live_shadow: LiveShadow | None = Field(description="from Prometheus: live shadow agreement")
    other_measurements: list[Measurement] = Field(default_factory=list)


class FleetChoice(Strict):
    variant: str
    instance: str
    price_usd_per_hour: float
    capacity_rps: float
    projected: bool
    usd_per_million_at_u: float
    usd_per_million_at_u1: float


class FleetRow(Strict):
    rate_rps: float
    instances: dict[str, int] = Field(description="single-variant fleets serving all of R, and the split fleet")
    usd_per_hour: dict[str, float] = Field(description="keys: dense, pruned (all traffic on it), split")


class Fleet(Strict):
    utilisation: float
    choices: dict[str, FleetChoice]
    crossover: Crossover | None
    dense_share: float
    blended_usd_per_million_at_u: float | None = Field(description="A/B split at steady state (floors amortised)")
    blended_usd_per_million_at_u1: float | None
    table: list[FleetRow]
    note: str = ""


class BenchRow(Strict):
    variant: str
    batch: int
    seq_len: int
    median_ms: float
    texts_per_s: float
    speedup_vs_dense: float | None


class BenchSummary(Strict):
    hardware: str
    device: str
    threads: int
    source: str
    rows: list[BenchRow]


class Report(Strict):
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
