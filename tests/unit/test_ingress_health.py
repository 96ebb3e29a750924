"""Health, error windows and the ingress's calls to the dense variant, without Ray running.

The ingress's methods are exercised on a stand-in ``self`` (fake handle and response objects for
what only a Ray cluster has); the names say which parts are stand-ins.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from service.serving.health import ErrorWindow, Hysteresis, VariantHealth
from service.serving.policy import Route, VariantFailed, VariantUnavailable, dispatch


def test_hysteresis_needs_a_run_of_misses_to_go_down_and_of_answers_to_come_back():
    h = Hysteresis(misses_to_down=3, successes_to_up=2)
    changes = [h.observe(ok) for ok in [True, False, False, True, False, False, False]]
    assert changes == [False, False, False, False, False, False, True] and not h.up  # the answer reset the run
    changes = [h.observe(ok) for ok in [True, False, True, True]]
    assert changes == [False, False, False, True] and h.up


def test_before_its_first_answer_each_probe_decides_at_once():
    # An ingress replica starting while the dense model loads: no requests sent to a model that is
    # not there (down at the first miss), and routed to it as soon as it answers (up at the first).
    h = Hysteresis(misses_to_down=3, successes_to_up=3)
    assert h.up  # before any probe: requests are not turned away
    assert h.observe(False) and not h.up
    assert not h.observe(False) and not h.up
    assert h.observe(True) and h.up
    assert [h.observe(ok) for ok in [False, False, True, False, False, False]] == [False] * 5 + [True]  # settled


def test_hysteresis_rejects_a_zero_run():
    with pytest.raises(ValueError, match="at least 1"):
        Hysteresis(misses_to_down=0, successes_to_up=1)


def test_error_window_counts_only_recent_calls_and_needs_a_minimum():
    now = [0.0]
    w = ErrorWindow(window_s=10, max_error_rate=0.5, min_requests=4, clock=lambda: now[0])
    for ok in [False, False, False]:
        w.record(ok)
    assert w.error_rate() is None and not w.erroring()  # three calls: not enough to judge
    w.record(True)
    assert w.error_rate() == 0.75 and w.erroring()
    now[0] = 10.5  # the failures age out of the window
    for _ in range(4):
        w.record(True)
    assert w.error_rate() == 0.0 and not w.erroring()


def test_a_variant_is_down_when_probes_miss_or_when_it_keeps_failing():
    now = [0.0]
    h = VariantHealth(["dense", "pruned"], misses_to_down=2, successes_to_up=1, window_s=5, max_error_rate=0.5,
                      min_requests=2, clock=lambda: now[0])
    assert h.down() == set()
    assert not h.probe("dense", True)  # seen up: misses count in a run from now on
    assert not h.probe("dense", False) and h.probe("dense", False)
    assert h.down() == {"dense"}
    h.probe("dense", True)
    h.record("pruned", ok=False)
    h.record("pruned", ok=False)
    assert h.down() == {"pruned"}  # answers probes (none here) but fails its calls


def test_a_failing_variant_falls_back_like_an_unavailable_one_unless_pinned():
    async def call(variant):
        if variant == "pruned":
            raise VariantFailed("pruned", RuntimeError("onnxruntime said no"))
        return variant

    assert asyncio.run(dispatch(Route("pruned", "weight"), call)) == ("dense", Route("dense", "fallback"))
    with pytest.raises(VariantFailed, match="the pruned variant failed \\(RuntimeError\\)"):
        asyncio.run(dispatch(Route("pruned", "override", pinned=True), call))


# ---- the ingress's dense calls, on a stand-in self ------------------------------------------------

class StandInResponse:
    """What ``handle.embed.remote()`` returns: awaitable, and cancellable on the Ray side."""

    def __init__(self, result=None, error: BaseException | None = None, delay_s: float = 0.0):
        self.result, self.error, self.delay_s, self.cancelled = result, error, delay_s, False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        return self._wait().__await__()

    async def _wait(self):
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.result


def _stand_in_ingress(response: StandInResponse, timeout_s: float = 0.05):
    """The ingress's ``_call`` on a stand-in self: a real DenseVariant over a stand-in handle."""
    from service.serving.router import Router
    from service.serving.variants import DenseVariant

    cls = Router.func_or_class
    handle = SimpleNamespace(embed=SimpleNamespace(remote=lambda ids: response))
    health = VariantHealth(["dense", "pruned"], misses_to_down=1, successes_to_up=1, window_s=60,
                           max_error_rate=0.5, min_requests=1)
    self = SimpleNamespace(health=health, dense=DenseVariant(handle, timeout_s=timeout_s, probe_timeout_s=1.0))
    return cls, self


def test_a_timed_out_dense_call_cancels_the_ray_request_and_counts_as_an_error():
    response = StandInResponse(delay_s=10.0)
    cls, self = _stand_in_ingress(response)
    with pytest.raises(TimeoutError):
        asyncio.run(cls._call(self, "dense", [[101, 102]]))
    assert response.cancelled
    assert self.health.errors["dense"].error_rate() == 1.0 and self.health.down() == {"dense"}


