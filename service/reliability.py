"""Reliability scenarios against a running twinserve: overload, replica failure, soak.

Load here is open-loop (``service.loadgen``, the generator the capacity search and the peer
benchmark use too): requests leave on a fixed schedule whatever the server answers, and latency
is timed from the scheduled send. A closed-loop client (Locust's users wait for each answer)
slows down with the server and so never offers more than it can take; overload has to be
offered, not asked for.

Each scenario returns a pydantic summary with its verdicts (``passed`` and the reasons when
not), written as JSON by ``twinserve reliability``. The CI-sized integration tests call the same
functions with short durations on tiny artifacts; ``make reliability`` runs them at full length
on the default artifacts.

Replica processes are found by the title Ray gives them (``ray::ServeReplica:<app>:<deployment>``),
so the scenarios must run on the node that hosts the replicas (a single-node deployment, or the
node the scenario is started on).
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import httpx
import psutil
from pydantic import BaseModel

from service._platform import metric_sum
from service._schema import VARIANTS
from service._stats import percentile
from service.loadgen import TEXTS, Answer, LoadSummary, drive, summarise

__all__ = [
    "SCENARIOS",
    "Answer",
    "FailureResult",
    "LoadSummary",
    "OverloadResult",
    "SoakResult",
    "drive",
    "kill_replicas",
    "overload",
    "overload_factor",
    "replica_failure",
    "replica_pids",
    "run_reliability",
    "soak",
    "summarise",
]

APP = "twinserve"


# ---- replica processes ------------------------------------------------------------------------------

def replica_pids(deployment: str, app: str = APP) -> list[int]:
    """PIDs of the live replica processes of one deployment on this node.

    From the connected Ray cluster's actor table when this process is connected to one (so another
    Serve instance on the machine with the same names is never touched); otherwise by process title.
    """
    import ray

    if ray.is_initialized():
        from ray._private.state import actors  # no public call gives replica PIDs

        me = ray.get_runtime_context().get_node_id()
        return sorted(a["Pid"] for a in actors().values()
                      if a.get("State") == "ALIVE" and a.get("ActorClassName") == f"ServeReplica:{app}:{deployment}"
                      and a["Address"]["NodeID"] == me and a["Pid"])
    prefix = f"ray::ServeReplica:{app}:{deployment}"
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and (cmd[0] == prefix or cmd[0].startswith(prefix + ".")):
            pids.append(p.pid)
    return sorted(pids)


def serve_pids(app: str = APP) -> dict[str, list[int]]:
    return {d: replica_pids(d, app) for d in ("Router", "Dense")}


# The deployment that hosts each variant: the CPU variant runs inside the ingress replicas.
HOSTS = {"pruned": "Router", "dense": "Dense"}


def kill_replicas(deployment: str, app: str = APP, count: int | None = None) -> list[int]:
    """SIGKILL ``count`` replica processes of ``deployment`` (default: all): the crash a replica gets
    from the OOM killer."""
    pids = replica_pids(deployment, app)[:count]
    if not pids:
        raise RuntimeError(f"no live replica process of {app}:{deployment} on this node")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def _rss_mb(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class _RssSampler:
    """RSS of every Serve replica (summed per deployment) every ``period_s``, in a thread."""

    def __init__(self, period_s: float = 1.0, app: str = APP):
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._period, self._app = period_s, app
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append({d: _rss_mb(p) for d, p in serve_pids(self._app).items()})
            self._stop.wait(self._period)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self) -> dict[str, float]:
        return {d: max(s[d] for s in self.samples) for d in self.samples[0]} if self.samples else {}


# ---- metrics ----------------------------------------------------------------------------------------

def fallback_count(metrics_url: str) -> float:
    """Requests answered by fallback, as Ray's metrics endpoint exports them now (all variants)."""
    return metric_sum(metrics_url, "ray_twinserve_requests_total", reason="fallback")


# ---- scenarios --------------------------------------------------------------------------------------

