"""The open-loop generator's pure parts: percentiles, request shapes and bodies, the loopback rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service._stats import percentile
from service.loadgen import SHAPES, TEXTS, RequestShape, check_loopback, embedding_bodies


def test_percentile_is_nearest_rank_whatever_the_order():
    values = [float(i) for i in range(100, 0, -1)]  # 100 .. 1, descending
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    # nearest rank returns an observed value; linear interpolation would say 9.91
    assert percentile([float(i) for i in range(1, 11)], 99) == 10.0
    assert percentile(np.array([3.0, 1.0, 2.0]), 50) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_shapes_one_eight_and_the_mix():
    assert SHAPES["1"].counts(5) == [1] * 5
    assert SHAPES["8"].counts(3) == [8, 8, 8]
    mix = SHAPES["mix"].counts(10_000, seed=1)
    assert set(mix) <= set(range(1, 9)) and 2 in mix and 8 in mix
    multi = sum(1 for c in mix if c > 1) / len(mix)
    assert 0.17 < multi < 0.23  # 20% of requests carry several texts
    assert SHAPES["mix"].counts(100, seed=3) == SHAPES["mix"].counts(100, seed=3)  # the same for every server


def test_shapes_reject_nonsense():
    with pytest.raises(ValueError, match="at least one text"):
        RequestShape("none", texts=0)
    with pytest.raises(ValueError, match="multi_share"):
        RequestShape("odd", multi_share=1.5)


def test_bodies_single_text_is_a_string_several_a_list():
    one = [json.loads(b) for b in embedding_bodies(SHAPES["1"], 3, model="m", encoding_format="base64")]
    assert [b["input"] for b in one] == list(TEXTS[:3])
    assert all(b["model"] == "m" and b["encoding_format"] == "base64" for b in one)
    eight = [json.loads(b) for b in embedding_bodies(SHAPES["8"], 2, encoding_format=None, users=1)]
    assert all(isinstance(b["input"], list) and len(b["input"]) == 8 for b in eight)
    assert "encoding_format" not in eight[0] and "model" not in eight[0] and eight[0]["user"] == "user-0"
    assert eight[1]["input"][0] == TEXTS[8 % len(TEXTS)]  # texts continue across requests


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:1/x", "http://[::1]:80", "http://127.9.9.9"])
def test_loopback_targets_are_accepted(url):
    check_loopback(url)


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "https://example.com", "http://0.0.0.0:8000", "nonsense"])
def test_other_targets_are_refused(url):
    with pytest.raises(ValueError, match="loopback"):
        check_loopback(url)


def test_no_full_collection_while_the_load_runs_and_one_after():
    import gc

    from service.loadgen import _no_full_collections

    full = []

    def seen(phase, info):
        if phase == "start" and info["generation"] == 2:
            full.append(info)

    before = gc.get_threshold()
    gc.callbacks.append(seen)
    try:
        with _no_full_collections():
            junk = []
            for i in range(300_000):  # enough young collections to trigger full ones at the default thresholds
                junk.append([i])
            assert full == [], "a full collection ran inside the load"
        assert len(full) == 1  # the one at the end
    finally:
        gc.callbacks.remove(seen)
    assert gc.get_threshold() == before


def test_overlapping_runs_restore_the_thresholds_once_the_last_one_ends():
    import gc

    from service.loadgen import _no_full_collections

    before = gc.get_threshold()
    outer, inner = _no_full_collections(), _no_full_collections()
    outer.__enter__()
    inner.__enter__()  # a second run starts (another thread) while the first is going
    outer.__exit__(None, None, None)  # the first ends before it
    assert gc.get_threshold()[2] > before[2]  # still held off for the run still going
    inner.__exit__(None, None, None)
    assert gc.get_threshold() == before  # not left disabled by the run that ended last
