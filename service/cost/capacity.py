"""Capacity of each variant on each priced instance: measured, projected (with its rule), or not measured.

A capacity is only ever one of:

* **measured**: X_slo from a load test whose server ran on this very instance type;
* **projected**: X_slo measured elsewhere and carried over by a named rule. CPU: linear in cores,
  ``X × vCPUs(instance) / CPUs(measured)``, within one CPU architecture; the cell names the GEMM
  features (AMX, AVX-512 VNNI, ...) that the instance's CPU has and the measured one lacks, and the
  reverse, so a reader knows which way the projection may be off. GPU: the same GPU model, carried
  as-is (the GPU is the bottleneck);
* **not comparable**: measured on another CPU architecture (x86_64 vs arm64): different kernels,
  different instructions; no figure is carried over;
* **not measured**: no capacity measurement covers the hardware (e.g. the dense variant on a GPU model it
  never ran on). The report shows these as "not measured"; it never invents a figure;
* **not applicable**: the variant does not use the instance's accelerator (the pruned INT8
  variant is a CPU model; a GPU instance would leave its GPU idle);
* **no capacity**: measured, but no step met the SLO.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from service._platform import feature_names
from service._schema import Strict, load_json
from service.capacity_search import CapacityRun, SearchResult
from service.cost.model import usd_per_million
from service.cost.prices import InstancePrice

__all__ = ["GPU_VARIANTS", "CapacityCell", "CapacityFileError", "Measurement", "capacity_cells",
           "capacity_measurement", "load_capacity_run", "normalise_arch", "search_method"]

# The design: dense is served on a GPU (CPU fallback when none); pruned INT8 on CPUs.
GPU_VARIANTS = frozenset({"dense"})

Status = Literal["measured", "projected", "not_measured", "not_applicable", "no_capacity", "not_comparable"]

class CapacityFileError(ValueError):
    """A capacity file is missing, unreadable, or lacks what the report asks of it."""


_ARCH = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64"}


def normalise_arch(arch: str) -> str:
    """Linux says ``aarch64`` where the catalog (and AWS) say ``arm64``; unknown names pass through."""
    return _ARCH.get(arch.lower(), arch)


class Measurement(Strict):
    """X_slo of one variant as one load test measured it, with the hardware it ran on."""
    variant: str
    x_slo_rps: float | None
    slo_p99_ms: float
    hardware: str
    cpu_count: int
    cpu_arch: str
    gpu_model: str | None
    instance_type: str | None
    cpu_flags: list[str] | None = Field(None, description="GEMM features of the measured CPU; None: not recorded")
    shares_machine_with_generator: bool
    source: str = Field(description="the capacity file")
    method: str = Field(description="how X_slo was found")
    shape: str | None = Field(None, description="request shape X_slo was found at (SHAPES key: 1, 8, mix)")
    shape_description: str | None = Field(None, description="what that shape sends, in words")

    @field_validator("cpu_arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return normalise_arch(v)


class CapacityCell(Strict):
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
    cross_arch: bool = Field(False, description="measured on another CPU architecture (e.g. x86_64 for arm64): "
                                                "status not_comparable, no figure")
    measured_cpu_flags: list[str] | None = Field(
        None, description="GEMM features of the CPU the figure was measured on (None: not recorded)")
    instance_cpu_features: list[str] | None = Field(
        None, description="GEMM features of this instance's CPU, from the price catalog (None: not listed)")
    features_only_on_instance: list[str] | None = Field(
        None, description="features this instance's CPU has and the measured CPU lacks (None: unknown)")
    features_only_measured: list[str] | None = Field(
        None, description="features the measured CPU has and this instance's CPU lacks (None: unknown)")
    note: str = ""


def load_capacity_run(path: str | Path) -> CapacityRun:
    """A ``twinserve capacity`` / ``twinserve loadtest`` / ``twinserve demo`` capacity file (:class:`CapacityRun`)."""
    return load_json(path, CapacityRun, what="twinserve capacity file", error=CapacityFileError,
                     missing=f"`twinserve capacity --variant pruned --shapes 1 8 mix --out {path}` (or `make demo`) "
                             "writes one")


def search_method(result: SearchResult) -> str:
    """How a search (or a fixed-step sweep) found its X_slo, in one line."""
    p = result.plan
    if p.rates_rps:
        return ("open-loop fixed-step sweep (twinserve loadtest: " + ", ".join(f"{r:g}" for r in p.rates_rps)
                + f" req/s once each, {p.min_window_s:g} s measured after {p.warmup_s:g} s warm-up; X_slo the "
                "highest step that passed, not repeated)")
    return (f"open-loop capacity search (ramp x{p.growth:g} from {p.start_rps:g} req/s, bisect to "
            f"{p.resolution:.0%}, winner and the failure above it repeated; probes >= {p.min_requests} requests or "
            f"{p.min_duration_s:g} s after {p.warmup_s:g} s warm-up; budget {p.max_total_s:g} s)")


def capacity_measurement(run: CapacityRun, shape: str, source: str) -> Measurement:
    """X_slo of ``run``'s variant at request shape ``shape``, with the hardware it was measured on."""
    if shape not in run.searches:
        raise CapacityFileError(f"{source} has no search at request shape {shape!r} (it has "
                                f"{', '.join(run.searches) or 'none'}): measure it with `--shapes {shape}`, or cost "
                                f"another shape (--cost-shape)")
    r = run.searches[shape]
    return Measurement(
        variant=run.variant or "routed", x_slo_rps=r.x_slo_rps, slo_p99_ms=r.criteria.slo_p99_ms,
        hardware=run.hardware, cpu_count=run.cpu_count, cpu_arch=normalise_arch(run.cpu_arch),
        gpu_model=run.gpu_model, instance_type=run.instance_type, cpu_flags=run.cpu_flags,
        shares_machine_with_generator=True,  # the open-loop generator only targets loopback
        source=source, method=search_method(r), shape=shape, shape_description=run.shapes.get(shape, shape))


