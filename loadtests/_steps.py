"""The step plan the Locust shape follows, as plain Python (no Locust import, so it is unit-testable).

Each step holds one *offered* request rate for ``step_duration_s``. Users are paced
(``wait_time``) so that together they offer exactly that rate: ``users = ceil(rate / per_user_rps)``
and each user aims at one request every ``users / rate`` seconds. A user whose request takes
longer than its interval falls behind (Locust is closed-loop), so the *achieved* rate drops
below the offered one when the server saturates.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

__all__ = ["ENV_STEPS", "Step", "StepShapeConfig", "load_step_config"]

ENV_STEPS = "TWINSERVE_LOADTEST_STEPS"


class StepShapeConfig(BaseModel):
    """A step load: one offered request rate per step, each held for ``step_duration_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rates_rps: list[PositiveFloat] = Field(min_length=1, description="offered request rate of each step, req/s")
    step_duration_s: PositiveFloat = Field(description="how long each step lasts, seconds")
    per_user_rps: PositiveFloat = Field(
        1.0, description="most requests per second one simulated user sends; users = ceil(rate / per_user_rps)")

    def step(self, index: int) -> Step:
        rate = self.rates_rps[index]
        users = max(1, math.ceil(round(rate / self.per_user_rps, 9)))
        return Step(index, rate, users, users / rate)

    def step_at(self, run_time_s: float) -> Step | None:
        """The step in force at ``run_time_s`` seconds into the run, or ``None`` once the plan is over."""
        index = int(run_time_s // self.step_duration_s)
        return self.step(index) if 0 <= index < len(self.rates_rps) else None

    @property
    def total_s(self) -> float:
        return len(self.rates_rps) * self.step_duration_s


@dataclass(frozen=True)
class Step:
    index: int
    offered_rps: float
    users: int
    interval_s: float  # mean gap between one user's requests


def load_step_config(value: str | None = None) -> StepShapeConfig | None:
    """The plan from ``$TWINSERVE_LOADTEST_STEPS``: inline JSON or the path of a JSON file; None if unset."""
    value = os.environ.get(ENV_STEPS, "") if value is None else value
    if not value.strip():
        return None
    text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
    return StepShapeConfig.model_validate(json.loads(text))
