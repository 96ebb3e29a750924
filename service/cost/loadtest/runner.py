"""Running Locust: one subprocess per variant, the hardware it ran on, the sweep written to JSON."""

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
from urllib.parse import urlparse

from service._platform import ChildProcess
from service._schema import load_json
from service.capacity_search import SloCriteria
from service.cost.loadtest.schema import (
    LoadTestError,
    LoadTestResult,
    RawRun,
    ServerHardware,
    StepResult,
    SweepPlan,
    Variant,
    VariantSweep,
)
from service.cost.loadtest.verdict import step_result, summarise_run


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
    here = Path(__file__).resolve().parents[3] / "loadtests" / "locustfile.py"
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
    if not path.exists():
        return None
    return load_json(path, RawRun, what="twinserve locust recording", error=LoadTestError)


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
