"""``twinserve demo``: prune (cached) → serve in the background → capacity search → Prometheus → report.

Everything a person would run by hand, in order, with the same commands' code paths:
``twinserve prune`` (``fast`` preset unless one is named; reused when already built),
``twinserve serve`` as a child process (its own session, its own Ray), ``twinserve capacity`` per
variant (pinned with ``X-Variant``) at each request shape (the locustfile's mix, 1 text, 8 texts),
then Debian's Prometheus with ``deploy/prometheus.yml`` retargeted at the child's Ray metrics port
(started after the searches, so that it takes no CPU from the server they measure), a short routed
burst with every answer shadowed (so the report has live shadow agreement from Prometheus), and
``twinserve report``. The server and Prometheus are stopped at the end, on
failure and on Ctrl-C.

The whole demo keeps to a wall-time budget (``budget_s``, under 10 minutes by default). What is
left of it once the server is up, less a reserve for the shadow burst, the report and the
shutdown, is shared among the searches as each starts (:func:`share_budget`: the costed shape gets
:data:`COSTED_WEIGHT` times the time of the others, the dense variant's slower probes
:data:`DENSE_WEIGHT` times a pruned one's), so time one search
did not use goes to the next. A search that runs out of time stops bisecting (or confirming) and
says so in its notes; the report shows that. The first search of each variant ramps from
:data:`START_RPS` (a guess for a 2-core machine: a faster server ramps up from it, a slower one
down); the variant's later shapes start from its first X_slo scaled by texts per request.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from service._platform import ChildProcess, free_port, wait_ready

__all__ = ["DEMO_BUDGET_S", "DEMO_SHAPES", "START_RPS", "DemoError", "LocalServer", "demo_plan", "ensure_artifacts",
           "run_demo", "search_variants", "search_weight", "share_budget", "start_rps_for"]

DEMO_BUDGET_S = 570.0  # the whole demo from the start of run_demo; under 10 minutes with Python's start and exit
DEMO_SHAPES = ("mix", "1", "8")
SEARCH_ORDER = ("pruned", "dense")  # the variants (service._schema.VARIANTS) in the order the demo searches them
START_RPS = {"dense": 16.0, "pruned": 64.0}
RESERVE_S = 60.0  # after the searches: the shadow burst, the report, stopping Ray and Prometheus
# The costed shape decides the report's $ figures: it gets the most time. A dense probe at its ~50 req/s
# lasts 20 s (1,000 requests take longer) where a pruned one at ~500 lasts 5: dense gets half again as
# much. At 3.0 / 1.2 the dense mix search ran out of time to repeat below a refuted pass (2026-11-30).
COSTED_WEIGHT, DENSE_WEIGHT = 4.0, 1.5
# X_slo falls slower than texts per request grows: the pruned variant on 2 cores answered 152 req/s at
# 1 text and 80 at 8 (results/peers, 2026-11-30), ~8^-0.3; the dense one is more compute-bound. 0.5 sits
# between, so the first probe of a later shape lands within about 2x of its X_slo either way.
TEXTS_EXPONENT = 0.5
INFORMED_START = 0.75
# An informed start is within about 1.5x of X_slo: ramp by 1.5 from it (x2 from a guess).
INFORMED_GROWTH = 1.5
SHADOW_REQUESTS = 40
SERVER_START_TIMEOUT_S = 900  # a loaded 2-core machine loads torch + ONNX Runtime replicas slowly
METRICS_REPORT_INTERVAL_MS = 2000  # Ray's default is 10 s; the demo is short


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and where its log is."""


def share_budget(remaining_s: float, weights: Sequence[float]) -> float:
    """Seconds for the next of the searches still to run (``weights``, the next first): its share
    of ``remaining_s`` by weight. What an earlier search left unused is shared again."""
    if not weights or any(w <= 0 for w in weights):
        raise ValueError(f"weights must be positive and at least one, got {list(weights)}")
    return max(0.0, remaining_s) * weights[0] / sum(weights)


