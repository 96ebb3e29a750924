"""The routing policy, without Ray: weights, stickiness, boundary moves, override, fallback."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from service.serving.config import Weights
from service.serving.policy import (
    BUCKETS,
    Route,
    RoutingError,
    VariantFailed,
    VariantUnavailable,
    choose,
    dispatch,
    fallback,
    sticky_bucket,
)

N = 10_000
ROOT = Path(__file__).resolve().parents[2]


def _tolerance(p: float, n: int) -> float:
    return 5 * (p * (1 - p) / n) ** 0.5  # five binomial standard deviations


class _Router:
    """What a router replica holds: its own random generator and the current weights."""

    def __init__(self, weights: Weights, seed: int):
        self.weights, self.rng = weights, random.Random(seed)

    def route(self, **kw) -> Route:
        return choose(weights=self.weights, draw=self.rng.random(), **kw)


@pytest.mark.parametrize("dense", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_weighted_draws_match_weights_over_10000_requests(dense):
    router = _Router(Weights(dense=dense, pruned=1 - dense), seed=7)
    routes = [router.route() for _ in range(N)]
    assert {r.reason for r in routes} == {"weight"}
    share = sum(r.variant == "dense" for r in routes) / N
    assert abs(share - dense) <= _tolerance(dense, N) + 1e-9


def test_sticky_users_split_by_weights_over_10000_users():
    w = Weights(dense=0.3, pruned=0.7)
    routes = [choose(weights=w, draw=0.5, user_key=f"user-{i}") for i in range(N)]
    assert {r.reason for r in routes} == {"sticky"}
    share = sum(r.variant == "dense" for r in routes) / N
    assert abs(share - 0.3) <= _tolerance(0.3, N)


def test_same_user_same_variant_from_two_router_instances():
    w = Weights(dense=0.5, pruned=0.5)
    a, b = _Router(w, seed=1), _Router(w, seed=2)
    for i in range(2000):
        key = f"customer-{i}"
        ra, rb = a.route(user_key=key), b.route(user_key=key)
        assert ra == rb and ra.reason == "sticky"
        assert a.route(user_key=key) == ra  # and on every later request


def test_sticky_bucket_survives_a_restart_with_another_hash_seed():
    """A fresh interpreter with a different PYTHONHASHSEED: Python's hash() would change, ours must not."""
    keys = [f"user-{i}" for i in range(200)] + ["", "ünïcode ✓", "x" * 1000]
    code = ("import sys, json; from service.serving.policy import sticky_bucket; "
            "print(json.dumps([sticky_bucket(k) for k in json.load(sys.stdin)]))")
    import json

    outs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        p = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True,
                           env=env, check=True, cwd=ROOT)
        outs.append(json.loads(p.stdout))
    assert outs[0] == outs[1] == [sticky_bucket(k) for k in keys]
    assert all(0 <= b < BUCKETS for b in outs[0])
    # Pinned values: a change to the hash would silently reshuffle every user in production.
    assert sticky_bucket("user-0") == int.from_bytes(
        __import__("hashlib").sha256(b"user-0").digest()[:8], "big") % BUCKETS


@pytest.mark.parametrize(("old", "new"), [(0.3, 0.5), (0.5, 0.3), (0.0, 1.0), (0.25, 0.2501)])
def test_moving_the_boundary_only_moves_users_between_old_and_new(old, new):
    users = [f"u{i}" for i in range(N)]
    before = {u: choose(weights=Weights(dense=old, pruned=1 - old), draw=0.0, user_key=u).variant for u in users}
    after = {u: choose(weights=Weights(dense=new, pruned=1 - new), draw=0.0, user_key=u).variant for u in users}
    lo, hi = sorted((old, new))
    moved = [u for u in users if before[u] != after[u]]
    for u in moved:
        assert lo <= sticky_bucket(u) / BUCKETS < hi
        assert after[u] == ("dense" if new > old else "pruned")  # all move one way
    # and every user between the boundaries did move
    assert len(moved) == sum(lo <= sticky_bucket(u) / BUCKETS < hi for u in users)


def test_override_by_header_or_pinned_model_beats_user_and_weights():
    w = Weights(dense=1.0, pruned=0.0)
    assert choose(weights=w, draw=0.1, variant_header="pruned", user_key="u") == Route("pruned", "override", True)
    assert choose(weights=w, draw=0.1, variant_header=" Pruned ") == Route("pruned", "override", True)
    assert choose(weights=w, draw=0.1, model="twinserve-pruned", user_key="u") == Route("pruned", "override", True)
    w = Weights(dense=0.0, pruned=1.0)
    assert choose(weights=w, draw=0.1, model="twinserve-dense") == Route("dense", "override", True)
    assert choose(weights=w, draw=0.1, model="twinserve-dense", variant_header="dense").variant == "dense"
    assert choose(weights=w, draw=0.1, model="twinserve").reason == "weight"
    assert choose(weights=w, draw=0.1, model=None, user_key="").reason == "weight"  # empty key: not sticky


