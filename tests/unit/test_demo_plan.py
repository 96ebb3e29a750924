"""How ``twinserve demo`` spends its time: budget shares, where each ramp starts, the probes' length.

Pure functions only (no server, no clock): the demo's promise is "within 10 minutes", so the share
of the time each search gets, and what happens to time a search did not use, are checked here.
"""

from __future__ import annotations

import pytest

from service.demo import (
    COSTED_WEIGHT,
    DEMO_SHAPES,
    START_RPS,
    _order_shapes,
    demo_plan,
    search_weight,
    share_budget,
    start_rps_for,
)
from service.loadgen import SHAPES


def test_budget_is_shared_by_weight_and_what_is_left_goes_to_the_rest():
    assert share_budget(300.0, [2.0, 1.0, 1.0, 2.0]) == pytest.approx(100.0)
    assert share_budget(-5.0, [1.0]) == 0.0  # past the deadline: nothing, not a negative budget
    with pytest.raises(ValueError, match="weights must be positive"):
        share_budget(10.0, [])
    with pytest.raises(ValueError, match="weights must be positive"):
        share_budget(10.0, [1.0, 0.0])

    # Six searches in the demo's order; each uses only half of what it is given: the rest is shared again,
    # so the last one gets more than its plain share, and the total never exceeds what was there.
    todo = [(v, k) for k in _order_shapes(DEMO_SHAPES, "mix") for v in ("pruned", "dense")]
    assert todo[:2] == [("pruned", "mix"), ("dense", "mix")]  # the costed shape of both variants first
    weights = [search_weight(v, k, "mix") for v, k in todo]
    assert weights[0] == COSTED_WEIGHT and weights[1] > weights[0]  # dense probes are slower
    left, given = 450.0, []
    for i in range(len(todo)):
        given.append(share_budget(left, weights[i:]))
        left -= given[-1] / 2
    assert sum(g / 2 for g in given) <= 450.0
    assert given[0] == pytest.approx(450.0 * weights[0] / sum(weights))
    assert given[-1] > 450.0 * weights[-1] / sum(weights)
    # when every search spends all it was given, the plain shares add up to exactly the budget
    left, spent = 450.0, 0.0
    for i in range(len(todo)):
        g = share_budget(left, weights[i:])
        spent, left = spent + g, left - g
    assert spent == pytest.approx(450.0) and left == pytest.approx(0.0)


def test_ramp_starts_from_the_variants_first_x_slo_scaled_by_texts_per_request():
    assert start_rps_for("pruned", "mix", {}) == START_RPS["pruned"]
    assert start_rps_for("dense", "mix", {"mix": None}) == START_RPS["dense"]  # nothing confirmed yet
    # the mix carries 1.8 texts per request on average (80% one text, 20% 2-8); X_slo scales as
    # texts^-0.5, and the start is 3/4 of that (the first probe should pass; the ramp goes up from it)
    assert start_rps_for("pruned", "1", {"mix": 50.0}) == pytest.approx(round(0.75 * 50 * 1.8 ** 0.5, 1))
    assert start_rps_for("pruned", "8", {"mix": 80.0}) == pytest.approx(round(0.75 * 80 * (1.8 / 8) ** 0.5, 1))
    assert start_rps_for("pruned", "8", {"mix": 80.0}) < start_rps_for("pruned", "1", {"mix": 80.0}) < 80.0 * 1.8
    assert start_rps_for("dense", "8", {"mix": 2.0}) == 1.0  # never below 1 req/s
    assert start_rps_for("x", "1", {}, starts={"x": 3.0}) == 3.0


def test_each_probe_is_long_enough_for_its_p99():
    plan = demo_plan(16.0, 100.0)
    for rate in (1.0, 5.0, 16.0, 50.0, 100.0, 400.0):
        window = plan.window_s(rate)
        assert window * rate >= 1000 or window >= 20.0  # at least 1,000 requests or 20 s
    assert plan.resolution == 0.05 and plan.growth == 2.0 and plan.max_total_s == 100.0 and plan.max_confirm == 3
    assert plan.start_rps == 16.0


def test_shapes_are_checked_before_anything_runs():
    assert _order_shapes(["1", "8", "mix", "1"], "mix") == ["mix", "1", "8"]
    with pytest.raises(ValueError, match="costed shape '8' must be among the shapes searched"):
        _order_shapes(["1", "mix"], "8")
    with pytest.raises(ValueError, match="unknown request shapes"):
        _order_shapes(["1", "16"], "1")
    assert set(DEMO_SHAPES) == set(SHAPES)


def test_cli_demo_refuses_a_costed_shape_it_would_not_search(tmp_path, capsys):
    from service.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--shapes", "1", "mix", "--cost-shape", "8", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "costed shape '8' must be among the shapes searched (1, mix)" in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before building, serving or writing anything
