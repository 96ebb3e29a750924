"""Cost per request: prices, capacity (from capacity files), cost maths and the report.

Public surface: the price catalog, the capacity cells, the cost maths, the report builder, and a
Prometheus server for tests and the demo. Plot and document helpers are private (``_plots``,
``_doc``). Capacity is measured by ``service.capacity_search`` (``twinserve capacity``'s search,
``twinserve loadtest``'s sweep), whose files ``capacity.py`` reads.
"""

from service.cost.capacity import CapacityCell, capacity_cells
from service.cost.gpu import BreakEven, GpuCapacity, GpuCapacityError, break_even_x_slo, load_gpu_capacity
from service.cost.model import (
    Crossover,
    Offer,
    blended_usd_per_million,
    crossover,
    instances_needed,
    split_fleet,
    usd_per_million,
)
from service.cost.prices import InstancePrice, PriceCatalog, PriceError, load_prices
from service.cost.prometheus import PrometheusError, PrometheusServer
from service.cost.report import Report, ReportConfig, ReportError, build_report, write_report

__all__ = [
    "BreakEven",
    "CapacityCell",
    "Crossover",
    "GpuCapacity",
    "GpuCapacityError",
    "InstancePrice",
    "Offer",
    "PriceCatalog",
    "PriceError",
    "PrometheusError",
    "PrometheusServer",
    "Report",
    "ReportConfig",
    "ReportError",
    "blended_usd_per_million",
    "break_even_x_slo",
    "build_report",
    "capacity_cells",
    "crossover",
    "instances_needed",
    "load_gpu_capacity",
    "load_prices",
    "split_fleet",
    "usd_per_million",
    "write_report",
]
