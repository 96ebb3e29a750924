"""``twinserve loadtest``: step-load sweeps with Locust, per variant, to typed JSON; X_slo per variant.

How it runs Locust: the ``locust`` command line as a subprocess (``python -m locust --headless``),
one run per variant, with the step shape and the recorder in ``loadtests/locustfile.py``.
Why a subprocess rather than ``locust.env.Environment`` in this process: importing Locust
monkey-patches the whole interpreter with gevent (sockets, threads, ``time.sleep``), which
would leak into the CLI, the report and every test that shares the process; a subprocess is
exactly what a person runs by hand, so the sweep exercises the same locustfile; and the
generator's own CPU use is measured cleanly inside that process (psutil) without counting
the parent. One run per variant (not per step) keeps connections warm across steps and
avoids restarting Locust for every step; each step is measured after its own warm-up.

X_slo of a variant is the achieved rate of the highest step whose client-side p99 is within
the SLO, with errors under the limit and achieved rate at least ``min_achieved_ratio`` of
the offered rate (a saturated step does not count); see :func:`select_x_slo`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from service._platform import ChildProcess
from service.capacity_search import SloCriteria, probe_verdict  # one definition each, shared with the search
from service.loadgen import percentile  # nearest rank (numpy inverted_cdf), one definition

__all__ = [
    "GENERATOR_CPU_BOUND_CORES",
    "LatencyPercentiles",
    "LoadTestError",
    "LoadTestResult",
    "RawRun",
    "ServerHardware",
    "SloCriteria",
    "StepResult",
    "SweepPlan",
    "VariantSweep",
    "load_loadtest",
    "percentile",
    "run_sweep",
    "select_x_slo",
    "step_result",
    "step_verdict",
]

# Locust runs in one process, one core at most; Locust itself warns above 90% CPU.
GENERATOR_CPU_BOUND_CORES = 0.9
Variant = Literal["dense", "pruned", "routed"]


class LoadTestError(RuntimeError):
    """The load test could not run or its results are unusable."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SweepPlan(_Strict):
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


class ServerHardware(_Strict):
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


class LatencyPercentiles(_Strict):
    """Client-side latency (request sent to response read), nearest-rank percentiles, ms."""

    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float


class StepResult(_Strict):
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


class VariantSweep(_Strict):
    variant: Variant
    forced: bool = Field(description="X-Variant forced the variant; routed runs use the router's policy")
    steps: list[StepResult]
    x_slo_rps: float | None = Field(description="highest passing step's achieved rate, req/s; None: none passed")
    x_slo_step: int | None
    stopped_early: bool = Field(description="the run ended after consecutive saturated steps")
    notes: list[str] = Field(default_factory=list)
    raw_file: str | None = Field(None, description="the recorder's per-request latencies (JSON)")


class LoadTestResult(_Strict):
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


class RawStep(_Strict):
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


class RawRun(_Strict):
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


# --------------------------------------------------------------------------- pure parts


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


# --------------------------------------------------------------------------- running Locust


def effective_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _gpu_model() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def local_server_hardware(url: str, *, description: str | None = None, cpu_count: int | None = None,
                          gpu_model: str | None = None, instance_type: str | None = None) -> ServerHardware:
    """The server's hardware: this machine when the target is loopback, else what the caller names."""
    from service._platform import cpu_flags as _cpu_flags
    from service._platform import hardware_description

    local = _is_loopback(url)
    if not local and (description is None or cpu_count is None):
        raise LoadTestError(
            f"{url} is not on this machine: name the server's hardware with --server-hardware and --server-cpus "
            "(every capacity must name the hardware it was measured on)")
    return ServerHardware(
        description=description or hardware_description(), cpu_count=cpu_count or effective_cpu_count(),
        cpu_arch=platform.machine() if local else "unknown", gpu_model=gpu_model or (_gpu_model() if local else None),
        instance_type=instance_type, cpu_flags=_cpu_flags() if local else None, shares_machine_with_generator=local)


def default_locustfile() -> Path:
    here = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"
    return here if here.is_file() else Path("loadtests/locustfile.py")


def _locust_command(locustfile: Path, url: str, variant: Variant, plan: SweepPlan, raw_out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", url,
           "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
           "--twinserve-out", str(raw_out), "--twinserve-multi-share", str(plan.multi_share),
           "--twinserve-max-inputs", str(plan.max_inputs), "--twinserve-user-pool", str(plan.user_pool),
           "--twinserve-arrival", plan.arrival]
    if variant != "routed":
        cmd += ["--twinserve-variant", variant]
    if plan.seed is not None:
        cmd += ["--twinserve-seed", str(plan.seed)]
    return cmd