def search_weight(variant: str, shape: str, cost_shape: str) -> float:
    return (COSTED_WEIGHT if shape == cost_shape else 1.0) * (DENSE_WEIGHT if variant == "dense" else 1.0)


def start_rps_for(variant: str, shape: str, known: dict[str, float | None],
                  starts: dict[str, float] = START_RPS) -> float:
    """Where the ramp of ``variant`` at ``shape`` starts: from an X_slo already found for the variant
    at another shape (``known``: shape -> X_slo), scaled by the ratio of mean texts per request to the
    power :data:`TEXTS_EXPONENT` (a request costs a fixed part and a part per text) and by
    :data:`INFORMED_START` (so the first probe most likely passes and the ramp goes up, where each
    probe narrows the bracket, rather than down by halves), else ``starts[variant]`` (:data:`START_RPS`)."""
    from service.loadgen import SHAPES

    def texts(k: str) -> float:
        sh = SHAPES[k]
        return sh.texts if not sh.multi_share else 1 + sh.multi_share * (2 + sh.max_texts) / 2 - sh.multi_share

    for k, x in known.items():
        if x:
            return max(1.0, round(INFORMED_START * x * (texts(k) / texts(shape)) ** TEXTS_EXPONENT, 1))
    return starts[variant]


def demo_plan(start_rps: float, budget_s: float):
    """The search plan of one demo search: the capacity search's defaults (ramp x2, bisect to 5%,
    probes of >= 1,000 requests or 20 s after a 2 s warm-up, up to 3 repeats to confirm) with shorter
    idle gaps, a 5 s client timeout (an answer 50 times the SLO late is as good as none, and an
    overloaded probe drains sooner) and ``budget_s``. Repeats run only while the budget holds them;
    at 2 a demo search (16:00) gave up with 608 and 576 req/s each refuted once and 512 never
    repeated, so the report had no pruned figure to price."""
    from service.capacity_search import SearchPlan

    return SearchPlan(start_rps=start_rps, pause_s=0.5, recovery_s=3.0, timeout_s=5.0, max_total_s=max(budget_s, 1.0))


def ensure_artifacts(art: Path | None, preset_name: str | None, say: Callable[[str], None]) -> Path:
    from service.artifacts.manifest import MANIFEST_FILE, verify_artifacts
    from service.pruning.config import preset
    from service.pruning.job import run_prune
    from service.settings import default_artifact_dir, default_model_dir

    art = (art or default_artifact_dir()).expanduser()
    if preset_name is None and (art / MANIFEST_FILE).is_file():
        m = verify_artifacts(art)
        say(f"artifacts: reusing {art} (preset {m.config.get('preset')}); PRESET=<name> builds another")
        return art
    name = preset_name or "fast"
    say(f"artifacts: twinserve prune --preset {name} --out {art} (reused if already built)")
    run_prune(default_model_dir(), art, preset(name), preset_name=name)
    return art


class LocalServer(ChildProcess):
    """``twinserve serve`` in its own session; stopped with SIGINT (its clean shutdown), then harder
    (:data:`service._platform.SERVER_LADDER`)."""

    def __init__(self, art: Path, port: int, metrics_port: int, log_path: Path, token: str,
                 extra_args: Sequence[str] = ()):
        env = {**os.environ, "TWINSERVE_ADMIN_TOKEN": token,
               "RAY_metrics_report_interval_ms": str(METRICS_REPORT_INTERVAL_MS)}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            [sys.executable, "-m", "service.cli", "serve", "--artifacts", str(art), "--port", str(port),
             "--metrics-port", str(metrics_port), "--dense-weight", "0.5", "--shadow-fraction", "0", *extra_args],
            log_path, env=env)

    def wait_ready(self, timeout_s: float) -> None:
        try:
            wait_ready(self.url, timeout_s, poll_s=1.0, alive=self.alive)
        except RuntimeError:
            raise DemoError(f"twinserve serve exited with {self.proc.returncode}; see {self.log_path}; "
                            f"its last lines: {self.log_tail(15)}") from None
        except TimeoutError:
            raise DemoError(f"twinserve serve not ready after {timeout_s:g} s; see {self.log_path}; "
                            f"its last lines: {self.log_tail(15)}") from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _shadow_counts(prom) -> dict[str, float]:
    from service.cost.report import DEFAULT_SHADOW_METRIC

    return prom.query(f"sum by (variant) ({DEFAULT_SHADOW_METRIC}_texts_total)")