class OverloadResult(BaseModel):
    x_slo_rps: float
    slo_p99_ms: float
    burst: LoadSummary  # the generator's view: latency from the scheduled send
    generator_lag_p99_ms: float  # how late the generator sent (its own share of the latency above)
    edge_ok_p99_ms: float | None  # accepted requests at the service's boundary (the edge's access log); None: no log
    judged_on: str  # which accepted p99 the verdict used
    recovery_s: float | None  # from the end of the burst to the first clean window; None: not within the limit
    replicas_before: dict[str, list[int]]
    replicas_after: dict[str, list[int]]
    rss_before_mb: dict[str, float]
    rss_peak_mb: dict[str, float]
    passed: bool
    reasons: list[str]


def _clean_window(url: str, rate_rps: float, window_s: float, slo_p99_ms: float, variant: str | None) -> bool:
    s = summarise(drive(url, rate_rps, window_s, variant=variant), rate_rps, window_s)
    return s.ok == s.sent and s.ok_p99_ms is not None and s.ok_p99_ms <= slo_p99_ms


def overload(url: str, *, x_slo_rps: float, slo_p99_ms: float = 100.0, factor: float = 3.0,
             duration_s: float = 60.0, variant: str | None = "pruned", recovery_limit_s: float = 10.0,
             window_s: float = 1.0, warmup_s: float = 5.0, app: str = APP,
             edge_access_log: Path | None = None) -> OverloadResult:
    """Offer ``factor`` x X_slo for ``duration_s``, then time the return to clean service.

    A ``warmup_s`` at half X_slo comes first, not counted (as the load-test sweep warms up): the
    first batches of a fresh replica are slow for reasons that are not overload.

    Passes when the service shed (429/503, each with Retry-After) instead of failing, accepted
    requests kept p99 within 2x the SLO, no replica process died, and a window at half X_slo was
    clean (every request 200, p99 within the SLO) within ``recovery_limit_s`` of the burst's end.

    Accepted p99 is the service's: with ``edge_access_log`` (``twinserve serve --edge-access-log``)
    it is read from the edge's line for each request of the burst (first byte in to last byte out,
    its queue wait included), since a generator that shares the server's cores falls behind at
    several times X_slo and its lateness would be counted as the server's. Without the log it is
    the generator's figure. Both, and the generator's lag, are in the result.
    """
    from service.serving.edge import read_access_log

    if warmup_s > 0:
        drive(url, max(1.0, x_slo_rps / 2), warmup_s, variant=variant)
    before = serve_pids(app)
    rss_before = {d: _rss_mb(p) for d, p in before.items()}
    rate = factor * x_slo_rps
    offset = edge_access_log.stat().st_size if edge_access_log is not None else 0
    with _RssSampler(app=app) as rss:
        answers = drive(url, rate, duration_s, variant=variant)
        burst = summarise(answers, rate, duration_s)
    ended = time.monotonic()
    lag_p99_ms = percentile([a.lag_s * 1e3 for a in answers], 99) if answers else 0.0
    edge_p99_ms = None
    if edge_access_log is not None:
        edge_ok = [total for status, total, _ in read_access_log(edge_access_log, offset)[0] if status == 200]
        edge_p99_ms = percentile(edge_ok, 99) if edge_ok else None
    accepted_p99, judged_on = ((edge_p99_ms, "edge access log") if edge_access_log is not None
                               else (burst.ok_p99_ms, "generator (from the scheduled send)"))
    recovery = None
    while time.monotonic() - ended < recovery_limit_s:
        if _clean_window(url, max(1.0, x_slo_rps / 2), window_s, slo_p99_ms, variant):
            recovery = time.monotonic() - ended
            break
    after = serve_pids(app)
    reasons = []
    if burst.shed == 0:
        reasons.append("nothing was shed: the burst did not overload the service, or it queued instead")
    if burst.failed:
        reasons.append(f"{burst.failed} requests failed outright: {burst.by_status}")
    if burst.shed_without_retry_after:
        reasons.append(f"{burst.shed_without_retry_after} shed answers lacked Retry-After")
    if accepted_p99 is None or accepted_p99 > 2 * slo_p99_ms:
        reasons.append(f"accepted p99 {accepted_p99} ms ({judged_on}) is over 2x the SLO ({2 * slo_p99_ms:g} ms)")
    if after != before:
        reasons.append(f"replica processes changed during the burst: {before} -> {after}")
    if recovery is None:
        reasons.append(f"no clean {window_s:g} s window within {recovery_limit_s:g} s after the burst")
    return OverloadResult(x_slo_rps=x_slo_rps, slo_p99_ms=slo_p99_ms, burst=burst,
                          generator_lag_p99_ms=lag_p99_ms, edge_ok_p99_ms=edge_p99_ms, judged_on=judged_on,
                          recovery_s=recovery,
                          replicas_before=before, replicas_after=after, rss_before_mb=rss_before,
                          rss_peak_mb=rss.peak(), passed=not reasons, reasons=reasons)


