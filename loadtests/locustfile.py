"""Locust traffic for twinserve's ``POST /v1/embeddings`` (OpenAI-compatible): the user-facing load tool.

Plain CLI (or drop ``--headless`` for Locust's web UI), closed-loop (each user paced at
``--twinserve-per-user-rps``)::

    locust -f loadtests/locustfile.py --headless -u 20 -r 20 -t 60s --host http://127.0.0.1:8000

Options (each also an environment variable):

=================================  ======================================  =========================================
``--twinserve-variant``            ``TWINSERVE_LOADTEST_VARIANT``          force ``dense`` or ``pruned`` (X-Variant)
``--twinserve-multi-share``        ``TWINSERVE_LOADTEST_MULTI_SHARE``      share of requests with several inputs
``--twinserve-max-inputs``         ``TWINSERVE_LOADTEST_MAX_INPUTS``       most inputs in one request
``--twinserve-user-pool``          ``TWINSERVE_LOADTEST_USER_POOL``        distinct user ids (0: none), for stickiness
``--twinserve-per-user-rps``       ``TWINSERVE_LOADTEST_PER_USER_RPS``     pacing per user without a step plan
``--twinserve-arrival``            ``TWINSERVE_LOADTEST_ARRIVAL``          poisson or constant gaps
``--twinserve-seed``               ``TWINSERVE_LOADTEST_SEED``             seed for texts and users
=================================  ======================================  =========================================

With ``$TWINSERVE_LOADTEST_STEPS`` set (see ``shapes.py``) a step shape holds one offered rate
per step. Locust's users are closed-loop: each waits for its answer, so a slow server is offered
less and p99 near saturation reads too good. X_slo and the cost report's capacities come from
the open-loop generator instead (``service/loadgen.py``): ``twinserve capacity`` (search) and
``twinserve loadtest`` (fixed steps).
"""

from __future__ import annotations

import argparse
import random
import time

import gevent
from _steps import load_step_config
from _traffic import Traffic
from locust import FastHttpUser, events, task

if load_step_config() is not None:  # Locust uses a LoadTestShape found in the locustfile's namespace.
    from shapes import StepLoadShape  # noqa: F401
else:
    StepLoadShape = None  # type: ignore[assignment,misc]


def _share(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def _non_negative(text: str) -> float:
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    g = parser.add_argument_group("twinserve")
    g.add_argument("--twinserve-variant", env_var="TWINSERVE_LOADTEST_VARIANT", default="",
                   choices=["", "dense", "pruned"], help="force a variant with X-Variant (default: routed)")
    g.add_argument("--twinserve-multi-share", env_var="TWINSERVE_LOADTEST_MULTI_SHARE", type=_share, default=0.2,
                   help="share of requests that send a list of inputs")
    g.add_argument("--twinserve-max-inputs", env_var="TWINSERVE_LOADTEST_MAX_INPUTS", type=int, default=8,
                   help="most inputs in a multi-input request")
    g.add_argument("--twinserve-user-pool", env_var="TWINSERVE_LOADTEST_USER_POOL", type=int, default=1000,
                   help="distinct user ids sent as X-User-Id and `user` (0: send none)")
    g.add_argument("--twinserve-per-user-rps", env_var="TWINSERVE_LOADTEST_PER_USER_RPS", type=_non_negative,
                   default=1.0, help="requests/s per user without a step plan (0: no pacing)")
    g.add_argument("--twinserve-arrival", env_var="TWINSERVE_LOADTEST_ARRIVAL", default="poisson",
                   choices=["poisson", "constant"], help="gaps between one user's requests")
    g.add_argument("--twinserve-seed", env_var="TWINSERVE_LOADTEST_SEED", type=int, default=None,
                   help="seed for texts and users (default: random)")


def _opt(environment, name: str, default):
    opts = environment.parsed_options
    return getattr(opts, name, default) if opts is not None else default


class EmbeddingsUser(FastHttpUser):
    """One client: paced requests of realistic texts, some with several inputs, from a pool of users."""

    host = "http://127.0.0.1:8000"
    _seq = 0

    def on_start(self) -> None:
        env = self.environment
        seed = _opt(env, "twinserve_seed", None)
        EmbeddingsUser._seq += 1
        self.traffic = Traffic(
            multi_share=_opt(env, "twinserve_multi_share", 0.2), max_inputs=_opt(env, "twinserve_max_inputs", 8),
            user_pool=_opt(env, "twinserve_user_pool", 1000), variant=_opt(env, "twinserve_variant", ""),
            seed=None if seed is None else seed * 100_003 + EmbeddingsUser._seq,
        )
        self.poisson = _opt(env, "twinserve_arrival", "poisson") == "poisson"
        self.started = time.perf_counter()
        # Desynchronise users spawned together. For Poisson arrivals the first gap is exponential too (memoryless),
        # so the step's rate is stationary from its start; a uniform first gap would front-load requests.
        interval = self._interval_s()
        gevent.sleep(self.traffic.rng.expovariate(1.0 / interval) if self.poisson and interval > 0
                     else random.random() * interval)

    def _interval_s(self) -> float:
        shape = self.environment.shape_class
        step = shape.current_step() if shape is not None and hasattr(shape, "current_step") else None
        if step is not None:
            return step.interval_s
        rps = _opt(self.environment, "twinserve_per_user_rps", 1.0)
        return 1.0 / rps if rps > 0 else 0.0

    def wait_time(self) -> float:
        interval = self._interval_s()
        if interval <= 0:
            return 0.0
        gap = self.traffic.rng.expovariate(1.0 / interval) if self.poisson else interval
        return max(0.0, gap - (time.perf_counter() - self.started))

    @task
    def embed(self) -> None:
        self.started = time.perf_counter()
        body, headers, n = self.traffic.request()
        with self.client.post("/v1/embeddings", json=body, headers=headers, name="/v1/embeddings",
                              context={"inputs": n}, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            try:
                data = resp.json()["data"]
            except (ValueError, KeyError, TypeError):
                resp.failure("response is not an OpenAI embeddings body")
                return
            if len(data) != n:
                resp.failure(f"sent {n} inputs, got {len(data)} embeddings")
