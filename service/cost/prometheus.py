"""Prometheus: the one PromQL client (:class:`PromQL`), and a real server for tests and the demo
(:class:`PrometheusServer`: ``deploy/prometheus.yml`` retargeted, on a free port).

    with PrometheusServer.start(targets=["127.0.0.1:8080"], data_dir=tmp) as prom:
        prom.wait_for_target()
        prom.query('sum by (variant) (ray_twinserve_requests_total)')   # {"dense": 12.0, ...}

The configuration is ``deploy/prometheus.yml`` itself with its scrape targets (and, if asked, its
intervals) replaced, so the file people deploy is the file that is exercised. The binary is
Debian's ``prometheus`` (``make setup`` installs it); the server runs as a child process in its own
session and is always stopped by ``stop()`` / the context manager.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from service._platform import ChildProcess, free_port, poll_until

__all__ = ["DEFAULT_CONFIG", "Fetch", "PromQL", "PrometheusError", "PrometheusServer", "http_get", "prometheus_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml"
JOB = "ray"  # the scrape job in deploy/prometheus.yml whose targets are Ray's metrics export ports


class PrometheusError(RuntimeError):
    """Prometheus could not start, did not answer, or rejected a query."""


Fetch = Callable[[str], bytes]


def http_get(url: str) -> bytes:
    """The body at ``url``; an HTTP error's body too (Prometheus says in it why it rejected a query)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (a Prometheus URL we were given)
            return r.read()
    except urllib.error.HTTPError as e:  # 400/422: a bad query
        return e.read()


class PromQL:
    """Prometheus's HTTP API at ``url``: instant queries (``/api/v1/query``) and any other GET.

    ``fetch`` (URL -> body) is the transport; tests pass a fake one.
    """

    def __init__(self, url: str, fetch: Fetch = http_get):
        self.url = url.rstrip("/")
        self._fetch = fetch

    def get(self, path: str, params: dict | None = None) -> dict:
        url = f"{self.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            body = self._fetch(url)
        except (urllib.error.URLError, OSError) as e:
            raise PrometheusError(f"Prometheus at {self.url} did not answer {url}: {e}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise PrometheusError(f"Prometheus at {self.url} answered {url} with something other than JSON") from None

    def query_raw(self, promql: str, at: float | None = None) -> list[dict]:
        """The result vector of an instant query (at unix time ``at`` or now); raises on a rejected query."""
        doc = self.get("/api/v1/query", {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})})
        if doc.get("status") != "success":
            raise PrometheusError(f"Prometheus rejected `{promql}`: {doc.get('errorType')}: {doc.get('error')}")
        data = doc["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query(self, promql: str, by: str = "variant", at: float | None = None) -> dict[str, float]:
        """An instant query as ``{label value of `by`: value}`` (``""`` when the series lacks the label)."""
        return {item["metric"].get(by, ""): float(item["value"][1]) for item in self.query_raw(promql, at)}


def prometheus_config(targets: Sequence[str], *, template: Path = DEFAULT_CONFIG,
                      scrape_interval_s: float | None = None) -> dict:
    """``template`` with the ``ray`` job scraping ``targets`` (host:port), static, nothing else changed
    but the intervals when ``scrape_interval_s`` is given."""
    cfg = yaml.safe_load(Path(template).read_text())
    jobs = [j for j in cfg.get("scrape_configs", []) if j.get("job_name") == JOB]
    if len(jobs) != 1:
        raise PrometheusError(f"{template}: expected one scrape job named {JOB!r}")
    job = jobs[0]
    job.pop("file_sd_configs", None)
    job["static_configs"] = [{"targets": list(targets)}]
    if scrape_interval_s is not None:
        every = f"{max(1, round(scrape_interval_s * 1000))}ms"
        cfg.setdefault("global", {}).update(scrape_interval=every, evaluation_interval=every)
        job["scrape_interval"] = every
    return cfg




class PrometheusServer(PromQL):
    """One Prometheus process, queried as :class:`PromQL`; use :meth:`start` (a context manager) rather
    than the constructor."""

    def __init__(self, child: ChildProcess, url: str, data_dir: Path):
        super().__init__(url)
        self.child, self.data_dir, self.log_path = child, data_dir, child.log_path
        self.proc = child.proc

    @classmethod
    def start(cls, targets: Sequence[str], data_dir: Path, *, port: int | None = None,
              scrape_interval_s: float | None = None, template: Path = DEFAULT_CONFIG,
              binary: str | None = None, ready_timeout_s: float = 60.0) -> PrometheusServer:
        exe = binary or shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists()
                                                       else None)
        if exe is None:
            raise PrometheusError("the `prometheus` binary is not installed: `make setup` installs Debian's "
                                  "package (apt-get install prometheus)")
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        config_path = data_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(
            prometheus_config(targets, template=template, scrape_interval_s=scrape_interval_s), sort_keys=False))
        port = port or free_port()
        log_path = data_dir / "prometheus.log"
        cmd = [exe, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
               "--web.enable-lifecycle"]
        server = cls(ChildProcess(cmd, log_path), f"http://127.0.0.1:{port}", data_dir)
        try:
            server._wait_ready(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the group (Prometheus flushes its head block), SIGKILL after ``timeout_s``."""
        self.child.stop(((signal.SIGTERM, timeout_s, True), (signal.SIGKILL, 60, True)))

    def _log_tail(self) -> str:
        return self.child.log_tail()

    def _wait_ready(self, timeout_s: float) -> None:
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:  # noqa: S310
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        try:
            poll_until(ready, timeout_s, poll_s=0.2, alive=self.child.alive, what="prometheus")
        except RuntimeError:
            raise PrometheusError(f"prometheus exited with {self.proc.returncode}: {self._log_tail()}") from None
        except TimeoutError:
            raise PrometheusError(f"prometheus not ready after {timeout_s:g} s: {self._log_tail()}") from None

    def targets_up(self) -> list[str]:
        doc = self.get("/api/v1/targets")
        return [t["scrapeUrl"] for t in doc.get("data", {}).get("activeTargets", []) if t.get("health") == "up"]

    def wait_for_target(self, timeout_s: float = 60.0) -> None:
        """Until every configured target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout_s
        while not self.targets_up():
            if time.monotonic() > deadline:
                doc = self.get("/api/v1/targets")
                raise PrometheusError(f"no target up after {timeout_s:g} s: {doc.get('data')}")
            time.sleep(0.25)
