"""Locust traffic for twinserve's ``POST /v1/embeddings`` (OpenAI-compatible).

Plain CLI, closed-loop (each user paced at ``--twinserve-per-user-rps``)::

    locust -f loadtests/locustfile.py --headless -u 20 -r 20 -t 60s --host http://127.0.0.1:8000

Options (each also an environment variable):

=================================  ======================================  =========================================
``--twinserve-variant``            ``TWINSERVE_LOADTEST_VARIANT``          force ``dense`` or ``pruned`` (X-Variant)
``--twinserve-multi-share``        ``TWINSERVE_LOADTEST_MULTI_SHARE``      share of requests with several inputs
``--twinserve-max-inputs``         ``TWINSERVE_LOADTEST_MAX_INPUTS``       most inputs in one request
``--twinserve-user-pool``          ``TWINSERVE_LOADTEST_USER_POOL``        distinct user ids (0: none), for stickiness
``--twinserve-per-user-rps``       ``TWINSERVE_LOADTEST_PER_USER_RPS``     pacing per user without a step plan
``--twinserve-arrival``            ``TWINSERVE_LOADTEST_ARRIVAL``          poisson or constant gaps
``--twinserve-out``                ``TWINSERVE_LOADTEST_OUT``              per-step measurements (JSON), step plan only
=================================  ======================================  =========================================

With ``$TWINSERVE_LOADTEST_STEPS`` set (see ``shapes.py``) the step shape drives the run, and
``--twinserve-out`` makes a recorder write, per step, every client-side latency measured after
the step's warm-up, errors, status codes, which variant answered (response header X-Variant),
and this process's own CPU time (psutil), so a CPU-bound load generator shows in the results.
``twinserve loadtest`` reads that file (schema: ``service/cost/loadtest.py``, ``RawRun``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import gevent
import psutil
from _steps import load_step_config
from _traffic import Traffic
from locust import FastHttpUser, events, task
from locust import __version__ as locust_version

RAW_FORMAT = "twinserve-locust-steps/1"

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
    g.add_argument("--twinserve-out", env_var="TWINSERVE_LOADTEST_OUT", default="",
                   help="write per-step measurements here (JSON; needs TWINSERVE_LOADTEST_STEPS)")


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


class _Window:
    def __init__(self, step, proc: psutil.Process) -> None:
        self.step = step
        self.latencies_ms: list[float] = []
        self.failures = 0
        self.inputs = 0
        self.status: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.proc = proc
        psutil.cpu_percent(interval=None)  # start the machine-wide CPU window
        t = proc.cpu_times()
        self.cpu0 = t.user + t.system
        self.t0 = time.perf_counter()

    def record(self, response_time, exception, response, context) -> None:
        self.latencies_ms.append(float(response_time))
        self.failures += exception is not None
        self.inputs += (context or {}).get("inputs", 1)
        self.status[str(getattr(response, "status_code", 0) or 0)] += 1
        headers = getattr(response, "headers", None) or {}
        self.answered[headers.get("x-variant") or "none"] += 1
        self.reasons[headers.get("x-route-reason") or "none"] += 1

    def close(self) -> dict:
        t = self.proc.cpu_times()
        return {
            "index": self.step.index, "offered_rps": self.step.offered_rps, "users": self.step.users,
            "start_s": self.step.measure_from_s, "window_s": time.perf_counter() - self.t0,
            "latencies_ms": self.latencies_ms, "failures": self.failures, "inputs_total": self.inputs,
            "status_counts": dict(self.status), "answered_by": dict(self.answered),
            "route_reasons": dict(self.reasons), "generator_cpu_s": t.user + t.system - self.cpu0,
            "machine_cpu_percent": psutil.cpu_percent(interval=None),
        }


class _Recorder:
    """Measures each step after its warm-up and rewrites the output file after every step."""

    def __init__(self, environment, shape, out: Path) -> None:
        self.env, self.shape, self.out = environment, shape, out
        self.proc = psutil.Process()
        self.steps: list[dict] = []
        self.window: _Window | None = None
        self.stopped_early = False
        self.saturated_streak = 0
        environment.events.request.add_listener(self.on_request)

    def on_request(self, response_time=0.0, exception=None, response=None, context=None, **_kw) -> None:
        if self.window is not None:
            self.window.record(response_time, exception, response, context)

    def _sleep_until(self, run_time_s: float) -> None:
        gevent.sleep(max(0.0, run_time_s - self.shape.get_run_time()))

    def run(self) -> None:
        cfg = self.shape.config
        for i in range(len(cfg.rates_rps)):
            step = cfg.step(i)
            self._sleep_until(step.measure_from_s)
            self.window = _Window(step, self.proc)
            self._sleep_until(step.end_s)
            row = self.close()
            achieved = len(row["latencies_ms"]) / row["window_s"] if row["window_s"] > 0 else 0.0
            saturated = achieved < cfg.min_achieved_ratio * step.offered_rps
            self.saturated_streak = self.saturated_streak + 1 if saturated else 0
            if cfg.stop_after_saturated_steps and self.saturated_streak >= cfg.stop_after_saturated_steps:
                if i + 1 < len(cfg.rates_rps):
                    self.stopped_early = True
                self.shape.stop_requested = True
                return

    def close(self) -> dict | None:
        window, self.window = self.window, None
        if window is None:
            return None
        row = window.close()
        self.steps.append(row)
        self.write()
        return row

    def write(self) -> None:
        doc = {
            "format": RAW_FORMAT, "locust_version": locust_version,
            "variant": _opt(self.env, "twinserve_variant", "") or None,
            "host": self.env.host, "cpu_count": os.cpu_count() or 1, "pid": os.getpid(),
            "plan": self.shape.config.model_dump(mode="json"), "stopped_early": self.stopped_early,
            "multi_share": _opt(self.env, "twinserve_multi_share", 0.2),
            "max_inputs": _opt(self.env, "twinserve_max_inputs", 8),
            "user_pool": _opt(self.env, "twinserve_user_pool", 1000),
            "steps": self.steps,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.out)


_recorder: _Recorder | None = None


@events.test_start.add_listener
def _start_recorder(environment, **_kw) -> None:
    global _recorder
    out = _opt(environment, "twinserve_out", "")
    shape = environment.shape_class
    if not out:
        return
    if shape is None or not hasattr(shape, "config"):
        raise RuntimeError("--twinserve-out needs the step plan: set TWINSERVE_LOADTEST_STEPS")
    _recorder = _Recorder(environment, shape, Path(out))
    gevent.spawn(_recorder.run)


@events.test_stop.add_listener
def _stop_recorder(environment, **_kw) -> None:
    if _recorder is not None:
        _recorder.close()  # a step cut short by the end of the run is kept, with its real window
        _recorder.write()
