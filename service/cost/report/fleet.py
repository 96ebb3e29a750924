"""Fleet maths for the report: which instance per variant, fleet cost against traffic, the GPU break-even."""

from __future__ import annotations

from collections.abc import Sequence

from service._schema import VARIANTS
from service.cost.capacity import CapacityCell, Measurement
from service.cost.gpu import BreakEven, break_even_x_slo
from service.cost.model import Crossover, Offer, blended_usd_per_million, crossover, split_fleet
from service.cost.prices import PriceCatalog
from service.cost.report.schema import Fleet, FleetChoice, FleetRow, ReportConfig, ReportError


def _choose(cells: Sequence[CapacityCell], variant: str, wanted: str | None) -> CapacityCell | None:
    mine = [c for c in cells if c.variant == variant]
    if wanted is not None:
        cell = next((c for c in mine if c.instance == wanted or c.instance.split(" ")[0] == wanted), None)
        if cell is None:
            raise ReportError(f"no price row {wanted!r} for the {variant} fleet; known: "
                              f"{', '.join(c.instance for c in mine)}")
        if cell.usd_per_million_at_u is None:
            raise ReportError(f"{variant} on {wanted} has no capacity figure ({cell.status}): {cell.note}")
        return cell
    # Automatic choice: a like-for-like figure first (not burstable, not carried across CPU architectures).
    priced = [c for c in mine if c.usd_per_million_at_u is not None]
    return min(priced, key=lambda c: (c.burstable, c.cross_arch, c.usd_per_million_at_u, c.projected)) \
        if priced else None


def _nice_rates(top: float, extra: Sequence[float]) -> list[float]:
    rates = {0.0}
    k = 1.0
    while k <= top * 1.0001:
        rates.update(x for x in (k, 2 * k, 5 * k) if x <= top * 1.0001)
        k *= 10
    rates.update(x for x in extra if x is not None and 0 <= x <= top)
    return sorted(rates)


def build_fleet(cells: Sequence[CapacityCell], config: ReportConfig) -> tuple[Fleet | None, dict]:
    u = config.utilisation
    chosen = {v: _choose(cells, v, getattr(config, f"{v}_instance")) for v in VARIANTS}
    missing = [v for v, c in chosen.items() if c is None]
    if missing:
        return None, {"missing": missing}
    offers = {v: Offer(v, c.instance, c.price_usd_per_hour, c.capacity_rps) for v, c in chosen.items()}
    cross: Crossover = crossover(offers["dense"], offers["pruned"], u)
    shares = {"dense": config.dense_share, "pruned": 1.0 - config.dense_share}
    per_m = {v: offers[v].usd_per_million(u) for v in VARIANTS}
    per_m1 = {v: offers[v].usd_per_million(1.0) for v in VARIANTS}
    top = config.traffic_max_rps or max(
        2.5 * (cross.rate_rps or 0.0), 20 * u * max(o.x_slo_rps for o in offers.values()))

    def row(r: float) -> FleetRow:
        counts, split_cost = split_fleet(r, offers, shares, u)
        inst = {v: offers[v].instances(r, u) for v in VARIANTS}
        inst.update({f"split_{v}": counts[v] for v in VARIANTS})
        cost = {v: offers[v].fleet_usd_per_hour(r, u) for v in VARIANTS}
        cost["split"] = split_cost
        return FleetRow(rate_rps=r, instances=inst, usd_per_hour=cost)

    table = [row(r) for r in _nice_rates(top, [cross.rate_rps, cross.first_cheaper_rps])]
    fleet = Fleet(
        utilisation=u,
        choices={v: FleetChoice(variant=v, instance=c.instance, price_usd_per_hour=c.price_usd_per_hour,
                                capacity_rps=c.capacity_rps, projected=c.projected,
                                usd_per_million_at_u=c.usd_per_million_at_u,
                                usd_per_million_at_u1=c.usd_per_million_at_u1) for v, c in chosen.items()},
        crossover=cross,
        dense_share=config.dense_share,
        blended_usd_per_million_at_u=blended_usd_per_million(per_m, shares),
        blended_usd_per_million_at_u1=blended_usd_per_million(per_m1, shares),
        table=table,
        note="each single-variant fleet serves all of R on its own; the split fleet sends dense_share of R to dense "
             "and the rest to pruned; every fleet keeps at least one instance per variant it runs")
    lo = min(1.0, top / 1000, *(x / 10 for x in (cross.rate_rps, cross.first_cheaper_rps) if x))
    steps = 800
    grid = sorted({lo * (top / lo) ** (i / steps) for i in range(steps + 1)}
                  | {r.rate_rps for r in table if r.rate_rps >= lo})
    curves = {"dense": [offers["dense"].fleet_usd_per_hour(r, u) for r in grid],
              "pruned": [offers["pruned"].fleet_usd_per_hour(r, u) for r in grid],
              "split": [split_fleet(r, offers, shares, u)[1] for r in grid]}
    return fleet, {"grid": grid, "curves": curves, "offers": offers}