def _read_raw(path: Path) -> RawRun | None:
    try:
        return RawRun.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValidationError, ValueError) as e:
        raise LoadTestError(f"{path}: not a twinserve locust recording: {e}") from None


def _run_variant(locustfile: Path, url: str, variant: Variant, plan: SweepPlan, slo: SloCriteria, raw_dir: Path,
                 on_step: Callable[[Variant, StepResult], None] | None) -> VariantSweep:
    raw_out = raw_dir / f"{variant}.json"
    log = raw_dir / f"{variant}.locust.log"
    raw_out.unlink(missing_ok=True)
    env = {**os.environ, "TWINSERVE_LOADTEST_STEPS": json.dumps(plan.shape_config(slo)), "PYTHONUNBUFFERED": "1"}
    env.pop("TWINSERVE_LOADTEST_OUT", None)
    deadline = time.monotonic() + len(plan.rates_rps) * plan.step_duration_s + 120
    seen = 0
    child = ChildProcess(_locust_command(locustfile, url, variant, plan, raw_out), log, env=env)
    proc = child.proc
    try:
        while child.alive():
            if time.monotonic() > deadline:
                raise LoadTestError(f"locust ({variant}) ran past its plan by 120 s; see {log}")
            time.sleep(0.5)
            if on_step is not None and raw_out.is_file():
                raw = _read_raw(raw_out)
                for s in raw.steps[seen:]:
                    on_step(variant, step_result(s, slo, plan.step_duration_s - plan.warmup_s))
                seen = len(raw.steps)
    finally:
        child.stop(((signal.SIGTERM, 10, False), (signal.SIGKILL, 60, False)))
    raw = _read_raw(raw_out)
    if proc.returncode != 0 or raw is None or not raw.steps:
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise LoadTestError(
            f"locust ({variant}) exited with {proc.returncode} and {'no' if raw is None else 'an empty'} recording; "
            f"log {log}: " + " | ".join(tail))
    if on_step is not None:
        for s in raw.steps[seen:]:
            on_step(variant, step_result(s, slo, plan.step_duration_s - plan.warmup_s))
    return summarise_run(variant, raw, plan, slo, raw_file=str(raw_out))


def run_sweep(
    url: str,
    *,
    variants: Sequence[Variant] = ("dense", "pruned"),
    plan: SweepPlan,
    slo: SloCriteria | None = None,
    server: ServerHardware | None = None,
    out: Path | None = None,
    locustfile: Path | None = None,
    on_step: Callable[[Variant, StepResult], None] | None = None,
) -> LoadTestResult:
    """Sweep each variant through the step plan (forced by X-Variant; ``routed`` uses the router)."""
    from importlib.metadata import version

    from service._platform import hardware_description

    slo = slo or SloCriteria()
    if len(set(variants)) != len(variants) or not variants:
        raise LoadTestError(f"variants must be distinct and at least one, got {list(variants)}")
    locustfile = (locustfile or default_locustfile()).resolve()
    if not locustfile.is_file():
        raise LoadTestError(f"locustfile {locustfile} not found (the repository has loadtests/locustfile.py)")
    server = server or local_server_hardware(url)
    out = out or Path("results") / "loadtest.json"
    raw_dir = out.with_name(out.stem + "-raw")
    raw_dir.mkdir(parents=True, exist_ok=True)
    sweeps = [_run_variant(locustfile, url, v, plan, slo, raw_dir, on_step) for v in variants]
    notes = []
    if server.shares_machine_with_generator:
        notes.append(
            f"the load generator ran on the server's machine ({server.cpu_count} CPUs) and took CPU from it: see "
            "generator_cpu_cores per step; capacities are therefore conservative for a dedicated machine")
    result = LoadTestResult(
        created_at=datetime.now(UTC), target_url=url, locust_version=version("locust"),
        locustfile=str(locustfile), generator_hardware=hardware_description(),
        generator_cpu_count=effective_cpu_count(), server=server, slo=slo, plan=plan, variants=sweeps, notes=notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(out)
    return result


def load_loadtest(path: str | Path) -> LoadTestResult:
    path = Path(path)
    try:
        return LoadTestResult.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise LoadTestError(f"load-test results {path} not found: run `twinserve loadtest --sweep` first") from None
    except (ValidationError, ValueError) as e:
        raise LoadTestError(f"{path} is not a twinserve load-test result: {e}") from None
