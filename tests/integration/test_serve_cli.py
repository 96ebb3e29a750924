"""`twinserve serve`, the command `make run` starts, end to end in its own process and Ray instance.

The rest of the integration suite deploys the application into this process's Ray instance; this
test runs what a user runs: the edge (HAProxy) on the public port, Ray Serve's HAProxy ingress
behind it, tiny artifacts, then Ctrl-C (SIGINT) and a clean exit.
"""

from __future__ import annotations

import socket
import time

import httpx
import numpy as np

from service._platform import free_port
from service.demo import LocalServer
from service.model.backends import OnnxBackend
from service.serving.edge import EdgeConfig


def test_serve_answers_through_the_edge_and_stops_cleanly_on_ctrl_c(tiny_artifacts, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # its own Ray instance, not this session's
    port = free_port()
    server = LocalServer(tiny_artifacts, port, free_port(), tmp_path / "serve.log", token="t0ken")
    try:
        server.wait_ready(240)
        # The edge answers (503 "not up yet") before the application is deployed; the banner comes after.
        deadline = time.monotonic() + 60
        while "admission: at most" not in (log := (tmp_path / "serve.log").read_text()):
            assert time.monotonic() < deadline, log[-3000:]
            time.sleep(0.2)
        assert f"serving {tiny_artifacts}" in log and f"admission: at most {EdgeConfig().max_in_flight} requests inside" in log

        text = "A request through both HAProxies."
        r = httpx.post(f"{server.url}/v1/embeddings", json={"input": [text], "model": "twinserve-pruned"}, timeout=60)
        assert r.status_code == 200, r.text
        assert (r.headers["x-variant"], r.headers["x-route-reason"]) == ("pruned", "override")
        backend = OnnxBackend(tiny_artifacts, variant="pruned", threads=1)
        backend.load()
        got, want = np.array(r.json()["data"][0]["embedding"]), backend.embed([text])[0]
        assert float(got @ want) > 0.999

        bad = httpx.post(f"{server.url}/v1/embeddings", json={"input": []}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["message"]
    finally:
        server.stop()  # SIGINT (Ctrl-C) first; SIGTERM and SIGKILL only if that did not end it
    log = (tmp_path / "serve.log").read_text()
    assert server.proc.returncode == 0 and "twinserve serve: stopped" in log, log[-3000:]
    with socket.socket() as s:  # the edge is gone with it: the public port is free again
        s.bind(("127.0.0.1", port))
