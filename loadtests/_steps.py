"""The step plan the Locust shape follows, as plain Python (no Locust import, so it is unit-testable).

Each step holds one *offered* request rate for ``step_duration_s``. Users are paced
(``wait_time``) so that together they offer exactly that rate: ``users = ceil(rate / per_user_rps)``
and each user aims at one request every ``users / rate`` seconds. A user whose request takes
longer than its interval falls behind (Locust is closed-loop), so the *achieved* rate drops
below the offered one when the server saturates; that is how a saturated step is recognised.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

__all__ = ["ENV_STEPS", "Step", "StepShapeConfig", "load_step_config"]

ENV_STEPS = "TWINSERVE_LOADTEST_STEPS"


class StepShapeConfig(BaseModel):
    """A step load: one offered request rate per step, each held for ``step_duration_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rates_rps: list[PositiveFloat] = Field(min_length=1, description="offered request rate of each step, req/s")
    step_duration_s: PositiveFloat = Field(description="how long each step lasts, seconds (warm-up included)")
    warmup_s: float = Field(2.0, ge=0, description="start of each step left out of its measurement, seconds")
    per_user_rps: PositiveFloat = Field(
        1.0, description="most requests per second one simulated user sends; users = ceil(rate / per_user_rps)")
    arrival: str = Field("poisson", pattern="^(poisson|constant)$",
                         description="gaps between one user's requests: exponential (poisson) or fixed")
    stop_after_saturated_steps: int = Field(
        0, ge=0, description="end the run after this many consecutive saturated steps (0: run every step)")
    min_achieved_ratio: float = Field(
        0.95, gt=0, le=1, description="a step whose achieved/offered rate is below this is saturated")

    @model_validator(mode="after")
    def _check(self) -> StepShapeConfig:
        if self.warmup_s >= self.step_duration_s:
            raise ValueError(
                f"warmup_s ({self.warmup_s}) must be shorter than step_duration_s ({self.step_duration_s}), "
                "or nothing is measured")
        return self

    def step(self, index: int) -> Step:
        rate = self.rates_rps[index]
        users = max(1, math.ceil(round(rate / self.per_user_rps, 9)))
        start = index * self.step_duration_s
        return Step(index, rate, users, users / rate, start, start + self.warmup_s, start + self.step_duration_s)

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
    start_s: float
    measure_from_s: float
    end_s: float


def load_step_config(value: str | None = None) -> StepShapeConfig | None:
    """The plan from ``$TWINSERVE_LOADTEST_STEPS``: inline JSON or the path of a JSON file; None if unset."""
    value = os.environ.get(ENV_STEPS, "") if value is None else value
    if not value.strip():
        return None
    text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
    return StepShapeConfig.model_validate(json.loads(text))
