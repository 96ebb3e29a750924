"""``twinserve demo``: prune (cached) → serve in the background → Prometheus → sweep both variants → report.

Everything a person would run by hand, in order, with the same commands' code paths:
``twinserve prune`` (``fast`` preset unless one is named; reused when already built),
``twinserve serve`` as a child process (its own session, its own Ray), Debian's Prometheus with
``deploy/prometheus.yml`` retargeted at the child's Ray metrics port, ``twinserve loadtest --sweep``
(short steps sized for a 2-core machine), a short routed burst with every answer shadowed (so the
report has live shadow agreement from Prometheus), and ``twinserve report``. The server and
Prometheus are stopped at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from service._net import free_port, wait_ready

__all__ = ["DEMO_RATES_RPS", "DemoError", "LocalServer", "ensure_artifacts", "run_demo"]

DEMO_RATES_RPS = (2.0, 4.0, 8.0, 16.0)
SHADOW_REQUESTS = 40
SERVER_START_TIMEOUT_S = 900  # a loaded 2-core machine loads torch + ONNX Runtime replicas slowly
METRICS_REPORT_INTERVAL_MS = 2000  # Ray's default is 10 s; the demo is short


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and where its log is."""


def ensure_artifacts(art: Path | None, preset_name: str | None, say: Callable[[str], None]) -> Path:
    from service.pruning.config import preset
    from service.pruning.job import run_prune
    from service.pruning.manifest import MANIFEST_FILE, verify_artifacts
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


class LocalServer:
    """``twinserve serve`` in its own session; stopped with SIGINT (its clean shutdown), then harder."""

    def __init__(self, art: Path, port: int, metrics_port: int, log_path: Path, token: str,
                 extra_args: Sequence[str] = ()):
        env = {**os.environ, "TWINSERVE_ADMIN_TOKEN": token,
               "RAY_metrics_report_interval_ms": str(METRICS_REPORT_INTERVAL_MS)}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--artifacts", str(art), "--port", str(port),
             "--metrics-port", str(metrics_port), "--dense-weight", "0.5", "--shadow-fraction", "0", *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> None:
        try:
            wait_ready(self.url, timeout_s, poll_s=1.0, alive=lambda: self.proc.poll() is None)
        except RuntimeError:
            raise DemoError(f"twinserve serve exited with {self.proc.returncode}; see {self.log_path}") from None
        except TimeoutError:
            raise DemoError(f"twinserve serve not ready after {timeout_s:g} s; see {self.log_path}") from None

    def stop(self) -> None:
        try:
            for sig, wait_s in ((signal.SIGINT, 90), (signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                if self.proc.poll() is not None:
                    break
                try:
                    if sig == signal.SIGKILL:
                        os.killpg(self.proc.pid, sig)
                    else:
                        self.proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            self._log.close()


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


def run_demo(
    *,
    out_dir: Path = Path("results") / "demo",
    artifacts: Path | None = None,
    preset_name: str | None = None,
    rates_rps: Sequence[float] = DEMO_RATES_RPS,
    step_duration_s: float = 12.0,
    warmup_s: float = 3.0,
    prices: Path = Path("deploy") / "prices.yaml",
    say: Callable[[str], None] = print,
) -> Path:
    """Run the demo; returns the report directory. The server and Prometheus never outlive it."""
    from service.cost.loadtest import SweepPlan, run_sweep
    from service.cost.prometheus import PrometheusError, PrometheusServer
    from service.cost.report import ReportConfig, build_report, write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    art = ensure_artifacts(artifacts, preset_name, lambda m: say(f"[1/5] {m}"))
    # Constant arrivals: on steps this short, Poisson noise alone can push a step under 95% of offered.
    plan = SweepPlan(rates_rps=list(rates_rps), step_duration_s=step_duration_s, warmup_s=warmup_s,
                     arrival="constant", stop_after_saturated_steps=2)

    port, metrics_port, token = free_port(), free_port(), secrets.token_urlsafe(16)
    say(f"[2/5] serving: twinserve serve --port {port} --metrics-port {metrics_port} (log {out_dir / 'serve.log'})")
    server = LocalServer(art, port, metrics_port, out_dir / "serve.log", token)
    prom = None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` of the demo cleans up like Ctrl-C
    try:
        server.wait_ready(SERVER_START_TIMEOUT_S)
        say(f"      ready at {server.url}")
        try:
            # A fresh TSDB per run: series of an earlier run would be summed with this one's.
            shutil.rmtree(out_dir / "prometheus", ignore_errors=True)
            prom = PrometheusServer.start([f"127.0.0.1:{metrics_port}"], out_dir / "prometheus",
                                          scrape_interval_s=METRICS_REPORT_INTERVAL_MS / 1000)
            say(f"      Prometheus at {prom.url} (deploy/prometheus.yml, scraping 127.0.0.1:{metrics_port})")
        except PrometheusError as e:
            say(f"      no Prometheus ({e}); the report will go without live shadow agreement")

        total = len(rates_rps) * step_duration_s * 2
        say(f"[3/5] load: Locust step sweep per variant, {list(rates_rps)} req/s, {step_duration_s:g} s steps "
            f"(at most ~{total:.0f} s of load)")

        def on_step(variant, s):
            p99 = f"{s.latency.p99_ms:.1f} ms" if s.latency else "-"
            say(f"      {variant:6} {s.offered_rps:5g} req/s offered, {s.achieved_rps:5.1f} achieved, p99 {p99}, "
                f"errors {s.error_ratio:.1%}" + ("" if s.passed else f"  ({'; '.join(s.reasons)})"))

        loadtest = out_dir / "loadtest.json"
        result = run_sweep(server.url, variants=["dense", "pruned"], plan=plan, out=loadtest, on_step=on_step)

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
                              shadow_window="30m")
        report, data = build_report(loadtests=[loadtest], prices=prices, manifest=art,
                                    prometheus_url=prometheus_url, config=config)
        report_dir = out_dir / "report"
        files = write_report(report, data, report_dir)
        for v in result.variants:
            x = f"{v.x_slo_rps:.1f} req/s" if v.x_slo_rps is not None else "no step met the SLO"
            say(f"      {v.variant}: X_slo {x}")
        say(f"twinserve demo: report at {files['html']} (also {files['markdown'].name}, report.json, PNGs); "
            f"load test at {loadtest}")
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