def break_even_rows(cells: Sequence[CapacityCell], catalog: PriceCatalog, found: Sequence[Measurement],
                config: ReportConfig) -> list[BreakEven]:
    """Per GPU instance: dense X_slo needed to match the CPU variant's $/1M on its chosen instance."""
    ref = _choose(cells, "pruned", config.pruned_instance) if any(c.variant == "pruned" for c in cells) else None
    u = config.utilisation
    out = []
    for price in catalog.instances:
        if price.gpu is None:
            continue
        cell = next((c for c in cells if c.variant == "dense" and c.instance == price.key), None)
        measured = cell if cell is not None and cell.status in ("measured", "projected") else None
        m = None
        if measured is not None:
            m = next((m for m in found if m.variant == "dense" and m.hardware == measured.measured_on
                      and m.gpu_model), None)
        if ref is None or ref.capacity_rps is None:
            required = None
            verdict = "no break-even: the CPU variant has no capacity figure on a priced CPU instance"
        else:
            required = break_even_x_slo(price.price_usd_per_hour, ref.price_usd_per_hour, ref.capacity_rps)
            if measured is None or m is None:
                verdict = (f"required, not measured: dense must serve at least {required:.4g} req/s within the SLO on "
                           f"one {price.instance_type} ({price.gpu.count}x {price.gpu.model}) to cost no more per "
                           f"request than pruned on {ref.instance}; no GPU capacity file covers a {price.gpu.model}")
            else:
                ratio = measured.capacity_rps / required
                verdict = (f"measured {measured.capacity_rps:.4g} req/s on {m.gpu_model} ({m.hardware}) vs "
                           f"{required:.4g} required: dense on {price.instance_type} costs "
                           + (f"{1 / ratio:.2f}x less" if ratio > 1 else f"{1 / ratio:.2f}x more")
                           + f" per request than pruned on {ref.instance}")
        out.append(BreakEven(
            gpu_instance=price.key, gpu_model=price.gpu.model, gpu_count=price.gpu.count,
            price_usd_per_hour=price.price_usd_per_hour, required_x_slo_rps=required,
            reference_variant="pruned", reference_instance=ref.instance if ref else None,
            reference_price_usd_per_hour=ref.price_usd_per_hour if ref else None,
            reference_capacity_rps=ref.capacity_rps if ref else None,
            reference_projected=ref.projected if ref else None,
            reference_usd_per_million_at_u=ref.usd_per_million_at_u if ref else None,
            reference_usd_per_million_at_u1=ref.usd_per_million_at_u1 if ref else None,
            formula=f"X_gpu = price_gpu / price_cpu x X_cpu (both fleets at u = {u:g}, so u cancels; the same "
                    "holds at u = 1)",
            measured_x_slo_rps=measured.capacity_rps if m is not None else None,
            measured_on=f"{m.hardware}: {m.method}" if m is not None else None,
            measured_source=m.source if m is not None else None, verdict=verdict))
    return out