def _uses_gpu(m: Measurement) -> bool:
    return m.gpu_model is not None and m.variant in GPU_VARIANTS


def _norm(gpu: str) -> str:
    return gpu.lower().replace("nvidia", "").replace("tesla", "").strip()


def _cell(variant: str, price: InstancePrice, utilisation: float, *, status: Status, capacity: float | None = None,
          rule: str | None = None, measured_on: str | None = None, note: str = "",
          cross_arch: bool = False, m: Measurement | None = None) -> CapacityCell:
    ok = capacity is not None and capacity > 0
    flags = m.cpu_flags if m is not None else None
    inst = list(price.cpu.features) if price.cpu is not None else None
    only_inst = [f for f in inst if f not in flags] if flags is not None and inst is not None else None
    only_meas = [f for f in flags if f not in inst] if flags is not None and inst is not None else None
    return CapacityCell(
        variant=variant, instance=price.key, price_usd_per_hour=price.price_usd_per_hour, status=status,
        projected=status == "projected", capacity_rps=capacity if ok else None, projection_rule=rule,
        measured_on=measured_on,
        usd_per_million_at_u=usd_per_million(price.price_usd_per_hour, capacity, utilisation) if ok else None,
        usd_per_million_at_u1=usd_per_million(price.price_usd_per_hour, capacity, 1.0) if ok else None,
        burstable=price.burstable, cross_arch=cross_arch, measured_cpu_flags=flags, instance_cpu_features=inst,
        features_only_on_instance=only_inst, features_only_measured=only_meas, note=note)


