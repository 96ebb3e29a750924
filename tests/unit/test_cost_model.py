"""Cost maths against hand-computed cases: $/1M, the floor, u, the split, and the exact crossover."""

from __future__ import annotations

import math

import pytest

from service.cost.model import (
    Offer,
    blended_usd_per_million,
    crossover,
    instances_needed,
    split_fleet,
    usd_per_million,
)


def test_usd_per_million_by_hand():
    # 0.36 $/h, 100 req/s: 360,000 requests per hour per dollar-0.36 -> $1 per million at u = 1.
    assert usd_per_million(0.36, 100, 1.0) == pytest.approx(1.0)
    assert usd_per_million(0.36, 100, 0.5) == pytest.approx(2.0)
    # c7i.xlarge at 0.1785 $/h, X_slo 50 req/s, u = 0.7: 178500 / (3600 * 0.7 * 50) = 178500 / 126000.
    assert usd_per_million(0.1785, 50, 0.7) == pytest.approx(178500 / 126000)


@pytest.mark.parametrize("bad", [dict(utilisation=0.0), dict(utilisation=1.2), dict(x_slo_rps=0.0),
                                 dict(price_usd_per_hour=-1.0)])
def test_usd_per_million_rejects_nonsense(bad):
    kw = dict(price_usd_per_hour=1.0, x_slo_rps=10.0, utilisation=0.7) | bad
    with pytest.raises(ValueError):
        usd_per_million(**kw)


def test_instances_floor_and_boundaries():
    assert instances_needed(0, 100, 0.7) == 1  # the floor: no traffic still needs one instance
    assert instances_needed(0.001, 100, 0.7) == 1
    assert instances_needed(70, 100, 0.7) == 1  # exactly u * X: one instance (no float ceil surprise)
    assert instances_needed(70.01, 100, 0.7) == 2
    assert instances_needed(140, 100, 0.7) == 2
    assert instances_needed(100, 100, 1.0) == 1
    assert instances_needed(100, 100, 0.5) == 2  # lower u, more instances
    with pytest.raises(ValueError):
        instances_needed(-1, 100, 0.7)


def test_split_fleet_by_hand():
    dense, pruned = Offer("dense", "g5.xlarge", 1.006, 100), Offer("pruned", "c7i.xlarge", 0.1785, 50)
    offers = {"dense": dense, "pruned": pruned}
    # R = 100, 20% dense: 20 / 70 -> 1 dense; 80 / 35 = 2.29 -> 3 pruned.
    counts, cost = split_fleet(100, offers, {"dense": 0.2, "pruned": 0.8}, 0.7)
    assert counts == {"dense": 1, "pruned": 3}
    assert cost == pytest.approx(1.006 + 3 * 0.1785)
    # No traffic: the floor is one instance of each variant.
    counts, cost = split_fleet(0, offers, {"dense": 0.0, "pruned": 1.0}, 0.7)
    assert counts == {"dense": 1, "pruned": 1}
    assert cost == pytest.approx(1.006 + 0.1785)
    with pytest.raises(ValueError, match="sum to 1.0"):
        split_fleet(10, offers, {"dense": 0.3, "pruned": 0.6}, 0.7)


def test_blended_by_hand():
    assert blended_usd_per_million({"dense": 4.0, "pruned": 1.0}, {"dense": 0.25, "pruned": 0.75}) == 1.75
    with pytest.raises(ValueError):
        blended_usd_per_million({"dense": 4.0, "pruned": 1.0}, {"dense": 0.5, "pruned": 0.6})


def test_crossover_gpu_vs_cpu_by_hand():
    # dense on g5: 700 req/s per instance at u = 0.7; pruned on c7i: 35 req/s per instance.
    # Pruned costs 0.1785 n; dense 1.006 until 700 req/s. 5 pruned (<= 175 req/s) cost 0.8925 <= 1.006,
    # 6 cost 1.071 > 1.006, and beyond that dense only gets further ahead: crossover at 175 req/s.
    dense, pruned = Offer("dense", "g5.xlarge", 1.006, 1000), Offer("pruned", "c7i.xlarge", 0.1785, 50)
    c = crossover(dense, pruned, 0.7)
    assert c.cheaper_at_scale == "dense" and c.other == "pruned"
    assert c.rate_rps == pytest.approx(175.0)
    assert c.first_cheaper_rps == pytest.approx(175.0)
    # u matters: at u = 0.5 a pruned instance carries 25 req/s, so the same 5 instances reach 125 req/s.
    assert crossover(dense, pruned, 0.5).rate_rps == pytest.approx(125.0)


def test_crossover_with_back_and_forth_by_hand():
    # u = 1. A: 1.0 $/h, 10 req/s; B: 0.6 $/h, 5 req/s. A is cheaper per request (0.1 vs 0.12 $/h per req/s).
    # (0,5]: A 1.0 vs B 0.6 -> B.  (5,10]: 1.0 vs 1.2 -> A.  (10,15]: 2.0 vs 1.8 -> B.  (15,20]: 2 vs 2.4 -> A.
    # (20,25]: 3.0 vs 3.0 -> tie.  From 25 on A is always strictly cheaper.
    a, b = Offer("a", "x", 1.0, 10), Offer("b", "y", 0.6, 5)
    c = crossover(a, b, 1.0)
    assert c.cheaper_at_scale == "a"
    assert c.rate_rps == pytest.approx(25.0)
    assert c.first_cheaper_rps == pytest.approx(5.0)
    # Independent brute-force check on a fine grid: A strictly cheaper everywhere above the crossover.
    for i in range(1, 20000):
        r = 25.0 + i * 0.01
        assert a.fleet_usd_per_hour(r, 1.0) < b.fleet_usd_per_hour(r, 1.0) - 1e-12, r
    assert a.fleet_usd_per_hour(24.99, 1.0) >= b.fleet_usd_per_hour(24.99, 1.0)


def test_crossover_none_when_one_is_always_cheaper_or_equal_slopes():
    c = crossover(Offer("a", "x", 0.1, 100), Offer("b", "y", 1.0, 10), 0.7)
    assert c.cheaper_at_scale == "a" and c.rate_rps is None and "every traffic level" in c.note
    same = crossover(Offer("a", "x", 1.0, 10), Offer("b", "y", 2.0, 20), 0.7)
    assert same.cheaper_at_scale is None and same.rate_rps is None


def test_offer_rejects_non_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        Offer("pruned", "c7i.xlarge", 0.1785, 0.0)
    assert math.isclose(Offer("p", "i", 0.36, 100).usd_per_million(1.0), 1.0)