def test_an_unexpected_replica_error_is_a_counted_failure_not_a_bare_exception():
    response = StandInResponse(error=ValueError("CUDA error: device-side assert"))
    cls, self = _stand_in_ingress(response)
    with pytest.raises(VariantFailed) as e:
        asyncio.run(cls._call(self, "dense", [[101, 102]]))
    assert isinstance(e.value.error, ValueError) and not e.value.shed
    assert self.health.errors["dense"].error_rate() == 1.0


def test_shedding_is_not_an_error_and_an_answer_is_a_success():
    from ray.serve.exceptions import BackPressureError

    cls, self = _stand_in_ingress(StandInResponse(error=BackPressureError(num_queued_requests=1,
                                                                          max_queued_requests=1)))
    with pytest.raises(VariantUnavailable, match="shedding load") as e:
        asyncio.run(cls._call(self, "dense", [[101, 102]]))
    assert e.value.shed and self.health.errors["dense"].error_rate() is None  # nothing recorded
    emb = np.ones((1, 4), np.float32)
    cls, self = _stand_in_ingress(StandInResponse(result=emb))
    assert asyncio.run(cls._call(self, "dense", [[101, 102]])) is emb
    assert self.health.errors["dense"].error_rate() == 0.0


class StandInReplicaActor:
    """A dense replica actor as the probe sees it: ``get_num_ongoing_requests.remote()`` and
    ``was_initialized.remote()`` are awaitable; the latter counts its calls."""

    def __init__(self, answer=None, error: BaseException | None = None, delay_s: float = 0.0,
                 initialized: bool = True):
        self.get_num_ongoing_requests = SimpleNamespace(
            remote=lambda: StandInResponse(result=answer, error=error, delay_s=delay_s))
        self.initialized, self.init_asked = initialized, 0

        def was_initialized():
            self.init_asked += 1
            return StandInResponse(result=self.initialized)

        self.was_initialized = SimpleNamespace(remote=was_initialized)


@pytest.mark.parametrize("actors, up", [
    ([], False),                                                          # no replica listed: dead or not started
    ([StandInReplicaActor(error=RuntimeError("ActorDiedError"))], False),  # listed, but dead
    ([StandInReplicaActor(answer=3, delay_s=5.0)], False),                 # no answer within the timeout
    ([StandInReplicaActor(error=RuntimeError("dead")), StandInReplicaActor(answer=31)], True),  # one is enough
    ([StandInReplicaActor(answer=0, initialized=False)], False),          # alive, model still loading
])
def test_the_dense_probe_asks_replica_actors_out_of_band(actors, up):
    from service.serving.variants import DenseVariant

    dense = DenseVariant(handle=None, timeout_s=1.0, probe_timeout_s=0.2, list_replicas=lambda: actors)
    assert asyncio.run(dense.probe()) is up


def test_a_replacement_counts_as_up_only_once_its_model_is_loaded():
    from service.serving.variants import DenseVariant

    old, new = StandInReplicaActor(answer=0), StandInReplicaActor(answer=0, initialized=False)
    listed = [old]
    dense = DenseVariant(handle=None, timeout_s=1.0, probe_timeout_s=0.2, list_replicas=lambda: listed)
    assert asyncio.run(dense.probe()) is True
    assert asyncio.run(dense.probe()) is True and old.init_asked == 1  # asked once, then remembered
    listed[:] = [new]  # SIGKILL: the old one is gone, Ray has started the replacement's actor
    assert asyncio.run(dense.probe()) is False and asyncio.run(dense.probe()) is False
    new.initialized = True  # its model is loaded
    assert asyncio.run(dense.probe()) is True
    listed[:] = [old]  # an actor forgotten as dead is asked again if it is ever listed again
    old.initialized = False
    assert asyncio.run(dense.probe()) is False


def test_shadow_agreement_counts_its_samples_and_starts_afresh_on_reset():
    from service.serving.shadow import Shadow

    primary = np.array([[1.0, 0.0]], dtype=np.float32)

    async def scenario():
        shadow = Shadow(max_in_flight=4)

        async def answer(vec):
            return np.array([vec], dtype=np.float32)

        for vec in ([0.6, 0.8], [0.0, 1.0]):
            assert shadow.send("dense", lambda v=vec: answer(v), primary)
        await asyncio.gather(*shadow.tasks)
        before = shadow.view()
        shadow.reset()
        assert shadow.send("dense", lambda: answer([0.8, 0.6]), primary)
        await asyncio.gather(*shadow.tasks)
        return before, shadow.view()

    before, after = asyncio.run(scenario())
    assert (before["completed"], before["mean_cosine"], before["min_cosine"]) == (2, pytest.approx(0.3), 0.0)
    assert (after["completed"], after["mean_cosine"], after["min_cosine"]) == (1, pytest.approx(0.8), pytest.approx(0.8))
