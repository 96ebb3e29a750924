"""Small network helpers shared by the demo and the tests."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

__all__ = ["free_port", "metric_sum", "wait_ready"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float, *, poll_s: float = 0.5, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``GET {url}/v2/health/ready`` until it answers 200.

    Raises ``TimeoutError`` after ``timeout_s``, and ``RuntimeError`` as soon as ``alive()``
    turns false (the server process died, so waiting longer is pointless).
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=10) as http:
        while True:
            if alive is not None and not alive():
                raise RuntimeError(f"the server behind {url} exited before it was ready")
            try:
                if http.get("/v2/health/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s:g} s")
            time.sleep(poll_s)


def metric_sum(url: str, sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``, scraped from the
    Prometheus text endpoint at ``url`` now (0 when there are none)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(url, timeout=10).text)
    return sum(s.value for f in families for s in f.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))
