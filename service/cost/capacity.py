"""Capacity of each variant on each priced instance: measured, projected (with its rule), or not measured.

A capacity is only ever one of:

* **measured**: X_slo from a load test whose server ran on this very instance type;
* **projected**: X_slo measured elsewhere and carried over by a named rule. CPU: linear in cores,
  ``X × vCPUs(instance) / CPUs(measured)``, ignoring CPU model and architecture (said so).
  GPU: the same GPU model, carried as-is (the GPU is the bottleneck);
* **not measured**: no load test covers the hardware (e.g. the dense variant on a GPU model it
  never ran on). The report shows these as "not measured"; it never invents a figure;
* **not applicable**: the variant does not use the instance's accelerator (the pruned INT8
  variant is a CPU model; a GPU instance would leave its GPU idle);
* **no capacity**: measured, but no step met the SLO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.cost.loadtest import LoadTestResult
from service.cost.model import usd_per_million
from service.cost.prices import InstancePrice

__all__ = ["CPU_VARIANTS", "GPU_VARIANTS", "CapacityCell", "Measurement", "capacity_cells", "measurements"]

# The design: dense is served on a GPU (CPU fallback when none); pruned INT8 on CPUs.
GPU_VARIANTS = frozenset({"dense"})
CPU_VARIANTS = frozenset({"pruned"})

Status = Literal["measured", "projected", "not_measured", "not_applicable", "no_capacity"]


class Measurement(BaseModel):
    """X_slo of one variant as one load test measured it, with the hardware it ran on."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    x_slo_rps: float | None
    slo_p99_ms: float
    hardware: str
    cpu_count: int
    cpu_arch: str
    gpu_model: str | None
    instance_type: str | None
    shares_machine_with_generator: bool
    source: str = Field(description="the load-test results file")


class CapacityCell(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: str
    instance: str = Field(description="price row key (instance type, plus basis when not on-demand)")
    price_usd_per_hour: float
    status: Status
    projected: bool
    capacity_rps: float | None = Field(description="X_slo on this instance, measured or projected; None if unknown")
    projection_rule: str | None
    measured_on: str | None = Field(description="hardware the underlying X_slo was measured on")
    usd_per_million_at_u: float | None
    usd_per_million_at_u1: float | None
    burstable: bool = Field(False, description="burstable instance: sustained load costs more than its price")
    cross_arch: bool = Field(False, description="projected across CPU architectures (e.g. x86_64 to arm64)")
    note: str = ""


def measurements(result: LoadTestResult, source: str) -> list[Measurement]:
    s = result.server
    return [
        Measurement(variant=v.variant, x_slo_rps=v.x_slo_rps, slo_p99_ms=result.slo.slo_p99_ms,
                    hardware=s.description, cpu_count=s.cpu_count, cpu_arch=s.cpu_arch, gpu_model=s.gpu_model,
                    instance_type=s.instance_type, shares_machine_with_generator=s.shares_machine_with_generator,
                    source=source)
        for v in result.variants if v.variant != "routed"
    ]


def _uses_gpu(m: Measurement) -> bool:
    return m.gpu_model is not None and m.variant in GPU_VARIANTS


def _norm(gpu: str) -> str:
    return gpu.lower().replace("nvidia", "").replace("tesla", "").strip()


def _cell(variant: str, price: InstancePrice, utilisation: float, *, status: Status, capacity: float | None = None,
          rule: str | None = None, measured_on: str | None = None, note: str = "",
          cross_arch: bool = False) -> CapacityCell:
    ok = capacity is not None and capacity > 0
    return CapacityCell(
        variant=variant, instance=price.key, price_usd_per_hour=price.price_usd_per_hour, status=status,
        projected=status == "projected", capacity_rps=capacity if ok else None, projection_rule=rule,
        measured_on=measured_on,
        usd_per_million_at_u=usd_per_million(price.price_usd_per_hour, capacity, utilisation) if ok else None,
        usd_per_million_at_u1=usd_per_million(price.price_usd_per_hour, capacity, 1.0) if ok else None,
        burstable=price.burstable, cross_arch=cross_arch, note=note)


def _one(variant: str, price: InstancePrice, found: Sequence[Measurement], u: float) -> CapacityCell:
    mine = [m for m in found if m.variant == variant]
    burst = f" {price.note}" if price.burstable else ""
    # 1. Measured on this very instance type.
    for m in mine:
        if m.instance_type == price.instance_type:
            if m.x_slo_rps is None:
                return _cell(variant, price, u, status="no_capacity", measured_on=m.hardware,
                             note=f"measured on {price.instance_type}: no step met the p99 SLO")
            return _cell(variant, price, u, status="measured", capacity=m.x_slo_rps, measured_on=m.hardware,
                         note=burst.strip())
    if price.gpu is not None:
        if variant not in GPU_VARIANTS:
            return _cell(variant, price, u, status="not_applicable",
                         note=f"the {variant} variant runs on CPU; on {price.instance_type} its "
                              f"{price.gpu.model} would sit idle, so it is priced on CPU instances only")
        same = [m for m in mine if _uses_gpu(m) and _norm(m.gpu_model or "") == _norm(price.gpu.model)]
        if not same:
            return _cell(variant, price, u, status="not_measured",
                         note=f"{variant} was never measured on a {price.gpu.model}; no figure is projected "
                              "from other hardware")
        m = max(same, key=lambda m: m.x_slo_rps or 0)
        if m.x_slo_rps is None:
            return _cell(variant, price, u, status="no_capacity", measured_on=m.hardware,
                         note=f"measured on a {m.gpu_model}: no step met the p99 SLO")
        return _cell(variant, price, u, status="projected", capacity=m.x_slo_rps,
                     rule=f"same GPU ({m.gpu_model}), carried as-is: the GPU is the bottleneck",
                     measured_on=m.hardware)
    # 2. CPU instance: project a CPU measurement linearly in cores.
    cpu = [m for m in mine if not _uses_gpu(m)]
    if not cpu:
        return _cell(variant, price, u, status="not_measured",
                     note=f"{variant} was never measured on CPU; a GPU figure is not carried to CPUs")
    m = max(cpu, key=lambda m: ((m.x_slo_rps or 0) / m.cpu_count))
    if m.x_slo_rps is None:
        return _cell(variant, price, u, status="no_capacity", measured_on=m.hardware,
                     note="measured on CPU: no step met the p99 SLO")
    projected = m.x_slo_rps * price.vcpus / m.cpu_count
    notes = []
    cross_arch = m.cpu_arch not in (price.cpu_arch, "unknown")
    if cross_arch:
        notes.append(f"measured on {m.cpu_arch}, {price.instance_type} is {price.cpu_arch}: not validated")
    if m.shares_machine_with_generator:
        notes.append("measured with the load generator on the same machine (conservative)")
    if variant in GPU_VARIANTS:
        notes.append(f"{variant} on CPU is the fallback path")
    if burst:
        notes.append(price.note)
    return _cell(variant, price, u, status="projected", capacity=projected,
                 rule=f"linear in cores: {m.x_slo_rps:.4g} req/s x {price.vcpus} vCPU / {m.cpu_count} CPUs measured; "
                      "CPU model and generation ignored",
                 measured_on=m.hardware, note="; ".join(notes), cross_arch=cross_arch)


def capacity_cells(found: Sequence[Measurement], prices: Sequence[InstancePrice], variants: Sequence[str],
                   utilisation: float) -> list[CapacityCell]:
    """One cell per variant × priced instance."""
    return [_one(v, p, found, utilisation) for v in variants for p in prices]
