"""Variant health for the ingress, plain Python (no Ray): probe hysteresis and error-rate windows.

Two signals decide whether a variant is "down" for routing (routed requests then go to the other
one; pinned requests still try it):

* **Probes** (:class:`Hysteresis`): an out-of-band check that does not wait in the variant's
  request queue. ``misses_to_down`` consecutive misses mark it down, ``successes_to_up``
  consecutive answers mark it up again, so one slow probe under load or one lucky answer from a
  dying replica does not flip it. Until a variant has answered once (an ingress replica starting
  while the dense model still loads) each probe decides on its own: a miss marks it down at once
  and the first answer marks it up, since a variant never seen up has nothing to flap from.
* **Errors** (:class:`ErrorWindow`): the share of failed inference calls over the last
  ``window_s`` seconds. A variant that answers probes but fails requests is down while the share
  is at or above ``max_error_rate`` (with at least ``min_requests`` calls in the window).

Marking a variant down only changes where *new* requests go: calls already sent finish or time out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["ErrorWindow", "Hysteresis", "VariantHealth"]


class Hysteresis:
    """Up/down state that changes only after a run of the opposite observation, once it has been
    seen up; before that every observation decides (starts up, so that requests are not turned
    away before the first probe)."""

    def __init__(self, *, misses_to_down: int, successes_to_up: int):
        if misses_to_down < 1 or successes_to_up < 1:
            raise ValueError(f"misses_to_down and successes_to_up must be at least 1, "
                             f"got {misses_to_down} and {successes_to_up}")
        self.misses_to_down, self.successes_to_up = misses_to_down, successes_to_up
        self.up = True
        self.seen_up = False  # an observation has said up
        self._run = 0  # consecutive observations that disagree with the current state

    def observe(self, ok: bool) -> bool:
        """Record one probe; True when this observation changed the state."""
        if not self.seen_up:
            changed, self.up, self.seen_up = ok != self.up, ok, ok
            return changed
        if ok == self.up:
            self._run = 0
            return False
        self._run += 1
        if self._run >= (self.successes_to_up if ok else self.misses_to_down):
            self.up, self._run = ok, 0
            return True
        return False


class ErrorWindow:
    """Outcomes of the calls made in the last ``window_s`` seconds."""

    def __init__(self, *, window_s: float, max_error_rate: float, min_requests: int,
                 clock: Callable[[], float] = time.monotonic):
        if not 0.0 < max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be in (0, 1], got {max_error_rate}")
        self.window_s, self.max_error_rate, self.min_requests = window_s, max_error_rate, min_requests
        self._clock = clock
        self._events: deque[tuple[float, bool]] = deque()
        self._errors = 0

    def record(self, ok: bool) -> None:
        self._expire()
        self._events.append((self._clock(), ok))
        self._errors += not ok

    def _expire(self) -> None:
        horizon = self._clock() - self.window_s
        while self._events and self._events[0][0] < horizon:
            _, ok = self._events.popleft()
            self._errors -= not ok

    def error_rate(self) -> float | None:
        """Share of failed calls in the window; None with fewer than ``min_requests`` calls."""
        self._expire()
        n = len(self._events)
        return self._errors / n if n >= self.min_requests else None

    def erroring(self) -> bool:
        rate = self.error_rate()
        return rate is not None and rate >= self.max_error_rate


class VariantHealth:
    """Probe state and error window per variant; ``down()`` is what routing avoids."""

    def __init__(self, variants: Iterable[str], *, misses_to_down: int, successes_to_up: int, window_s: float,
                 max_error_rate: float, min_requests: int, clock: Callable[[], float] = time.monotonic):
        self.probes = {v: Hysteresis(misses_to_down=misses_to_down, successes_to_up=successes_to_up)
                       for v in variants}
        self.errors = {v: ErrorWindow(window_s=window_s, max_error_rate=max_error_rate, min_requests=min_requests,
                                      clock=clock) for v in variants}

    def record(self, variant: str, ok: bool) -> None:
        self.errors[variant].record(ok)

    def probe(self, variant: str, ok: bool) -> bool:
        """Record a probe of ``variant``; True when it changed the variant's up/down state."""
        return self.probes[variant].observe(ok)

    def is_down(self, variant: str) -> bool:
        return not self.probes[variant].up or self.errors[variant].erroring()

    def down(self) -> set[str]:
        return {v for v in self.probes if self.is_down(v)}
