"""Latency percentiles against offered load, from capacity searches (``plot_searches``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service._capacity_schema import ProbeResult, SearchResult

__all__ = ["plot_searches"]


def plot_searches(panels: Mapping[str, Mapping[str, SearchResult]], path: Path, *, title: str = "") -> Path:
    """Latency percentiles (p50 dashed, p99 solid) against offered load, one panel per key of
    ``panels`` (e.g. a request shape), one colour per series (e.g. a server); the SLO as a
    horizontal line and each series' X_slo as a vertical one. Every probe is a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        slo = None
        for k, (label, result) in enumerate(series.items()):
            c = colours[k % len(colours)]
            slo = result.criteria.slo_p99_ms
            first: dict[float, ProbeResult] = {}
            repeats: list[ProbeResult] = []
            for p in result.probes:
                if p.offered_rps in first:
                    repeats.append(p)
                else:
                    first[p.offered_rps] = p
            pts = sorted((r, p.latency.p50_ms, p.latency.p99_ms) for r, p in first.items() if p.latency)
            if pts:
                xs = [x for x, _, _ in pts]
                ax.plot(xs, [p99 for _, _, p99 in pts], "o-", color=c, label=f"{label} p99")
                ax.plot(xs, [p50 for _, p50, _ in pts], "^--", color=c, alpha=0.7, label=f"{label} p50")
            again = [(p.offered_rps, p.latency.p99_ms) for p in repeats if p.latency]
            if again:
                ax.plot([x for x, _ in again], [y for _, y in again], "o", color=c, markerfacecolor="none",
                        markersize=9, label=f"{label} p99, repeat")
            failed = [p.offered_rps for p in result.probes if not p.latency]
            if failed:
                ax.plot(failed, [slo * 10] * len(failed), "x", color=c, label=f"{label}: nothing answered")
            if result.x_slo_rps:
                ax.axvline(result.x_slo_rps, color=c, linestyle=":", label=f"{label} X_slo {result.x_slo_rps:.4g}")
        if slo:
            ax.axhline(slo, color="grey", linewidth=1, label=f"SLO p99 {slo:g} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "1235" else ""))
        ax.set_xlabel("offered load, req/s (open loop)")
        ax.set_ylabel("latency from scheduled send, ms")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