def overload_factor(x_slo_rps: float, answered_rps: float = 0.0, overload_rps: float | None = None) -> float:
    """How many times X_slo the overload scenario offers: at least 3; twice ``answered_rps`` (the
    highest rate a search or sweep saw answered) when that is more, since X_slo is set by p99 and error
    ratio, which noise or an admission limit can pull far below what the variant carries; or
    ``overload_rps`` when that is more still."""
    return max(3.0, 2.0 * answered_rps / x_slo_rps, (overload_rps or 0.0) / x_slo_rps)


class FailureResult(BaseModel):
    killed: str
    killed_pids: list[int]
    replacement_pids: list[int]
    replaced_after_s: float | None
    load: LoadSummary
    fallbacks_in_answers: int
    fallbacks_in_metrics: float | None  # increase of the exported counter; None: no metrics URL given
    split_after: dict[str, int]  # variant -> routed answers in the window after the replacement
    expected_share: dict[str, float]
    detect_s: float | None  # dense: the longest the ingress may take to mark it down; fallback is owed after it
    passed: bool
    reasons: list[str]


def dense_detect_s() -> float:
    """The longest the ingress takes to mark a dead dense variant down, at the router's defaults:
    ``health_misses_to_down`` probes, each up to ``health_period_s`` apart and ``health_timeout_s`` long."""
    from service.serving.config import RouterConfig

    r = RouterConfig()
    return r.health_misses_to_down * (r.health_period_s + r.health_timeout_s)


def replica_failure(url: str, variant: str, *, weights: dict[str, float], rate_rps: float = 10.0,
                    duration_s: float = 30.0, kill_at_s: float = 5.0, split_requests: int = 400,
                    max_failure_ratio: float = 0.001, metrics_url: str | None = None,
                    replace_timeout_s: float = 180.0, metrics_wait_s: float = 30.0, app: str = APP,
                    detect_s: float | None = None) -> FailureResult:
    """Routed load; SIGKILL a process hosting ``variant`` ``kill_at_s`` into it; check the aftermath.

    For the dense variant that is every Dense replica: once the ingress has had time to mark it down
    (``detect_s``, default :func:`dense_detect_s`), routed requests must fall back to the CPU variant
    (in the response headers, and in the exported metric when ``metrics_url`` is given). A
    replacement that answers sooner leaves the ingress no reason to fall back: the routed requests
    sent meanwhile wait for it, and must still not fail.
    For the CPU variant it is one ingress replica: the proxy in front retries a request that got
    no answer on another ingress replica, so nothing needs to fall back. Passes when client-visible
    failures stay within ``max_failure_ratio``, Ray started a new replica process, and afterwards
    the routed split matches ``weights`` again (within four standard deviations over
    ``split_requests`` requests).
    """
    deployment = HOSTS[variant]
    dense = variant == "dense"
    if dense and detect_s is None:
        detect_s = dense_detect_s()
    base = fallback_count(metrics_url) if metrics_url else None
    pool = ThreadPoolExecutor(1)
    loading = pool.submit(drive, url, rate_rps, duration_s)  # routed: no pin, no user key
    time.sleep(kill_at_s)
    before = set(replica_pids(deployment, app))
    killed = kill_replicas(deployment, app, count=None if dense else 1)
    t_kill = time.monotonic()
    new: list[int] = []
    while time.monotonic() - t_kill < replace_timeout_s:
        new = [p for p in replica_pids(deployment, app) if p not in before]
        if new and _answers_pinned(url, variant):
            break
        time.sleep(0.2)
    replaced_after = time.monotonic() - t_kill if new else None
    load = summarise(loading.result(), rate_rps, duration_s)  # the driver's own exception, if it had one
    pool.shutdown()
    fallbacks = sum(v for k, v in load.by_route.items() if k.endswith("/fallback"))

    metric_delta = None
    if metrics_url:
        deadline = time.monotonic() + metrics_wait_s
        while True:  # Ray exports on an interval; wait until the counter has caught up with the answers
            metric_delta = fallback_count(metrics_url) - base
            if metric_delta >= fallbacks or time.monotonic() > deadline:
                break
            time.sleep(1.0)

    # The split after the replacement: sequential routed requests, no user key (weighted draw).
    split = Counter()
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(split_requests):
            r = http.post("/v1/embeddings", json={"input": TEXTS[i % len(TEXTS)], "encoding_format": "base64"})
            if r.status_code == 200 and r.headers.get("x-route-reason") == "weight":
                split[r.headers["x-variant"]] += 1

    reasons = []
    if load.failure_ratio + load.shed / max(1, load.sent) > max_failure_ratio:
        reasons.append(f"{load.failed + load.shed} of {load.sent} requests failed or were shed "
                       f"(limit {max_failure_ratio:.1%}): {load.by_status}")
    if dense and fallbacks == 0 and (replaced_after is None or replaced_after > detect_s):
        reasons.append(f"no answer came by fallback, though the replacement took {replaced_after} s, longer than "
                       f"the {detect_s:g} s the ingress may take to mark dense down")
    if metrics_url and (metric_delta or 0) < fallbacks:
        reasons.append(f"the fallback metric rose by {metric_delta}, fewer than the {fallbacks} fallback answers")
    if not new:
        reasons.append(f"no replacement replica answered within {replace_timeout_s:g} s")
    n = sum(split.values())
    for v, w in weights.items():
        sd = (w * (1 - w) / max(n, 1)) ** 0.5
        if n == 0 or abs(split[v] / n - w) > 4 * sd + 1e-9:
            reasons.append(f"after the replacement {v} got {split[v]} of {n} routed requests; its weight is {w}")
    return FailureResult(killed=deployment, killed_pids=killed, replacement_pids=new, replaced_after_s=replaced_after,
                         load=load, fallbacks_in_answers=fallbacks, fallbacks_in_metrics=metric_delta,
                         split_after=dict(split), expected_share=weights, detect_s=detect_s, passed=not reasons,
                         reasons=reasons)


