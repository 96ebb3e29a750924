"""The pure parts: a step's summary and verdict from its raw recording, X_slo from the steps."""

from __future__ import annotations

from collections.abc import Sequence

from service.capacity_search import SloCriteria, probe_verdict  # one definition each, shared with the search
from service.cost.loadtest.schema import (
    GENERATOR_CPU_BOUND_CORES,
    LatencyPercentiles,
    RawRun,
    RawStep,
    StepResult,
    SweepPlan,
    Variant,
    VariantSweep,
)
from service.loadgen import percentile  # nearest rank (numpy inverted_cdf), one definition


def step_verdict(
    *, offered_rps: float, achieved_rps: float, p99_ms: float | None, error_ratio: float, slo: SloCriteria
) -> list[str]:
    """Why a step does not count towards X_slo; an empty list means it passes (the capacity search's
    own verdict: one definition of passing for both)."""
    return probe_verdict(offered_rps=offered_rps, answered_rps=achieved_rps, p99_ms=p99_ms,
                         error_ratio=error_ratio, criteria=slo)


def select_x_slo(steps: Sequence[StepResult]) -> tuple[float | None, int | None]:
    """X_slo: the achieved rate (capped at the offered rate) of the highest-offered passing step."""
    passing = [s for s in steps if s.passed]
    if not passing:
        return None, None
    best = max(passing, key=lambda s: (s.offered_rps, s.index))
    return min(best.achieved_rps, best.offered_rps), best.index


def step_result(raw: RawStep, slo: SloCriteria, planned_window_s: float) -> StepResult:
    """Summarise one recorded step: percentiles, rates, errors, generator CPU, and the verdict."""
    lat = sorted(raw.latencies_ms)
    n = len(lat)
    window = raw.window_s if raw.window_s > 0 else float("nan")
    achieved = n / window if n else 0.0
    error_ratio = raw.failures / n if n else 0.0
    latency = None
    if n:
        latency = LatencyPercentiles(
            p50_ms=percentile(lat, 50), p90_ms=percentile(lat, 90), p95_ms=percentile(lat, 95),
            p99_ms=percentile(lat, 99), p999_ms=percentile(lat, 99.9), max_ms=lat[-1], mean_ms=sum(lat) / n)
    cores = raw.generator_cpu_s / window if raw.window_s > 0 else 0.0
    reasons = step_verdict(offered_rps=raw.offered_rps, achieved_rps=achieved,
                           p99_ms=latency.p99_ms if latency else None, error_ratio=error_ratio, slo=slo)
    partial = raw.window_s < 0.9 * planned_window_s
    if partial:
        reasons.append(f"partial step: measured {raw.window_s:.1f} s of {planned_window_s:g} s")
    return StepResult(
        index=raw.index, offered_rps=raw.offered_rps, users=raw.users, window_s=raw.window_s, partial=partial,
        requests=n, failures=raw.failures, error_ratio=error_ratio, achieved_rps=achieved,
        ok_rps=(n - raw.failures) / raw.window_s if raw.window_s > 0 else 0.0,
        achieved_ratio=achieved / raw.offered_rps, latency=latency,
        inputs_per_request_mean=raw.inputs_total / n if n else 0.0,
        status_counts=raw.status_counts, answered_by=raw.answered_by, route_reasons=raw.route_reasons,
        generator_cpu_cores=cores, generator_cpu_bound=cores >= GENERATOR_CPU_BOUND_CORES,
        machine_cpu_percent=raw.machine_cpu_percent, passed=not reasons, reasons=reasons,
    )


def summarise_run(variant: Variant, raw: RawRun, plan: SweepPlan, slo: SloCriteria,
                  raw_file: str | None = None) -> VariantSweep:
    steps = [step_result(s, slo, plan.step_duration_s - plan.warmup_s) for s in raw.steps]
    x, idx = select_x_slo(steps)
    notes = []
    if x is None:
        notes.append("no step met the SLO: the lowest offered rate is already too much, or the server failed")
    else:
        best = next(s for s in steps if s.index == idx)
        if best.generator_cpu_bound:
            notes.append(f"the load generator was CPU-bound ({best.generator_cpu_cores:.2f} cores) at the X_slo step: "
                         "latencies include client-side queueing; X_slo may be understated")
        if any(not s.passed for s in steps if s.offered_rps < best.offered_rps):
            notes.append("a lower step failed while a higher one passed: the machine may have been noisy")
        if all(s.passed for s in steps) and not raw.stopped_early:
            notes.append("every step passed: X_slo is at least the top step; add higher rates to find the limit")
    forced = variant != "routed"
    if forced:
        others = {k: v for s in steps for k, v in s.answered_by.items() if k not in (variant, "none")}
        if others:
            notes.append(f"forced {variant}, but some responses came from {sorted(others)} (fallback?)")
    return VariantSweep(variant=variant, forced=forced, steps=steps, x_slo_rps=x, x_slo_step=idx,
                        stopped_early=raw.stopped_early, notes=notes, raw_file=raw_file)
