"""The capacity search's typed settings and results (exported by ``service.capacity_search``).

One format for both ways of finding X_slo: the search (ramp, bisect, repeat; ``twinserve
capacity``, the demo, the peers) and the fixed-step sweep (``twinserve loadtest``: a plan with
``rates_rps``, probes of phase ``step``, status ``swept``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from service._platform import CPU_FEATURES as _PLATFORM_FEATURES
from service._schema import Strict

__all__ = [
    "CPU_FEATURES",
    "CapacityRun",
    "LatencyPercentiles",
    "Phase",
    "ProbeResult",
    "SearchPlan",
    "SearchResult",
    "SloCriteria",
]

# The CPU features recorded with every capacity (projections across CPUs that differ in them are not
# like for like): the platform's one vocabulary.
CPU_FEATURES = tuple(_PLATFORM_FEATURES)

Phase = Literal["ramp", "bisect", "confirm", "step"]  # step: a fixed-step sweep's


class SloCriteria(Strict):
    """What a probe (a search's or a sweep's step) must meet to count towards X_slo."""
    slo_p99_ms: PositiveFloat = Field(100.0, description="client-side p99 latency a step must stay within, ms")
    max_error_ratio: float = Field(0.001, gt=0, le=1, description="errors must be below this share of requests")
    min_achieved_ratio: float = Field(
        0.95, gt=0, le=1, description="achieved/offered rate at or above which a step is not saturated")


class SearchPlan(Strict):
    start_rps: PositiveFloat = Field(8.0, description="first offered rate of the ramp, req/s")
    growth: float = Field(2.0, gt=1, description="ramp factor between probes (down as well as up)")
    max_rps: PositiveFloat = Field(4096.0, description="the ramp stops here; X_slo is then a lower bound, req/s")
    min_rps: PositiveFloat = Field(0.5, description="the downward ramp gives up below this rate, req/s")
    resolution: float = Field(0.05, gt=0, lt=1,
                              description="binary search stops when (lowest failing - highest passing) / highest "
                                          "passing is at most this")
    min_requests: PositiveInt = Field(1000, description="a probe's window holds at least this many requests ...")
    min_duration_s: PositiveFloat = Field(20.0, description="... or lasts this long, whichever comes first, s")
    min_window_s: PositiveFloat = Field(5.0, description="but never shorter than this, s")
    warmup_s: NonNegativeFloat = Field(2.0, description="sent at the probe's rate before its window, not counted, s")
    timeout_s: PositiveFloat = Field(10.0, description="client timeout per request (then counted as no answer), s")
    pause_s: NonNegativeFloat = Field(1.0, description="idle gap after each probe, s")
    recovery_s: NonNegativeFloat = Field(
        5.0, description="further idle gap after a failed probe, so the next one starts from a recovered server, s")
    late_send_ms: PositiveFloat = Field(
        10.0, description="a probe whose sends left later than this (p99) behind schedule is flagged generator-late: "
                          "its latencies include the generator's own delay and its catch-up bursts")
    fail_late_probes: bool = Field(False, description="count a generator-late probe as failed (else: flag only)")
    max_confirm: PositiveInt = Field(3, description="most rates repeated to confirm X_slo")
    max_total_s: PositiveFloat = Field(300.0, description="time budget of the whole search, s (not of a sweep)")
    rates_rps: list[PositiveFloat] | None = Field(
        None, min_length=1, description="a fixed-step sweep (twinserve loadtest): offer these rates in order, once "
                                        "each, instead of the ramp, bisection and repeat; X_slo is the highest that "
                                        "passed. None: the search")
    stop_after_saturated: NonNegativeInt = Field(
        2, description="a sweep ends after this many steps in a row answered under min_achieved_ratio of offered "
                       "(0: every step runs)")

    def window_s(self, rate_rps: float) -> float:
        """Length of a probe's measured window at ``rate_rps``."""
        return max(self.min_window_s, min(self.min_requests / rate_rps, self.min_duration_s))

    def probe_s(self, rate_rps: float) -> float:
        """Expected wall time of one probe (a passing one: the server keeps up)."""
        return self.warmup_s + self.window_s(rate_rps) + self.pause_s


