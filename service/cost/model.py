"""Cost maths, pure functions (DESIGN.md, "Cost").

* ``$/1M requests = price_usd_per_hour × 10^6 / (3600 × u × X_slo)``; u = 1 is reported beside it.
* A fleet serving ``R`` requests/s on one variant needs ``ceil(R / (u × X_slo))`` instances, at
  least one per variant, so low traffic shows the floor (one idle instance still costs its price).
* The crossover between two single-variant fleets is where the variant with the lower cost per
  request (the asymptotic winner) becomes and stays cheaper; the floors and the integer instance
  counts make the costs step functions, so it is computed exactly over their breakpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Crossover",
    "Offer",
    "blended_usd_per_million",
    "crossover",
    "instances_needed",
    "split_fleet",
    "usd_per_million",
]

_MAX_BREAKPOINTS = 2_000_000


def _check_u(utilisation: float) -> None:
    if not 0.0 < utilisation <= 1.0:
        raise ValueError(f"utilisation u must be in (0, 1], got {utilisation}")


def usd_per_million(price_usd_per_hour: float, x_slo_rps: float, utilisation: float = 1.0) -> float:
    """Dollars per million requests for an instance that serves ``x_slo_rps`` within the SLO, run at ``u``."""
    _check_u(utilisation)
    if price_usd_per_hour <= 0:
        raise ValueError(f"price_usd_per_hour must be > 0, got {price_usd_per_hour}")
    if x_slo_rps <= 0:
        raise ValueError(f"x_slo_rps must be > 0, got {x_slo_rps}")
    return price_usd_per_hour * 1e6 / (3600.0 * utilisation * x_slo_rps)


def _ceil(x: float) -> int:
    # R / (u X) lands on an integer in exact arithmetic more often than in floats (0.7 * 100 ...).
    return math.ceil(round(x, 9))


def instances_needed(rate_rps: float, x_slo_rps: float, utilisation: float, minimum: int = 1) -> int:
    """``max(minimum, ceil(R / (u × X_slo)))``."""
    _check_u(utilisation)
    if x_slo_rps <= 0:
        raise ValueError(f"x_slo_rps must be > 0, got {x_slo_rps}")
    if rate_rps < 0:
        raise ValueError(f"rate_rps must be >= 0, got {rate_rps}")
    return max(minimum, _ceil(rate_rps / (utilisation * x_slo_rps)))


@dataclass(frozen=True)
class Offer:
    """One variant on one instance type: what an instance costs and how much it serves within the SLO."""

    variant: str
    instance: str
    price_usd_per_hour: float
    x_slo_rps: float

    def __post_init__(self) -> None:
        if self.price_usd_per_hour <= 0 or self.x_slo_rps <= 0:
            raise ValueError(
                f"{self.variant} on {self.instance}: price and capacity must be > 0, got "
                f"price_usd_per_hour={self.price_usd_per_hour} x_slo_rps={self.x_slo_rps}"
            )

    def instances(self, rate_rps: float, utilisation: float) -> int:
        return instances_needed(rate_rps, self.x_slo_rps, utilisation)

    def fleet_usd_per_hour(self, rate_rps: float, utilisation: float) -> float:
        return self.instances(rate_rps, utilisation) * self.price_usd_per_hour

    def usd_per_million(self, utilisation: float) -> float:
        return usd_per_million(self.price_usd_per_hour, self.x_slo_rps, utilisation)



def split_fleet(
    rate_rps: float, offers: dict[str, Offer], shares: dict[str, float], utilisation: float
) -> tuple[dict[str, int], float]:
    """Instances per variant and total $/h when ``rate_rps`` is split by ``shares`` (at least one each)."""
    if set(offers) != set(shares):
        raise ValueError(f"shares name {sorted(shares)} but offers name {sorted(offers)}")
    total = sum(shares.values())
    if any(s < 0 for s in shares.values()) or not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ValueError(f"shares must be >= 0 and sum to 1.0, got {shares}")
    counts = {v: offers[v].instances(rate_rps * shares[v], utilisation) for v in offers}
    return counts, sum(counts[v] * offers[v].price_usd_per_hour for v in offers)


def blended_usd_per_million(per_variant_usd_per_million: dict[str, float], shares: dict[str, float]) -> float:
    """Traffic-weighted $/1M of an A/B split at steady state (large R, floors amortised)."""
    if set(per_variant_usd_per_million) != set(shares):
        raise ValueError(f"shares name {sorted(shares)} but costs name {sorted(per_variant_usd_per_million)}")
    if any(s < 0 for s in shares.values()) or not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-9):
        raise ValueError(f"shares must be >= 0 and sum to 1.0, got {shares}")
    return sum(per_variant_usd_per_million[v] * shares[v] for v in shares)


@dataclass(frozen=True)
class Crossover:
    """Where the fleet of ``cheaper_at_scale`` becomes and stays cheaper than ``other``.

    ``rate_rps``: above it, ``cheaper_at_scale`` is strictly cheaper at every traffic level; ``None``
    when it is cheaper (or as cheap) everywhere, or when neither is cheaper per request.
    ``first_cheaper_rps``: the lowest traffic at which it is strictly cheaper (the curves may cross
    back and forth between the two while the instance counts are small).
    """

    cheaper_at_scale: str | None
    other: str | None
    rate_rps: float | None
    first_cheaper_rps: float | None
    note: str


def _multiples(step: float, upto: float) -> list[float]:
    n = int(math.floor(upto / step)) + 1
    return [k * step for k in range(1, n + 1)]


def crossover(a: Offer, b: Offer, utilisation: float) -> Crossover:
    """Exact crossover of two single-variant fleets whose cost is ``price × max(1, ceil(R / (u X)))``."""
    _check_u(utilisation)
    slope_a = a.price_usd_per_hour / (utilisation * a.x_slo_rps)
    slope_b = b.price_usd_per_hour / (utilisation * b.x_slo_rps)
    if math.isclose(slope_a, slope_b, rel_tol=1e-12):
        return Crossover(None, None, None, None,
                         f"{a.variant} and {b.variant} cost the same per request; no crossover")
    win, lose = (a, b) if slope_a < slope_b else (b, a)
    s_win, s_lose = min(slope_a, slope_b), max(slope_a, slope_b)
    # cost_win(R) <= s_win R + p_win and cost_lose(R) >= s_lose R: beyond this bound the winner wins.
    bound = win.price_usd_per_hour / (s_lose - s_win)
    c_win, c_lose = utilisation * win.x_slo_rps, utilisation * lose.x_slo_rps
    if bound / c_win + bound / c_lose > _MAX_BREAKPOINTS:
        raise ValueError(
            f"{win.variant} and {lose.variant} cost almost the same per request; the exact crossover would need "
            f"more than {_MAX_BREAKPOINTS} breakpoints (bound {bound:.3g} req/s)"
        )
    points = sorted({round(x, 9) for x in _multiples(c_win, bound) + _multiples(c_lose, bound)})
    last_not_cheaper: float | None = None
    first_cheaper: float | None = None
    prev = 0.0
    for right in points:
        # Instance counts are constant on (prev, right]; evaluate at its right end.
        cw = win.fleet_usd_per_hour(right, utilisation)
        cl = lose.fleet_usd_per_hour(right, utilisation)
        if cw >= cl - 1e-12:
            last_not_cheaper = right
        elif first_cheaper is None:
            first_cheaper = prev
        prev = right
    if first_cheaper is None:
        first_cheaper = prev
    if last_not_cheaper is None:
        return Crossover(win.variant, lose.variant, None, 0.0,
                         f"{win.variant} on {win.instance} is cheaper at every traffic level")
    return Crossover(
        win.variant, lose.variant, last_not_cheaper, first_cheaper,
        f"{lose.variant} on {lose.instance} is as cheap or cheaper up to {last_not_cheaper:g} req/s; above it "
        f"{win.variant} on {win.instance} is always cheaper",
    )
