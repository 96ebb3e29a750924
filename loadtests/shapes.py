"""Locust load shapes for twinserve.

:class:`StepLoadShape` holds one offered request rate per step (see ``_steps.py`` for the pacing
rule). Its plan comes from ``$TWINSERVE_LOADTEST_STEPS`` (inline JSON or a JSON file), validated
by :class:`StepShapeConfig`, e.g.::

    TWINSERVE_LOADTEST_STEPS='{"rates_rps": [5, 10, 20, 40], "step_duration_s": 30}' \\
        locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000

Without it the locustfile exposes no shape and the usual ``-u/-r/-t`` options apply. (A step
sweep that measures X_slo is ``twinserve loadtest``: open-loop, not Locust.)
"""

from __future__ import annotations

from _steps import Step, StepShapeConfig, load_step_config
from locust import LoadTestShape

__all__ = ["StepLoadShape", "StepShapeConfig"]


class StepLoadShape(LoadTestShape):
    """Step load: the offered rate of each step, held for ``step_duration_s``; stops after the last."""

    def __init__(self, config: StepShapeConfig | None = None) -> None:
        super().__init__()
        config = config or load_step_config()
        if config is None:
            raise ValueError("StepLoadShape needs a plan: set TWINSERVE_LOADTEST_STEPS to JSON or a JSON file")
        self.config = config

    def current_step(self) -> Step | None:
        return self.config.step_at(self.get_run_time())

    def tick(self) -> tuple[int, float] | None:
        step = self.config.step_at(self.get_run_time())
        if step is None:
            return None
        # Spawn a step's new users within about a second.
        return step.users, float(max(step.users, 1))
