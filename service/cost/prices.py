"""``deploy/prices.yaml``: instance prices, each dated, sourced and with its region and basis.

A price without a date, a source, a region or a basis cannot be checked or refreshed, so the
schema refuses it rather than defaulting; unknown keys are refused too (a typo such as
``price_usd_per_hr`` must not silently drop a price).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from service._platform import CPU_FEATURES
from service._schema import Strict

__all__ = ["CPU_FEATURES", "CpuSpec", "GpuSpec", "InstancePrice", "PriceCatalog", "PriceError", "load_prices"]

Basis = Literal["on-demand", "spot", "savings-plan"]

# The GEMM features a price entry may name: the platform's vocabulary (service._platform.CPU_FEATURES).
CpuFeature = Literal[tuple(CPU_FEATURES)]  # type: ignore[valid-type]


class PriceError(ValueError):
    """The price catalog is missing, unreadable or invalid."""


class _Frozen(Strict):
    model_config = ConfigDict(frozen=True)


class GpuSpec(_Frozen):
    model: str = Field(min_length=1, description="GPU model as the vendor names it, e.g. 'NVIDIA T4'")
    count: PositiveInt = Field(1, description="GPUs per instance")
    memory_gib: PositiveFloat = Field(description="memory per GPU, GiB")


class CpuSpec(_Frozen):
    model: str = Field(min_length=1, description="the CPU the provider puts in this family, e.g. 'Intel Xeon 8488C'")
    features: list[CpuFeature] = Field(
        description="which of the INT8/fp32 GEMM features (CPU_FEATURES, /proc/cpuinfo names) the CPU has")
    source: str = Field(min_length=3, description="where the CPU model and its features come from")


class InstancePrice(_Frozen):
    instance_type: str = Field(min_length=1, description="provider's instance type, e.g. 'c7i.xlarge'")
    price_usd_per_hour: PositiveFloat = Field(description="price of one instance for one hour, USD")
    region: str = Field(min_length=1, description="provider region the price applies to, e.g. 'us-east-1'")
    date: dt.date = Field(description="the day the price was read (ISO date)")
    basis: Basis = Field(description="on-demand, spot or savings-plan")
    source: str = Field(min_length=3, description="where the figure comes from, precise enough to re-check")
    vcpus: PositiveInt = Field(description="vCPUs (hardware threads) of the instance")
    memory_gib: PositiveFloat = Field(description="instance memory, GiB")
    cpu_arch: Literal["x86_64", "arm64"] = Field(description="CPU architecture")
    os: Literal["linux", "windows"] = Field("linux", description="operating system the price includes")
    gpu: GpuSpec | None = Field(None, description="accelerator, if any")
    cpu: CpuSpec | None = Field(None, description="CPU model and features; without it a projection to this "
                                                  "instance cannot say which features differ")
    burstable: bool = Field(False, description="burstable (credit-based) CPU; sustained load costs extra")
    note: str = Field("", description="anything a reader of the cost must know about this price")

    @model_validator(mode="after")
    def _burstable_needs_note(self) -> InstancePrice:
        if self.burstable and not self.note.strip():
            raise ValueError(
                f"{self.instance_type} is burstable: add a `note` saying that sustained load adds CPU-credit "
                "charges the hourly price excludes"
            )
        return self

    @property
    def key(self) -> str:
        """Unique name of this row: instance type, plus basis and region when they are not the default."""
        return self.instance_type if self.basis == "on-demand" else f"{self.instance_type} ({self.basis})"

    @property
    def label(self) -> str:
        return f"{self.instance_type} {self.basis} {self.region} {self.date.isoformat()}"


class PriceCatalog(_Frozen):
    schema_version: Literal[1] = 1
    currency: Literal["USD"] = Field("USD", description="all prices are in this currency")
    instances: list[InstancePrice] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> PriceCatalog:
        seen: set[tuple[str, str, str, str]] = set()
        for p in self.instances:
            k = (p.instance_type, p.region, p.basis, p.os)
            if k in seen:
                raise ValueError(f"{p.instance_type} {p.basis} {p.region} {p.os} is listed twice; keep one price")
            seen.add(k)
        regions = {p.region for p in self.instances}
        if len(regions) > 1:
            raise ValueError(
                f"prices span several regions ({', '.join(sorted(regions))}); compare one region per catalog"
            )
        return self

    def get(self, key: str) -> InstancePrice:
        for p in self.instances:
            if p.key == key or p.instance_type == key:
                return p
        raise PriceError(f"no price for {key!r}; known: {', '.join(p.key for p in self.instances)}")


def _format_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in err["loc"]).replace(".[", "[")
        parts.append(f"{loc or '(top level)'}: {err['msg']}")
    return "; ".join(parts)


def load_prices(path: str | Path) -> PriceCatalog:
    """Read and validate a price catalog; every problem is reported with its place in the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PriceError(f"price catalog {path} not found (the repository ships deploy/prices.yaml)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PriceError(f"cannot read price catalog {path}: {e}") from None
    except yaml.YAMLError as e:
        raise PriceError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise PriceError(f"{path} must be a mapping with `instances:`, got {type(raw).__name__}")
    try:
        return PriceCatalog.model_validate(raw)
    except ValidationError as e:
        raise PriceError(f"{path}: {_format_errors(e)}") from None