def _answers_pinned(url: str, variant: str) -> bool:
    try:
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "are you back?"}, headers={"X-Variant": variant},
                       timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


class SoakResult(BaseModel):
    rate_rps: float
    duration_s: float
    load: LoadSummary
    rss_start_mb: dict[str, float]  # median of the first minute (after warm-up)
    rss_end_mb: dict[str, float]  # median of the last minute
    rss_growth: dict[str, float]  # end / start - 1
    replicas_before: dict[str, list[int]]
    replicas_after: dict[str, list[int]]
    passed: bool
    reasons: list[str]


def soak(url: str, *, rate_rps: float, duration_s: float = 600.0, max_rss_growth: float = 0.10,
         window_s: float = 60.0, app: str = APP) -> SoakResult:
    """Routed load at ``rate_rps`` for ``duration_s``: no error, RSS growth under ``max_rss_growth``."""
    before = serve_pids(app)
    with _RssSampler(period_s=2.0, app=app) as rss:
        answers = drive(url, rate_rps, duration_s, users=1000)
    load = summarise(answers, rate_rps, duration_s)
    after = serve_pids(app)
    n = max(1, int(window_s / 2.0))
    start = {d: statistics.median(s[d] for s in rss.samples[:n]) for d in before}
    end = {d: statistics.median(s[d] for s in rss.samples[-n:]) for d in before}
    growth = {d: end[d] / start[d] - 1 if start[d] else 0.0 for d in before}
    reasons = []
    if load.ok != load.sent:
        reasons.append(f"{load.sent - load.ok} of {load.sent} requests were not answered 200: {load.by_status}")
    for d, g in growth.items():
        if g > max_rss_growth:
            reasons.append(f"{d} RSS grew {g:.1%} ({start[d]:.0f} -> {end[d]:.0f} MB), over {max_rss_growth:.0%}")
    if after != before:
        reasons.append(f"replica processes changed: {before} -> {after}")
    return SoakResult(rate_rps=rate_rps, duration_s=duration_s, load=load, rss_start_mb=start, rss_end_mb=end,
                      rss_growth=growth, replicas_before=before, replicas_after=after, passed=not reasons,
                      reasons=reasons)


