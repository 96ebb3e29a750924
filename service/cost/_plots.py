"""PNG plots for the report (matplotlib's Agg canvas directly: no pyplot, no display, no global state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = {"dense": "#1f77b4", "pruned": "#ff7f0e", "routed": "#2ca02c", "split": "#9467bd"}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return path


def latency_vs_load(sweeps: Sequence[dict], slo_p99_ms: float, path: Path) -> Path:
    """sweeps: {label, variant, offered, achieved, p50, p99, x_slo, x_slo_offered}."""
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    top = 1.0
    for s in sweeps:
        c = COLORS.get(s["variant"], None)
        pts = [(o, p50, p99) for o, p50, p99 in zip(s["offered"], s["p50"], s["p99"]) if p99 is not None]
        if pts:
            o, p50, p99 = zip(*pts)
            ax.plot(o, p99, "o-", color=c, label=f"{s['label']} p99")
            ax.plot(o, p50, "s--", color=c, alpha=0.6, label=f"{s['label']} p50")
        if s["x_slo_offered"] is not None:
            ax.axvline(s["x_slo_offered"], color=c, ls=":", lw=1)
        ax2.plot(s["offered"], s["achieved"], "o-", color=c, label=s["label"])
        top = max(top, *s["offered"], *s["achieved"])
    ax.axhline(slo_p99_ms, color="red", lw=1, label=f"SLO p99 {slo_p99_ms:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered load, req/s")
    ax.set_ylabel("client-side latency, ms")
    ax.set_title("Latency percentiles vs offered load (dotted: X_slo step)")
    ax.legend(fontsize=7)
    ax2.plot([0, top], [0, top], color="grey", lw=1, label="achieved = offered")
    ax2.plot([0, top], [0, 0.95 * top], color="grey", lw=1, ls="--", label="95% of offered")
    ax2.set_xlabel("offered load, req/s")
    ax2.set_ylabel("achieved, req/s")
    ax2.set_title("Achieved vs offered (below the dashed line: saturated)")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def x_slo_bars(rows: Sequence[tuple[str, str, float | None]], slo_p99_ms: float, path: Path) -> Path:
    """rows: (variant, label with hardware, x_slo or None)."""
    fig = Figure(figsize=(9, 0.6 * len(rows) + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    ys = range(len(rows))
    vals = [x or 0 for _, _, x in rows]
    ax.barh(list(ys), vals, color=[COLORS.get(v, "grey") for v, _, _ in rows])
    for y, (_, _, x) in zip(ys, rows):
        ax.text(max(vals) * 0.01 if max(vals) else 0.01, y, "no step met the SLO" if x is None else f" {x:.1f} req/s",
                va="center", fontsize=8)
    ax.set_yticks(list(ys), [label for _, label, _ in rows], fontsize=7)
    ax.set_xlabel(f"X_slo, req/s (p99 <= {slo_p99_ms:g} ms, errors < 0.1%, not saturated)")
    ax.set_title("Capacity within the SLO, per variant, on the hardware it was measured on")
    return _save(fig, path)


def usd_per_million_bars(instances: Sequence[str], variants: Sequence[str], cells: dict, utilisation: float,
                         path: Path) -> Path:
    """cells[(variant, instance)] = (usd_at_u or None, projected, status)."""
    fig = Figure(figsize=(11, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(variants))
    finite = [c[0] for c in cells.values() if c[0] is not None]
    ymax = max(finite) if finite else 1.0
    labelled: set[str] = set()
    for j, v in enumerate(variants):
        for i, inst in enumerate(instances):
            usd, projected, status = cells[(v, inst)]
            x = i + (j - (len(variants) - 1) / 2) * width
            if usd is None:
                ax.text(x, ymax * 0.02, status.replace("_", " "), rotation=90, ha="center", va="bottom", fontsize=7,
                        color=COLORS.get(v, "grey"))
                continue
            ax.bar(x, usd, width, color=COLORS.get(v, "grey"), hatch="//" if projected else None,
                   edgecolor="black", lw=0.5, label=None if v in labelled else v)
            labelled.add(v)
    if labelled:
        ax.legend(title="hatched: projected")
    ax.set_xticks(range(len(instances)), instances, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"$ per 1M requests at u = {utilisation:g}")
    ax.set_title("Cost per million requests, variant x instance")
    return _save(fig, path)


def fleet_cost(rates: Sequence[float], curves: dict[str, Sequence[float]], labels: dict[str, str],
               crossover_rps: float | None, path: Path) -> Path:
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in curves.items():
        ax.step(rates, ys, where="post", color=COLORS.get(name, "grey"), label=labels[name])
    if crossover_rps is not None:
        ax.axvline(crossover_rps, color="black", ls=":", lw=1, label=f"crossover {crossover_rps:.4g} req/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("traffic R, req/s (log)")
    ax.set_ylabel("fleet cost, $/hour (log)")
    ax.set_title("Fleet cost vs traffic: ceil(R / (u X_slo)) instances, at least one per variant")
    ax.legend(fontsize=8)
    return _save(fig, path)


def fidelity_vs_cost(points: Sequence[tuple[str, float, float, str]], path: Path) -> Path:
    """points: (variant, usd_per_million, mean_cosine, label)."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for v, usd, cos, label in points:
        ax.scatter([usd], [cos], s=60, color=COLORS.get(v, "grey"))
        ax.annotate(label, (usd, cos), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("$ per 1M requests (chosen instance, at u)")
    ax.set_ylabel("mean cosine to dense (held-out text)")
    ax.set_title("Fidelity beside cost")
    ax.margins(0.25)
    return _save(fig, path)
