"""``twinserve report``: capacity files + bench + manifest + prices (+ Prometheus) → report.md/.html/.json + PNGs.

Capacity comes from one input format: the capacity search's file (:class:`CapacityRun`, written by
``twinserve capacity --variant V`` and ``twinserve demo``), one per variant, each with X_slo per
request shape (1 text, 8 texts, the locustfile's mix). The costs use one shape (``cost_shape``,
the mix by default), and the report says which, beside every X_slo. (The GPU capacity file of
``make gpu-bench`` is a separate, GPU-only input for the break-even.)

``report.json`` is the machine-readable truth (:class:`Report`); the Markdown and the
self-contained HTML (plots inline as base64) are rendered from the same numbers. Every
capacity names the hardware it was measured on; projected figures say so and give their
rule; cells that no measurement covers say "not measured" and carry no number.
"""

from service.cost.report.build import build_report
from service.cost.report.inputs import dense_share_from_serve_config, query_shadow_agreement
from service.cost.report.render import write_report
from service.cost.report.schema import DEFAULT_SHADOW_METRIC, Report, ReportConfig, ReportError

__all__ = [
    "DEFAULT_SHADOW_METRIC",
    "Report",
    "ReportConfig",
    "ReportError",
    "build_report",
    "dense_share_from_serve_config",
    "query_shadow_agreement",
    "write_report",
]

# Ray prefixes custom metrics with ray_. The mean agreement is <prefix>_cosine_sum_total /