# ---- the full run (`twinserve reliability`, `make reliability`) --------------------------------------

SCENARIOS = ("overload", "kill", "soak")
SEARCH_BUDGET_S = 180.0  # per variant


def _search_x_slo(url: str, out_dir: Path, slo, summary: dict, say: Callable[[str], None]
                  ) -> tuple[dict[str, float], float]:
    """X_slo of each variant (pinned, one text per request, as the scenarios send) by the
    open-loop capacity search; the searches go to ``capacity.json``. A search that found no
    confirmed X_slo gives its best single pass (said so in the summary's notes), else 0.
    Returns X_slo per variant and the most the pruned variant answered in any probe."""
    import json

    from service.capacity_search import SearchPlan, find_capacity

    plan = SearchPlan(start_rps=8.0, max_total_s=SEARCH_BUDGET_S)
    found, searches, answered = {}, {}, 0.0
    for variant in VARIANTS:
        say(f"X_slo of {variant}: open-loop capacity search, pinned, 1 text per request (<= {plan.max_total_s:g} s)")
        r = find_capacity(f"{url}/v1/embeddings", plan=plan, criteria=slo, headers={"X-Variant": variant},
                          model=f"twinserve-{variant}", on_probe=lambda p, v=variant: say(
                              f"  {v:6} {p.phase:7} {p.offered_rps:6.1f} req/s offered, {p.answered_rps:6.1f} "
                              f"answered 200, p99 {p.latency.p99_ms if p.latency else float('nan'):.0f} ms"
                              + ("" if p.passed else f" ({'; '.join(p.reasons)})")))
        searches[variant] = r.model_dump(mode="json")
        found[variant] = r.x_slo_rps or r.best_single_pass_rps or 0.0
        if r.x_slo_rps is None:
            summary.setdefault("notes", []).append(
                f"{variant}: the search found no confirmed X_slo ({r.status}); using its best single pass, "
                f"{found[variant]:g} req/s")
        if variant == "pruned":
            answered = r.max_answered_rps
    (out_dir / "capacity.json").write_text(json.dumps(searches, indent=2) + "\n")
    return found, answered


def _set_weights(url: str, token: str, dense: float) -> dict[str, float]:
    weights = {"dense": round(dense, 4), "pruned": round(1 - dense, 4)}
    httpx.put(f"{url}/admin/routing", json={"weights": weights}, headers={"Authorization": f"Bearer {token}"},
              timeout=30).raise_for_status()
    return weights


def verdict(scenarios: dict[str, dict]) -> bool:
    """A run passes when at least one scenario ran and every one that ran passed: nothing tested is a fail."""
    return bool(scenarios) and all(s.get("passed", False) for s in scenarios.values())


