"""Routing policy: a pure function of (model name, headers, user key, weights, random draw).

Order of precedence:

1. ``X-Variant`` header or a pinned model name (``twinserve-dense``, ``twinserve-pruned``) -> that
   variant, reason ``override``. Pinned requests never fall back.
2. A user key (``X-User-Id`` header or the OpenAI ``user`` field) -> ``sticky``: sha256 of the key
   into 10,000 buckets; buckets below ``weights.dense * 10,000`` go to dense, the rest to pruned.
   The hash is not Python's salted ``hash()``, so assignment is the same on every router replica and
   after a restart, and moving the weight boundary only moves the users between the old and new one.
3. Otherwise a weighted draw (``weight``).

When the chosen variant is unavailable, fails, or sheds load, or is already known to be down,
:func:`dispatch` sends the request to the other one (``fallback``), unless it was pinned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from service.serving.config import VARIANTS, RoutingConfig, Weights

if TYPE_CHECKING:
    from service.serving.schemas import RoutingUpdate

__all__ = [
    "updated_routing",
    "BUCKETS",
    "MODEL_NAMES",
    "Route",
    "RoutingError",
    "VariantFailed",
    "VariantUnavailable",
    "choose",
    "dispatch",
    "fallback",
    "other",
    "sticky_bucket",
]

Variant = Literal["dense", "pruned"]
Reason = Literal["override", "sticky", "weight", "fallback"]

BUCKETS = 10_000
ROUTED_MODEL = "twinserve"
MODEL_NAMES: dict[str, Variant | None] = {
    ROUTED_MODEL: None,
    "twinserve-dense": "dense",
    "twinserve-pruned": "pruned",
}

T = TypeVar("T")


class RoutingError(ValueError):
    """The request names an unknown model or variant, or pins two different variants."""


class VariantUnavailable(RuntimeError):
    """A variant could not take the request: it is down (``shed=False``) or shedding load (``shed=True``)."""

    def __init__(self, variant: str, why: str, *, shed: bool):
        super().__init__(f"the {variant} variant {why}")
        self.variant, self.shed = variant, shed


class VariantFailed(VariantUnavailable):
    """A variant raised an error for the request (its model, its replica): counted as an error, and a
    routed request falls back like for an unavailable variant."""

    def __init__(self, variant: str, error: BaseException):
        super().__init__(variant, f"failed ({type(error).__name__})", shed=False)
        self.error = error


@dataclass(frozen=True)
class Route:
    variant: Variant
    reason: Reason
    pinned: bool = False


def other(variant: Variant) -> Variant:
    return "pruned" if variant == "dense" else "dense"


def sticky_bucket(user_key: str) -> int:
    """The user's bucket in [0, 10,000): stable across processes, machines and restarts."""
    digest = hashlib.sha256(user_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _by_fraction(fraction: float, weights: Weights) -> Variant:
    """Variants laid out in a fixed order on [0, 1): dense first, then pruned."""
    return "dense" if fraction < weights.dense else "pruned"


def choose(
    *,
    weights: Weights,
    draw: float,
    model: str | None = None,
    variant_header: str | None = None,
    user_key: str | None = None,
) -> Route:
    """Pick a variant for one request. ``draw`` is uniform in [0, 1), supplied by the caller."""
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {draw}")
    model = model or ROUTED_MODEL
    if model not in MODEL_NAMES:
        raise RoutingError(f"unknown model {model!r}; use one of {', '.join(MODEL_NAMES)}")
    pinned = MODEL_NAMES[model]
    forced: Variant | None = None
    if variant_header:
        v = variant_header.strip().lower()
        if v not in VARIANTS:
            raise RoutingError(f"X-Variant must be one of {', '.join(VARIANTS)}, got {variant_header!r}")
        forced = v  # type: ignore[assignment]
    if forced and pinned and forced != pinned:
        raise RoutingError(f"X-Variant: {forced} contradicts model {model!r}; send one or make them agree")
    if forced or pinned:
        return Route(forced or pinned, "override", pinned=True)
    if user_key:
        return Route(_by_fraction(sticky_bucket(user_key) / BUCKETS, weights), "sticky")
    return Route(_by_fraction(draw, weights), "weight")


def fallback(route: Route) -> Route | None:
    """Where a request goes when its variant is unavailable; None for pinned requests."""
    if route.pinned or route.reason == "fallback":
        return None
    return Route(other(route.variant), "fallback")


async def dispatch(route: Route, call: Callable[[Variant], Awaitable[T]],
                   down: Collection[str] = ()) -> tuple[T, Route]:
    """Await ``call(route.variant)``; on :class:`VariantUnavailable`, try the fallback once.

    A variant in ``down`` (known to be down) is not tried when the request may fall back and the
    other variant is not down too: the request goes straight to the fallback.
    """
    alt = fallback(route)
    if route.variant in down and alt is not None and alt.variant not in down:
        return await call(alt.variant), alt
    try:
        return await call(route.variant), route
    except VariantUnavailable:
        alt = fallback(route)
        if alt is None:
            raise
        return await call(alt.variant), alt


def updated_routing(current: RoutingConfig, update: RoutingUpdate) -> RoutingConfig:
    """The routing after an admin ``PUT``: the fields ``update`` gives replace ``current``'s; one weight
    given implies the other. Raises ``InputError`` (unknown variant) or pydantic's ``ValidationError``."""
    from service.serving.schemas import InputError  # schemas imports numpy; the policy stays light

    new = current.model_dump()
    if update.weights is not None:
        w = dict(update.weights)
        unknown = set(w) - set(VARIANTS)
        if unknown:
            raise InputError(f"unknown variant(s) in weights: {', '.join(sorted(unknown))}; use {', '.join(VARIANTS)}")
        if len(w) == 1:  # one weight given: the other is the rest
            (k, v), = w.items()
            w[other(k)] = round(1.0 - v, 12)
        new["weights"] = w
    if update.shadow_fraction is not None:
        new["shadow_fraction"] = update.shadow_fraction
    return RoutingConfig.model_validate(new)