def _wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def _shadow_burst(url: str, token: str, n: int, prom) -> bool:
    """Routed requests with every answer shadowed to the other variant, in two halves: PromQL's
    increase() needs two samples of a series, so Prometheus must see the first half before the
    second is sent. Shadow is switched off again after. True when Prometheus saw both halves."""
    auth = {"Authorization": f"Bearer {token}"}
    timeout_s = 3 * METRICS_REPORT_INTERVAL_MS / 1000 + 30
    with httpx.Client(base_url=url, timeout=60) as http:
        def send(k: int, start: int) -> None:
            for i in range(start, start + k):
                http.post("/v1/embeddings", json={"input": [f"shadow sample {i}: how close are the twins?"],
                                                  "model": "twinserve"}).raise_for_status()

        http.put("/admin/routing", headers=auth, json={"shadow_fraction": 1.0}).raise_for_status()
        try:
            send(n // 2, 0)
            if not _wait_for(lambda: len(_shadow_counts(prom)) >= 2, timeout_s):
                return False
            first = _shadow_counts(prom)
            send(n - n // 2, n // 2)
            if not _wait_for(lambda: all(v > first.get(k, 0.0) for k, v in _shadow_counts(prom).items()), timeout_s):
                return False
            # then until nothing moves for two export intervals and a scrape: the whole second half is in
            quiet_s = 3 * METRICS_REPORT_INTERVAL_MS / 1000
            last, since = _shadow_counts(prom), time.monotonic()
            while time.monotonic() - since < quiet_s:
                time.sleep(0.5)
                now = _shadow_counts(prom)
                if now != last:
                    last, since = now, time.monotonic()
            return True
        finally:
            http.put("/admin/routing", headers=auth, json={"shadow_fraction": 0.0}).raise_for_status()


def _order_shapes(shapes: Sequence[str], cost_shape: str) -> list[str]:
    """The costed shape first (it gets its time before anything else can use it up), then the rest."""
    from service.loadgen import SHAPES

    shapes = list(dict.fromkeys(shapes))
    unknown = [k for k in shapes if k not in SHAPES]
    if unknown:
        raise ValueError(f"unknown request shapes {unknown}; known: {', '.join(SHAPES)}")
    if cost_shape not in shapes:
        raise ValueError(f"the costed shape {cost_shape!r} must be among the shapes searched ({', '.join(shapes)})")
    return [cost_shape] + [k for k in shapes if k != cost_shape]


def search_variants(base_url: str, *, shapes: Sequence[str] = DEMO_SHAPES, cost_shape: str = "mix",
                    variants: Sequence[str] = SEARCH_ORDER, deadline: float, out_dir: Path, criteria=None,
                    base_plan=None, starts: dict[str, float] = START_RPS, say: Callable[[str], None] = print):
    """X_slo of each variant (pinned with ``X-Variant``) at each request shape of the twinserve at
    ``base_url``, by the open-loop capacity search, all done by ``deadline`` (``time.monotonic()``).

    The costed shape of every variant first, then the next shape of every variant, and so on; each
    search's budget is its share (:func:`share_budget`) of the time left when it starts. Writes
    ``capacity-<variant>.json`` (a :class:`CapacityRun`, after every search) and ``capacity.png`` into
    ``out_dir``; returns the runs and their files by variant. ``base_plan``: the search settings
    (default: :func:`demo_plan`'s); its ``start_rps`` (from ``starts``, see :func:`start_rps_for`) and
    ``max_total_s`` are set per search, and its ramp factor is at most :data:`INFORMED_GROWTH` when the
    start comes from the variant's X_slo at another shape."""
    from service.capacity_search import CapacityRun, SloCriteria, capacity_run, find_capacity, plot_searches
    from service.loadgen import SHAPES

    shapes = _order_shapes(shapes, cost_shape)
    criteria = criteria or SloCriteria()
    base_plan = base_plan or demo_plan(1.0, 1.0)
    say(f"      criteria: p99 <= {criteria.slo_p99_ms:g} ms from the scheduled send, errors < "
        f"{criteria.max_error_ratio:.1%}, answered >= {criteria.min_achieved_ratio:.0%} of offered, confirmed by a "
        "repeat")
    url = f"{base_url.rstrip('/')}/v1/embeddings"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, CapacityRun] = {}
    files: dict[str, Path] = {}
    todo = [(v, k) for k in shapes for v in variants]
    for i, (variant, shape) in enumerate(todo):
        mine = share_budget(deadline - time.monotonic(), [search_weight(v, k, cost_shape) for v, k in todo[i:]])
        # X_slo, or where none was confirmed, the best single pass: a better start than a guess
        known = {k: r.x_slo_rps or r.best_single_pass_rps
                 for k, r in runs[variant].searches.items()} if variant in runs else {}
        informed = any(known.values())
        plan = base_plan.model_copy(update={"start_rps": start_rps_for(variant, shape, known, starts),
                                            "max_total_s": max(mine, 1.0)}
                                    | ({"growth": min(base_plan.growth, INFORMED_GROWTH)} if informed else {}))
        say(f"      {variant} at {SHAPES[shape].description}: ramp from {plan.start_rps:g} req/s, "
            f"{plan.max_total_s:.0f} s")
        headers = {"X-Variant": variant}
        result = find_capacity(url, shape=SHAPES[shape], plan=plan, criteria=criteria, headers=headers,
                               model=f"twinserve-{variant}", on_probe=lambda p: say(
                                   f"        {p.phase:7} {p.offered_rps:7.1f} req/s offered {p.answered_rps:7.1f} "
                                   "answered p99 " + (f"{p.latency.p99_ms:7.1f} ms" if p.latency else "    n/a")
                                   + f" errors {p.error_ratio:6.2%}  "
                                   + ("pass" if p.passed else "; ".join(p.reasons))))
        x = f"{result.x_slo_rps:.4g} req/s" if result.x_slo_rps is not None else "none confirmed"
        say(f"        X_slo {x} ({result.status}, {len(result.probes)} probes, {result.elapsed_s:.0f} s)"
            + "".join(f"\n        note: {n}" for n in result.notes))
        prior = runs.get(variant)
        runs[variant] = capacity_run(url, {**(prior.searches if prior else {}), shape: result}, headers=headers,
                                     variant=variant)
        files[variant] = out_dir / f"capacity-{variant}.json"
        files[variant].write_text(runs[variant].model_dump_json(indent=2) + "\n")
    plot_searches({SHAPES[k].description: {v: runs[v].searches[k] for v in runs} for k in shapes},
                  out_dir / "capacity.png", title="open-loop capacity search per variant and request shape")
    return runs, files


def run_demo(
    *,
    out_dir: Path = Path("results") / "demo",
    artifacts: Path | None = None,
    preset_name: str | None = None,
    budget_s: float = DEMO_BUDGET_S,
    shapes: Sequence[str] = DEMO_SHAPES,
    cost_shape: str = "mix",
    prices: Path = Path("deploy") / "prices.yaml",
    say: Callable[[str], None] = print,
) -> Path:
    """Run the demo; returns the report directory. The server and Prometheus never outlive it."""
    from service.cost.prometheus import PrometheusError, PrometheusServer
    from service.cost.report import ReportConfig, build_report, write_report

    t0 = time.monotonic()
    shapes = _order_shapes(shapes, cost_shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    art = ensure_artifacts(artifacts, preset_name, lambda m: say(f"[1/5] {m}"))

    port, metrics_port, token = free_port(), free_port(), secrets.token_urlsafe(16)
    say(f"[2/5] serving: twinserve serve --port {port} --metrics-port {metrics_port} (log {out_dir / 'serve.log'})")
    server = LocalServer(art, port, metrics_port, out_dir / "serve.log", token)
    prom = None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` of the demo cleans up like Ctrl-C
    try:
        server.wait_ready(SERVER_START_TIMEOUT_S)
        say(f"      ready at {server.url} ({time.monotonic() - t0:.0f} s into the demo)")

        deadline = t0 + budget_s - RESERVE_S
        left_s = max(deadline - time.monotonic(), 0.0)
        say(f"[3/5] capacity: open-loop search per variant and request shape, {left_s:.0f} s in all")
        runs, files = search_variants(server.url, shapes=shapes, cost_shape=cost_shape, deadline=deadline,
                                      out_dir=out_dir, say=say)
        plot = out_dir / "capacity.png"

        # Prometheus only now: it stands in for a monitoring server that runs elsewhere, and on a
        # 2-core machine its scrapes and TSDB would take CPU from the server being measured.
        try:
            # A fresh TSDB per run: series of an earlier run would be summed with this one's.
            shutil.rmtree(out_dir / "prometheus", ignore_errors=True)
            prom = PrometheusServer.start([f"127.0.0.1:{metrics_port}"], out_dir / "prometheus",
                                          scrape_interval_s=METRICS_REPORT_INTERVAL_MS / 1000)
            say(f"      Prometheus at {prom.url} (deploy/prometheus.yml, scraping 127.0.0.1:{metrics_port})")
        except PrometheusError as e:
            say(f"      no Prometheus ({e}); the report will go without live shadow agreement")
        prometheus_url = None
        if prom is not None:
            say(f"[4/5] shadow: {SHADOW_REQUESTS} routed requests, each also sent to the other variant")
            if _shadow_burst(server.url, token, SHADOW_REQUESTS, prom):
                prometheus_url = prom.url
                say("      shadow samples in Prometheus: " + ", ".join(
                    f"{k} {v:g}" for k, v in sorted(_shadow_counts(prom).items())))
            else:
                say("      Prometheus did not see the shadow samples in time; the report goes without them")
        else:
            say("[4/5] shadow: skipped (no Prometheus)")

        say("[5/5] report")
        config = ReportConfig(dense_share=0.5, dense_share_source="the demo server's --dense-weight 0.5",
                              shadow_window="30m", cost_shape=cost_shape)
        report, data = build_report(capacity=[files[v] for v in SEARCH_ORDER], prices=prices, manifest=art,
                                    prometheus_url=prometheus_url, config=config)
        report_dir = out_dir / "report"
        written = write_report(report, data, report_dir)
        for v in SEARCH_ORDER:
            say(f"      {v}: " + ", ".join(
                f"{k} X_slo " + (f"{r.x_slo_rps:.4g}" if r.x_slo_rps is not None else "none") + f" ({r.status})"
                for k, r in runs[v].searches.items()))
        say(f"twinserve demo: report at {written['html']} (also {written['markdown'].name}, report.json, PNGs); "
            f"capacity searches in {files['dense']}, {files['pruned']} and {plot}; "
            f"{time.monotonic() - t0:.0f} s so far")
        return report_dir
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            say("twinserve demo: stopping the server" + (" and Prometheus" if prom else ""))
            if prom is not None:
                prom.stop()
            server.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
