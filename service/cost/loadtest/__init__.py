"""``twinserve loadtest``: step-load sweeps with Locust, per variant, to typed JSON; X_slo per variant.

How it runs Locust: the ``locust`` command line as a subprocess (``python -m locust --headless``),
one run per variant, with the step shape and the recorder in ``loadtests/locustfile.py``.
Why a subprocess rather than ``locust.env.Environment`` in this process: importing Locust
monkey-patches the whole interpreter with gevent (sockets, threads, ``time.sleep``), which
would leak into the CLI, the report and every test that shares the process; a subprocess is
exactly what a person runs by hand, so the sweep exercises the same locustfile; and the
generator's own CPU use is measured cleanly inside that process (psutil) without counting
the parent. One run per variant (not per step) keeps connections warm across steps and
avoids restarting Locust for every step; each step is measured after its own warm-up.

X_slo of a variant is the achieved rate of the highest step whose client-side p99 is within
the SLO, with errors under the limit and achieved rate at least ``min_achieved_ratio`` of
the offered rate (a saturated step does not count); see :func:`select_x_slo`.
"""

from service.capacity_search import SloCriteria
from service.cost.loadtest.runner import default_locustfile, effective_cpu_count, local_server_hardware, run_sweep
from service.cost.loadtest.schema import (
    GENERATOR_CPU_BOUND_CORES,
    LatencyPercentiles,
    LoadTestError,
    LoadTestResult,
    RawRun,
    RawStep,
    ServerHardware,
    StepResult,
    SweepPlan,
    VariantSweep,
    load_loadtest,
)
from service.cost.loadtest.verdict import percentile, select_x_slo, step_result, step_verdict, summarise_run

__all__ = [
    "GENERATOR_CPU_BOUND_CORES",
    "LatencyPercentiles",
    "LoadTestError",
    "LoadTestResult",
    "RawRun",
    "RawStep",
    "ServerHardware",
    "SloCriteria",
    "StepResult",
    "SweepPlan",
    "VariantSweep",
    "default_locustfile",
    "effective_cpu_count",
    "load_loadtest",
    "local_server_hardware",
    "percentile",
    "run_sweep",
    "select_x_slo",
    "step_result",
    "step_verdict",
    "summarise_run",
]