@pytest.mark.parametrize(("kw", "words"), [
    (dict(variant_header="gpu"), "X-Variant must be one of dense, pruned"),
    (dict(model="gpt-4"), "unknown model 'gpt-4'"),
    (dict(model="twinserve-dense", variant_header="pruned"), "contradicts model"),
])
def test_bad_routing_requests_are_refused_with_words(kw, words):
    with pytest.raises(RoutingError, match=words):
        choose(weights=Weights(), draw=0.5, **kw)


def test_fallback_goes_to_the_other_variant_except_when_pinned():
    assert fallback(Route("dense", "weight")) == Route("pruned", "fallback")
    assert fallback(Route("pruned", "sticky")) == Route("dense", "fallback")
    assert fallback(Route("pruned", "override", pinned=True)) is None
    assert fallback(Route("dense", "fallback")) is None  # never bounce back


def _caller(down: set[str], shed: bool = False):
    calls = []

    async def call(variant):
        calls.append(variant)
        if variant in down:
            raise VariantUnavailable(variant, "is down", shed=shed)
        return f"answer from {variant}"

    return call, calls


@pytest.mark.parametrize("shed", [False, True])
def test_dispatch_falls_back_when_the_chosen_variant_is_unavailable_or_shedding(shed):
    call, calls = _caller({"dense"}, shed=shed)
    answer, route = asyncio.run(dispatch(Route("dense", "weight"), call))
    assert (answer, route, calls) == ("answer from pruned", Route("pruned", "fallback"), ["dense", "pruned"])


def test_dispatch_keeps_the_route_when_the_variant_answers():
    call, calls = _caller(set())
    assert asyncio.run(dispatch(Route("pruned", "sticky"), call)) == ("answer from pruned", Route("pruned", "sticky"))
    assert calls == ["pruned"]


def test_pinned_requests_never_fall_back():
    call, calls = _caller({"dense"}, shed=True)
    with pytest.raises(VariantUnavailable) as e:
        asyncio.run(dispatch(Route("dense", "override", pinned=True), call))
    assert e.value.shed and calls == ["dense"]


def test_both_variants_down_raises_after_one_fallback():
    call, calls = _caller({"dense", "pruned"})
    with pytest.raises(VariantUnavailable):
        asyncio.run(dispatch(Route("pruned", "weight"), call))
    assert calls == ["pruned", "dense"]


def test_draw_outside_unit_interval_is_a_bug():
    with pytest.raises(ValueError, match=r"draw must be in \[0, 1\)"):
        choose(weights=Weights(), draw=1.0)


def test_a_variant_known_to_be_down_is_skipped_unless_pinned_or_both_are_down():
    call, calls = _caller(set())
    assert asyncio.run(dispatch(Route("dense", "sticky"), call, down={"dense"})) == (
        "answer from pruned", Route("pruned", "fallback"))
    assert calls == ["pruned"]  # dense was not tried: no wait on a dead replica
    call, calls = _caller(set())
    asyncio.run(dispatch(Route("dense", "override", pinned=True), call, down={"dense"}))
    assert calls == ["dense"]  # pinned: tried anyway, never moved
    call, calls = _caller(set())
    asyncio.run(dispatch(Route("dense", "weight"), call, down={"dense", "pruned"}))
    assert calls == ["dense"]  # nowhere better to go


def test_an_admin_update_replaces_only_the_fields_it_gives_and_one_weight_implies_the_other():
    from pydantic import ValidationError

    from service.serving.config import RoutingConfig
    from service.serving.policy import updated_routing
    from service.serving.schemas import InputError, RoutingUpdate

    now = RoutingConfig.model_validate({"weights": {"dense": 0.3, "pruned": 0.7}, "shadow_fraction": 0.1})
    new = updated_routing(now, RoutingUpdate.model_validate({"weights": {"dense": 0.2}}))
    assert new.weights.model_dump() == {"dense": 0.2, "pruned": 0.8} and new.shadow_fraction == 0.1
    new = updated_routing(now, RoutingUpdate.model_validate({"shadow_fraction": 0.5}))
    assert new.weights == now.weights and new.shadow_fraction == 0.5
    with pytest.raises(InputError, match="unknown variant"):
        updated_routing(now, RoutingUpdate.model_validate({"weights": {"tiny": 1.0}}))
    with pytest.raises(ValidationError, match="sum to 1.0"):
        updated_routing(now, RoutingUpdate.model_validate({"weights": {"dense": 0.4, "pruned": 0.4}}))


@pytest.mark.parametrize("error, status, metric", [
    (VariantUnavailable("pruned", "is shedding load", shed=True), 429, "shed"),
    (VariantUnavailable("pruned", "is down", shed=False), 503, "unavailable"),
    (VariantFailed("pruned", ValueError("runtime")), 500, "error"), (TimeoutError(), 503, "timeout"),
    (RuntimeError("a bug"), 500, "error"),
])
def test_each_failure_answers_its_status_with_route_headers_and_retry_after_when_retrying_helps(error, status, metric):
    from service.serving.api import failure_for

    f = failure_for(error, Route("pruned", "weight"), retry_after_s=2, timeout_s=5.0)
    assert (f.status, f.metric_status) == (status, metric)
    assert (f.headers["X-Variant"], f.headers["X-Route-Reason"]) == ("pruned", "weight")
    assert ("Retry-After" in f.headers) == (status == 503 or status == 429)
