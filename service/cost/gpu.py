"""The GPU capacity file (``results/gpu/capacity.json``) and the GPU break-even.

No GPU is lent to this project's machines, so the dense variant's X_slo on a GPU is either measured by
someone who has one (``make gpu-bench``: ``scripts/gpu_bench.py`` serves the artifacts with the dense
variant on the GPU, finds its X_slo by the open-loop capacity search, as every other capacity in the project,
and writes this file from the search's result), or it is not known. The report then gives,
for every GPU instance in the price catalog, the **break-even X_slo**: the capacity the dense variant
would need on that instance to cost, per request, what the measured CPU variant costs. It is a
requirement, not a measurement, and is labelled so.

Break-even, with both fleets run at the same utilisation u (u cancels)::

    price_gpu x 10^6 / (3600 u X_gpu) = price_cpu x 10^6 / (3600 u X_cpu)   =>   X_gpu = price_gpu / price_cpu x X_cpu

(were the fleets run at different utilisations, X_gpu = price_gpu / price_cpu x X_cpu x u_cpu / u_gpu).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt

from service._schema import Strict, load_json
from service.capacity_search import CapacityRun, SloCriteria
from service.cost.capacity import Measurement, normalise_arch, search_method

__all__ = [
    "DEFAULT_GPU_CAPACITY",
    "BreakEven",
    "GpuCapacity",
    "GpuCapacityError",
    "break_even_x_slo",
    "gpu_capacity_from_search",
    "load_gpu_capacity",
]

DEFAULT_GPU_CAPACITY = Path("results") / "gpu" / "capacity.json"


class GpuCapacityError(ValueError):
    """A GPU capacity file is missing, unreadable or not one."""


class GpuCapacity(Strict):
    """X_slo of the dense variant on one GPU machine, with the hardware and the measurement behind it."""

    schema_version: Literal[1] = 1
    kind: Literal["twinserve-gpu-capacity"] = "twinserve-gpu-capacity"
    created_at: datetime
    variant: Literal["dense"] = "dense"
    x_slo_rps: float | None = Field(description="dense X_slo on this GPU machine, req/s; None: no rate met the SLO")
    slo: SloCriteria = Field(description="the criteria X_slo was found with (must equal the CPU figures')")
    gpu_model: str = Field(min_length=1, description="GPU the dense variant ran on, as nvidia-smi names it")
    gpu_count: PositiveInt = Field(1, description="GPUs the dense deployment used")
    instance_type: str | None = Field(None, description="cloud instance type, when the machine was one")
    hardware: str = Field(min_length=1, description="the machine: CPU model and GPU")
    cpu_count: PositiveInt
    cpu_arch: str
    cpu_flags: list[str] | None = Field(description="GEMM features of the host CPU (/proc/cpuinfo names)")
    method: str = Field(min_length=1, description="how X_slo was found (tool, rates, durations)")
    shape: str | None = Field(None, description="request shape X_slo was found at (SHAPES key: 1, 8, mix)")
    shape_description: str | None = Field(None, description="what that shape sends, in words")
    measurement_file: str | None = Field(None, description="the full measurement this figure comes from")
    measurement_sha256: str | None = None
    shares_machine_with_generator: bool = Field(
        description="the load generator ran on the GPU machine and took CPU from the server")
    notes: list[str] = Field(default_factory=list)

    def measurement(self, source: str) -> Measurement:
        return Measurement(
            variant="dense", x_slo_rps=self.x_slo_rps, slo_p99_ms=self.slo.slo_p99_ms, hardware=self.hardware,
            cpu_count=self.cpu_count, cpu_arch=normalise_arch(self.cpu_arch), gpu_model=self.gpu_model,
            instance_type=self.instance_type, cpu_flags=self.cpu_flags,
            shares_machine_with_generator=self.shares_machine_with_generator, source=source, method=self.method,
            shape=self.shape, shape_description=self.shape_description)


def load_gpu_capacity(path: str | Path) -> GpuCapacity:
    return load_json(path, GpuCapacity, what="twinserve GPU capacity file", error=GpuCapacityError,
                     missing="`make gpu-bench` on a GPU machine writes one")


def gpu_capacity_from_search(run: CapacityRun, path: str | Path, *, shape: str = "mix",
                             gpu_count: int = 1) -> GpuCapacity:
    """The dense variant's X_slo at request shape ``shape`` from an open-loop capacity search (``run``, read from
    ``path``: ``scripts/gpu_bench.py``'s search.json, or ``twinserve capacity --variant dense`` with the GPU named)
    made against a server whose dense variant ran on a GPU."""
    if run.variant != "dense":
        raise GpuCapacityError(f"{path}: the search was not pinned to the dense variant (variant: {run.variant}); "
                               "search with `--variant dense`")
    if not run.gpu_model:
        raise GpuCapacityError(f"{path}: the server named no GPU (gpu_model is empty): not a GPU measurement")
    search = run.searches.get(shape)
    if search is None:
        raise GpuCapacityError(f"{path} has no search at request shape {shape!r} (it has "
                               f"{', '.join(run.searches) or 'none'})")
    return GpuCapacity(
        created_at=run.created_at, x_slo_rps=search.x_slo_rps, slo=search.criteria, gpu_model=run.gpu_model,
        gpu_count=gpu_count, instance_type=run.instance_type, hardware=run.hardware, cpu_count=run.cpu_count,
        cpu_arch=run.cpu_arch, cpu_flags=run.cpu_flags or None,
        method=f"{search_method(search)}, pinned to dense; {search.status}",
        shape=shape, shape_description=run.shapes.get(shape, shape),
        measurement_file=str(path), measurement_sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        shares_machine_with_generator=True,  # the open-loop generator runs beside the server (loopback)
        notes=list(search.notes))


class BreakEven(Strict):
    """What the dense variant must reach on one GPU instance to match the CPU variant's cost per request."""

    gpu_instance: str
    gpu_model: str
    gpu_count: int
    price_usd_per_hour: float
    kind: Literal["requirement"] = Field("requirement", description="a required capacity, not a measurement")
    required_x_slo_rps: float | None = Field(
        description="dense X_slo on this instance at which its $/1M equals the reference's, req/s")
    reference_variant: str
    reference_instance: str | None
    reference_price_usd_per_hour: float | None
    reference_capacity_rps: float | None
    reference_projected: bool | None
    reference_usd_per_million_at_u: float | None
    reference_usd_per_million_at_u1: float | None
    formula: str
    measured_x_slo_rps: float | None = Field(None, description="dense X_slo measured on this GPU model, if any")
    measured_on: str | None = Field(None, description="the GPU machine and how it was measured")
    measured_source: str | None = None
    verdict: str


def break_even_x_slo(price_gpu_usd_per_hour: float, price_cpu_usd_per_hour: float, x_slo_cpu_rps: float,
                     utilisation_gpu: float = 1.0, utilisation_cpu: float = 1.0) -> float:
    """Dense X_slo at which a GPU instance costs per request what the CPU instance does.

    ``price_gpu / price_cpu x X_cpu x u_cpu / u_gpu``; with one u for both fleets, u cancels.
    """
    for name, v in (("price_gpu_usd_per_hour", price_gpu_usd_per_hour),
                    ("price_cpu_usd_per_hour", price_cpu_usd_per_hour), ("x_slo_cpu_rps", x_slo_cpu_rps)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    for name, u in (("utilisation_gpu", utilisation_gpu), ("utilisation_cpu", utilisation_cpu)):
        if not 0 < u <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {u}")
    return price_gpu_usd_per_hour / price_cpu_usd_per_hour * x_slo_cpu_rps * utilisation_cpu / utilisation_gpu