class LatencyPercentiles(Strict):
    """Latency of answered (200) requests from their scheduled send time, nearest rank, ms."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


class ProbeResult(Strict):
    phase: Phase
    offered_rps: float
    window_s: float = Field(description="measured part of the probe (after warm-up), s")
    warmup_s: float
    sent: int = Field(description="requests scheduled inside the window")
    ok: int = Field(description="of those, answered 200")
    errors: int = Field(description="of those, anything but 200 (no answer: status 0)")
    error_ratio: float
    answered_rps: float = Field(description="200 answers completed inside the window, per second")
    achieved_ratio: float = Field(description="answered_rps / offered_rps")
    latency: LatencyPercentiles | None = Field(description="None when nothing was answered")
    status_counts: dict[str, int]
    texts_per_request_mean: float
    send_lag_p99_ms: float = Field(description="how late the generator sent, p99: its own health")
    generator_late: bool = Field(False, description="send_lag_p99_ms over the plan's late_send_ms: the machine was "
                                                    "too busy for the generator to send on schedule")
    generator_cpu_cores: float = Field(description="process CPU of the generator over the probe, cores")
    machine_cpu_cores: float = Field(0.0, description="whole machine busy over the probe, cores: server, generator "
                                                      "and anything else running")
    wall_s: float = Field(description="the probe's wall time, warm-up, drain and pause included")
    passed: bool
    reasons: list[str] = Field(description="why the probe failed; empty when it passed")


class SearchResult(Strict):
    criteria: SloCriteria
    plan: SearchPlan
    status: Literal["confirmed", "none", "unconfirmed", "budget", "swept"] = Field(
        description="confirmed: X_slo passed twice; none: no rate passed; unconfirmed: no passing rate passed "
                    "its repeat; budget: time ran out before a repeat; swept: a fixed-step sweep's X_slo, the "
                    "highest step that passed (once, not repeated)")
    x_slo_rps: float | None = Field(description="highest rate that passed and passed its repeat (a sweep: the "
                                                "highest step that passed), req/s")
    lower_bound: bool = Field(description="no rate above X_slo failed (every probe up to max_rps passed, or the "
                                          "time budget stopped the ramp): X_slo is at least this")
    best_single_pass_rps: float | None = Field(description="highest rate that passed once, req/s")
    max_answered_rps: float = Field(description="most 200 answers per second in any probe, SLO or not")
    non_monotone: bool = Field(description="some rate passed above a rate that failed")
    noisy_rps: list[float] = Field(description="rates that both passed and failed")
    notes: list[str]
    elapsed_s: float = Field(description="sum of the probes' wall times, s")
    probes: list[ProbeResult] = Field(description="every probe in the order run, repeats included")


class CapacityRun(Strict):
    """``twinserve capacity``'s file (and ``twinserve loadtest``'s, one per variant): one search or
    sweep per request shape against one endpoint, and the machine it ran on (the generator
    shares it with the server: it targets loopback only)."""
    schema_version: Literal[1] = 1
    kind: Literal["twinserve-capacity"] = "twinserve-capacity"
    created_at: datetime
    url: str
    headers: dict[str, str]
    variant: str | None = Field(None, description="the twinserve variant pinned with X-Variant (dense, pruned); "
                                                  "None: routed by the server's policy, or another server")
    hardware: str
    cpu_count: int
    cpu_arch: str = Field("unknown", description="platform.machine() of the server's machine (x86_64, aarch64)")
    gpu_model: str | None = Field(None, description="GPU the server ran the variant on, if any")
    instance_type: str | None = Field(None, description="cloud instance type, when the machine was one")
    cpu_flags: list[str] = Field(description=f"which of {', '.join(CPU_FEATURES)} the CPU has")
    shapes: dict[str, str] = Field(description="request shape name -> what it sends")
    searches: dict[str, SearchResult] = Field(description="by request shape (a search, or a sweep)")

