"""Typed content of a load-test results file and of the locustfile's raw recording; the error; the reader."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from service._schema import Strict, load_json
from service.capacity_search import SloCriteria


GENERATOR_CPU_BOUND_CORES = 0.9
Variant = Literal["dense", "pruned", "routed"]


class LoadTestError(RuntimeError):
    """The load test could not run or its results are unusable."""


class SweepPlan(Strict):
    rates_rps: list[PositiveFloat] = Field(min_length=1, description="offered request rate per step, req/s")
    step_duration_s: PositiveFloat = Field(20.0, description="length of each step, warm-up included, s")
    warmup_s: NonNegativeFloat = Field(5.0, description="start of each step left out of its measurement, s")
    per_user_rps: PositiveFloat = Field(1.0, description="most requests/s per simulated user")
    arrival: Literal["poisson", "constant"] = "poisson"
    multi_share: float = Field(0.2, ge=0, le=1, description="share of requests with several inputs")
    max_inputs: PositiveInt = Field(8, description="most inputs per multi-input request")
    user_pool: int = Field(1000, ge=0, description="distinct user ids (stickiness); 0 sends none")
    stop_after_saturated_steps: int = Field(
        2, ge=0, description="end a variant's run after this many consecutive saturated steps (0: never)")
    seed: int | None = Field(0, description="seed for texts and users; None: random")

    @model_validator(mode="after")
    def _warmup_fits(self) -> SweepPlan:
        if self.warmup_s >= self.step_duration_s:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be shorter than step_duration_s "
                             f"({self.step_duration_s}), or nothing is measured")
        return self

    def shape_config(self, slo: SloCriteria) -> dict:
        """The step plan in the form ``loadtests/_steps.py:StepShapeConfig`` validates."""
        return {
            "rates_rps": self.rates_rps, "step_duration_s": self.step_duration_s, "warmup_s": self.warmup_s,
            "per_user_rps": self.per_user_rps, "arrival": self.arrival,
            "stop_after_saturated_steps": self.stop_after_saturated_steps,
            "min_achieved_ratio": slo.min_achieved_ratio,
        }


class ServerHardware(Strict):
    description: str = Field(min_length=1, description="the machine the server ran on (CPU model, GPU)")
    cpu_count: PositiveInt = Field(description="logical CPUs the server could use")
    cpu_arch: str = Field(description="x86_64, arm64, ...")
    gpu_model: str | None = Field(None, description="GPU the dense variant used, if any")
    instance_type: str | None = Field(None, description="cloud instance type, when it was one")
    cpu_flags: list[str] | None = Field(
        None, description="the INT8/fp32 GEMM features of the server's CPU (/proc/cpuinfo names, as in "
                          "deploy/prices.yaml); None: not recorded")
    shares_machine_with_generator: bool = Field(
        description="the load generator ran on the same machine and took CPU from the server")


class LatencyPercentiles(Strict):
    """Client-side latency (request sent to response read), nearest-rank percentiles, ms."""

    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float


class StepResult(Strict):
    index: int
    offered_rps: float = Field(description="request rate the paced users aimed at")
    users: int
    window_s: float = Field(description="measured part of the step (after warm-up), s")
    partial: bool = Field(description="the run ended before the step's measurement window did")
    requests: int
    failures: int
    error_ratio: float
    achieved_rps: float = Field(description="completed requests per second (successes and errors)")
    ok_rps: float = Field(description="successful requests per second")
    achieved_ratio: float = Field(description="achieved_rps / offered_rps")
    latency: LatencyPercentiles | None = Field(description="None when no request completed")
    inputs_per_request_mean: float
    status_counts: dict[str, int]
    answered_by: dict[str, int] = Field(description="response header X-Variant counts ('none' if absent)")
    route_reasons: dict[str, int] = Field(description="response header X-Route-Reason counts")
    generator_cpu_cores: float = Field(description="CPU the Locust process used, cores (1.0 = one core busy)")
    generator_cpu_bound: bool = Field(description=f"generator_cpu_cores >= {GENERATOR_CPU_BOUND_CORES}")
    machine_cpu_percent: float = Field(description="whole-machine CPU busy during the window, % of all cores")
    passed: bool = Field(description="meets the SLO criteria (counts towards X_slo)")
    reasons: list[str] = Field(description="why the step does not count; empty when it passed")


class VariantSweep(Strict):
    variant: Variant
    forced: bool = Field(description="X-Variant forced the variant; routed runs use the router's policy")
    steps: list[StepResult]
    x_slo_rps: float | None = Field(description="highest passing step's achieved rate, req/s; None: none passed")
    x_slo_step: int | None
    stopped_early: bool = Field(description="the run ended after consecutive saturated steps")
    notes: list[str] = Field(default_factory=list)
    raw_file: str | None = Field(None, description="the recorder's per-request latencies (JSON)")


class LoadTestResult(Strict):
    schema_version: Literal[1] = 1
    kind: Literal["twinserve-loadtest"] = "twinserve-loadtest"
    created_at: datetime
    target_url: str
    locust_version: str
    locustfile: str
    generator_hardware: str
    generator_cpu_count: int
    server: ServerHardware
    slo: SloCriteria
    plan: SweepPlan
    variants: list[VariantSweep] = Field(min_length=1)
    notes: list[str] = Field(default_factory=list)

    def variant(self, name: str) -> VariantSweep | None:
        return next((v for v in self.variants if v.variant == name), None)


class RawStep(Strict):
    """One step as ``loadtests/locustfile.py``'s recorder writes it."""

    index: int
    offered_rps: PositiveFloat
    users: PositiveInt
    start_s: float
    window_s: NonNegativeFloat
    latencies_ms: list[NonNegativeFloat]
    failures: int = Field(ge=0)
    inputs_total: int = Field(ge=0)
    status_counts: dict[str, int]
    answered_by: dict[str, int]
    route_reasons: dict[str, int]
    generator_cpu_s: NonNegativeFloat
    machine_cpu_percent: NonNegativeFloat


class RawRun(Strict):
    format: Literal["twinserve-locust-steps/1"]
    locust_version: str
    variant: str | None
    host: str | None
    cpu_count: int
    pid: int
    plan: dict
    stopped_early: bool
    multi_share: float
    max_inputs: int
    user_pool: int
    steps: list[RawStep]


def load_loadtest(path: str | Path) -> LoadTestResult:
    return load_json(path, LoadTestResult, what="twinserve load-test result", error=LoadTestError,
                     missing="run `twinserve loadtest --sweep` first")