def _one(variant: str, price: InstancePrice, found: Sequence[Measurement], u: float) -> CapacityCell:
    mine = [m for m in found if m.variant == variant]
    burst = f" {price.note}" if price.burstable else ""
    # 1. Measured on this very instance type.
    for m in mine:
        if m.instance_type == price.instance_type:
            if m.x_slo_rps is None:
                return _cell(variant, price, u, status="no_capacity", measured_on=m.hardware, m=m,
                             note=f"measured on {price.instance_type}: no rate met the SLO")
            return _cell(variant, price, u, status="measured", capacity=m.x_slo_rps, measured_on=m.hardware,
                         note=burst.strip(), m=m)
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
            return _cell(variant, price, u, status="no_capacity", measured_on=m.hardware, m=m,
                         note=f"measured on a {m.gpu_model}: no rate met the SLO")
        return _cell(variant, price, u, status="projected", capacity=m.x_slo_rps,
                     rule=f"same GPU ({m.gpu_model}), carried as-is: the GPU is the bottleneck",
                     measured_on=m.hardware, m=m,
                     note=f"{m.method}; tokenisation and padding run on the host CPU "
                          f"({price.cpu.model if price.cpu else 'not listed'}), which may differ from the measured "
                          "host's")
    # 2. CPU instance: project a CPU measurement linearly in cores, within one CPU architecture.
    cpu = [m for m in mine if not _uses_gpu(m)]
    if not cpu:
        return _cell(variant, price, u, status="not_measured",
                     note=f"{variant} was never measured on CPU; a GPU figure is not carried to CPUs")
    same_arch = [m for m in cpu if m.cpu_arch in (price.cpu_arch, "unknown")]
    if not same_arch:
        m = cpu[0]
        return _cell(variant, price, u, status="not_comparable", measured_on=m.hardware, cross_arch=True, m=m,
                     note=f"measured on {m.cpu_arch}, {price.instance_type} is {price.cpu_arch} "
                          f"({price.cpu.model if price.cpu else 'CPU not listed'}): other instructions, other "
                          f"kernels; no figure is carried across architectures (not comparable): measure {variant} "
                          f"on an {price.cpu_arch} instance")
    m = max(same_arch, key=lambda m: ((m.x_slo_rps or 0) / m.cpu_count))
    if m.x_slo_rps is None:
        return _cell(variant, price, u, status="no_capacity", measured_on=m.hardware, m=m,
                     note="measured on CPU: no rate met the SLO")
    projected = m.x_slo_rps * price.vcpus / m.cpu_count
    notes = [_feature_note(m, price)]
    if m.cpu_arch == "unknown":
        notes.append("the measured CPU's architecture was not recorded")
    if m.shares_machine_with_generator:
        notes.append("measured with the load generator on the same machine (conservative)")
    if variant in GPU_VARIANTS:
        notes.append(f"{variant} on CPU is the fallback path")
    if burst:
        notes.append(price.note)
    return _cell(variant, price, u, status="projected", capacity=projected,
                 rule=f"linear in cores: {m.x_slo_rps:.4g} req/s x {price.vcpus} vCPU / {m.cpu_count} CPUs measured; "
                      "clock and CPU generation ignored",
                 measured_on=m.hardware, note="; ".join(n for n in notes if n), m=m)


def _feature_note(m: Measurement, price: InstancePrice) -> str:
    """Which GEMM features differ between the measured CPU and the instance's, in words."""
    if price.cpu is None:
        return f"{price.instance_type}'s CPU is not listed in the price catalog: feature differences unknown"
    if m.cpu_flags is None:
        return (f"the measured CPU's features were not recorded; {price.instance_type} ({price.cpu.model}) has "
                f"{feature_names(price.cpu.features) or 'none of the listed GEMM features'}")
    gain = [f for f in price.cpu.features if f not in m.cpu_flags]
    loss = [f for f in m.cpu_flags if f not in price.cpu.features]
    if not gain and not loss:
        return f"same GEMM features as the measured CPU ({feature_names(m.cpu_flags) or 'none listed'})"
    parts = []
    if gain:
        parts.append(f"{price.instance_type} ({price.cpu.model}) has {feature_names(gain)}, which the measured CPU "
                     "lacks: INT8/fp32 kernels may run faster there than projected")
    if loss:
        parts.append(f"it lacks {feature_names(loss)}, which the measured CPU has: the projection may overstate it")
    return "CPU features differ: " + "; ".join(parts)


def capacity_cells(found: Sequence[Measurement], prices: Sequence[InstancePrice], variants: Sequence[str],
                   utilisation: float) -> list[CapacityCell]:
    """One cell per variant × priced instance."""
    return [_one(v, p, found, utilisation) for v in variants for p in prices]