def run_reliability(*, out_dir: Path = Path("results") / "reliability", artifacts: Path | None = None,
                    x_slo_rps: dict[str, float] | None = None, overload_s: float = 60.0, soak_s: float = 600.0,
                    overload_rps: float | None = None, scenarios: Sequence[str] = SCENARIOS,
                    say: Callable[[str], None] = print) -> dict:
    """Serve the artifacts in the background and run every scenario at full length; ``summary.json``.

    X_slo per variant comes from the open-loop capacity search (``service.capacity_search``,
    written to ``capacity.json``) unless given. Rates are chosen so that each scenario tests what
    it names: overload offers 3x the pruned variant's X_slo to that variant, or twice the highest
    rate the search saw it carry, or
    ``overload_rps``, whichever is most (pinned: routed overflow would fall back to dense);
    the failure scenarios run at a rate either variant can carry alone, since the survivor takes
    everything; the soak runs routed traffic with each variant at half its own X_slo. The summary
    is rewritten after every scenario, so an interrupted run keeps what it measured. ``scenarios``
    picks some of ``SCENARIOS``; the summary's verdict covers those that ran.
    """
    import json
    import secrets
    from datetime import UTC, datetime

    from service._platform import free_port, hardware_description
    from service.capacity_search import SloCriteria
    from service.demo import SERVER_START_TIMEOUT_S, LocalServer, ensure_artifacts

    out_dir.mkdir(parents=True, exist_ok=True)
    art = ensure_artifacts(artifacts, None, say)
    slo = SloCriteria()
    summary: dict = {"created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                     "hardware": hardware_description(), "artifacts": str(art.resolve()),
                     "slo_p99_ms": slo.slo_p99_ms, "scenarios": {}}

    def save() -> None:
        summary["passed"] = verdict(summary["scenarios"])
        tmp = out_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(out_dir / "summary.json")

    port, metrics_port, token = free_port(), free_port(), secrets.token_urlsafe(16)
    say(f"serving {art} on port {port} (log {out_dir / 'serve.log'})")
    edge_log = out_dir / "edge-access.log"
    edge_log.unlink(missing_ok=True)
    server = LocalServer(art, port, metrics_port, out_dir / "serve.log", token,
                         extra_args=["--edge-access-log", str(edge_log)])
    url, metrics_url = server.url, f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        server.wait_ready(SERVER_START_TIMEOUT_S)
        answered = 0.0  # the highest rate the search saw the pruned variant answer, SLO or not
        if x_slo_rps is None:
            x_slo_rps, answered = _search_x_slo(url, out_dir, slo, summary, say)
        summary["x_slo_rps"] = x_slo_rps
        say(f"X_slo: {x_slo_rps}")
        x_pruned, x_dense = x_slo_rps["pruned"], x_slo_rps["dense"]
        if x_pruned <= 0:
            raise RuntimeError("the pruned variant met the SLO at no rate; nothing to overload against")

        if "overload" in scenarios:
            factor = overload_factor(x_pruned, answered, overload_rps)
            summary["overload_factor"] = factor
            say(f"overload: {factor * x_pruned:.1f} req/s ({factor:.1f}x X_slo) pinned to pruned for {overload_s:g} s")
            r = overload(url, x_slo_rps=x_pruned, slo_p99_ms=slo.slo_p99_ms, factor=factor, duration_s=overload_s,
                         edge_access_log=edge_log)
            summary["scenarios"]["overload"] = r.model_dump(mode="json")
            save()
            say(f"  passed={r.passed} shed={r.burst.shed}/{r.burst.sent} accepted p99 at the edge "
                f"{r.edge_ok_p99_ms} ms, at the generator {r.burst.ok_p99_ms} ms (its lag p99 "
                f"{r.generator_lag_p99_ms:.0f} ms) "
                f"recovery={r.recovery_s} s {'; '.join(r.reasons)}")

        if "kill" in scenarios:
            survivor_rate = max(1.0, 0.5 * min(x_pruned, x_dense or x_pruned))
            weights = _set_weights(url, token, 0.5)
            for variant in ("pruned", "dense"):
                say(f"replica failure: SIGKILL a {HOSTS[variant]} replica (hosts {variant}) 10 s into 60 s of "
                    f"routed load at {survivor_rate:g} req/s")
                r = replica_failure(url, variant, weights=weights, rate_rps=survivor_rate, duration_s=60,
                                    kill_at_s=10, metrics_url=metrics_url)
                summary["scenarios"][f"kill_{variant}"] = r.model_dump(mode="json")
                save()
                say(f"  passed={r.passed} failed={r.load.failed + r.load.shed}/{r.load.sent} "
                    f"fallbacks={r.fallbacks_in_answers} replaced after {r.replaced_after_s} s {'; '.join(r.reasons)}")

        if "soak" in scenarios:
            rate = 0.5 * x_pruned
            dense_share = min(0.5, 0.5 * x_dense / rate) if x_dense else 0.0
            summary["soak_weights"] = _set_weights(url, token, dense_share)
            say(f"soak: {rate:g} req/s routed (dense share {dense_share:.3f}: each variant at <= half its X_slo) "
                f"for {soak_s:g} s")
            r = soak(url, rate_rps=rate, duration_s=soak_s)
            summary["scenarios"]["soak"] = r.model_dump(mode="json")
            save()
            say(f"  passed={r.passed} ok={r.load.ok}/{r.load.sent} RSS growth "
                + ", ".join(f"{d} {g:+.1%}" for d, g in r.rss_growth.items()) + f" {'; '.join(r.reasons)}")
    finally:
        server.stop()
        save()
    say(f"reliability: {'all scenarios passed' if summary['passed'] else 'FAILED'}; {out_dir / 'summary.json'}")
    return summary
