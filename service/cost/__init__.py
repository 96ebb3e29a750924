"""Cost per request: prices, capacity (load tests), cost maths and the report.

Public surface: the price catalog, the load-test result types and sweep, the cost maths, the
report builder, and a Prometheus server for tests and the demo. Plot and document helpers are
private (``_plots``, ``_doc``).
"""

from service.cost.capacity import CapacityCell, capacity_cells
from service.cost.gpu import BreakEven, GpuCapacity, GpuCapacityError, break_even_x_slo, load_gpu_capacity
from service.cost.loadtest import (
    LoadTestError,
    LoadTestResult,
    SloCriteria,
    SweepPlan,
    load_loadtest,
    run_sweep,
    select_x_slo,
)
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
    "LoadTestError",
    "LoadTestResult",
    "Offer",
    "PriceCatalog",
    "PriceError",
    "PrometheusError",
    "PrometheusServer",
    "Report",
    "ReportConfig",
    "ReportError",
    "SloCriteria",
    "SweepPlan",
    "blended_usd_per_million",
    "break_even_x_slo",
    "build_report",
    "capacity_cells",
    "crossover",
    "instances_needed",
    "load_gpu_capacity",
    "load_loadtest",
    "load_prices",
    "run_sweep",
    "select_x_slo",
    "split_fleet",
    "usd_per_million",
    "write_report",
]
