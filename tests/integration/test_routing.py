"""Routing on a real Ray Serve instance: weights, stickiness, overrides, run-time changes, shedding."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from service.serving.config import Weights
from service.serving.policy import choose

from .conftest import INITIAL_WEIGHTS


def _post_many(url: str, n: int, *, threads: int = 8, headers=None, body=None) -> list[httpx.Response]:
    def worker(count: int) -> list[httpx.Response]:
        with httpx.Client(base_url=url, timeout=60) as c:
            return [c.post("/v1/embeddings", json=body or {"input": "route me"}, headers=headers)
                    for _ in range(count)]

    per = [n // threads + (i < n % threads) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return [r for batch in pool.map(worker, per) for r in batch]


def test_1000_routed_requests_split_by_the_weights(serve_app):
    n = 1000
    responses = _post_many(serve_app.url, n)
    assert Counter(r.status_code for r in responses) == {200: n}
    assert {r.headers["x-route-reason"] for r in responses} == {"weight"}
    share = sum(r.headers["x-variant"] == "dense" for r in responses) / n
    p = INITIAL_WEIGHTS["dense"]
    assert abs(share - p) <= 5 * (p * (1 - p) / n) ** 0.5  # five binomial standard deviations


def test_sticky_users_keep_their_variant_and_match_the_policy(serve_app):
    weights = Weights(**INITIAL_WEIGHTS)
    seen = Counter()
    for i in range(40):
        user = f"user-{i}"
        expected = choose(weights=weights, draw=0.0, user_key=user).variant
        by_header = [serve_app.http.post("/v1/embeddings", json={"input": "hi"}, headers={"X-User-Id": user})
                     for _ in range(3)]
        by_field = serve_app.http.post("/v1/embeddings", json={"input": "hi", "user": user})
        for r in [*by_header, by_field]:
            assert r.status_code == 200
            assert (r.headers["x-variant"], r.headers["x-route-reason"]) == (expected, "sticky")
        seen[expected] += 1
    assert set(seen) == {"dense", "pruned"}  # 40 users do land on both sides of a 0.3 boundary


@pytest.mark.parametrize("variant", ["dense", "pruned"])
def test_forced_variant_by_header_and_by_model_name(serve_app, variant):
    for r in _post_many(serve_app.url, 20, threads=4, headers={"X-Variant": variant, "X-User-Id": "someone"}):
        assert r.status_code == 200
        assert (r.headers["x-variant"], r.headers["x-route-reason"]) == (variant, "override")
    for r in _post_many(serve_app.url, 20, threads=4, body={"input": "x", "model": f"twinserve-{variant}"}):
        assert (r.status_code, r.headers["x-variant"], r.headers["x-route-reason"]) == (200, variant, "override")


def _ingress_replicas() -> set[str]:
    """Names of the live ingress replica actors (Serve names them ``SERVE_REPLICA::<app>#Router#<id>``)."""
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::twinserve#Router#")}


def test_weight_change_through_user_config_with_zero_failed_requests(serve_app):
    before = _ingress_replicas()
    assert len(before) == 2
    statuses, variants, stop = Counter(), [], threading.Event()
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=serve_app.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/embeddings", json={"input": "steady traffic"})
                with lock:
                    statuses[r.status_code] += 1
                    variants.append(r.headers.get("x-variant"))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)  # traffic flowing before the change
        serve_app.deploy({"weights": {"dense": 1.0, "pruned": 0.0}, "shadow_fraction": 0.0})
        deadline = time.monotonic() + 60
        while True:  # the change has taken effect once 100 answers in a row came from dense
            with lock:
                tail = variants[-100:]
            if len(tail) == 100 and set(tail) == {"dense"}:
                break
            assert time.monotonic() < deadline, "weights never took effect"
            time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join()
    after = serve_app.routing()
    assert after["routing"]["weights"] == {"dense": 1.0, "pruned": 0.0}
    assert _ingress_replicas() == before, "an ingress replica restarted; user_config must reconfigure in place"
    assert set(statuses) == {200}, f"failed requests during the change: {dict(statuses)}"
    assert "pruned" in variants  # traffic before the change did split
    serve_app.deploy({"weights": dict(INITIAL_WEIGHTS), "shadow_fraction": 0.0})
    assert serve_app.routing()["routing"]["weights"] == INITIAL_WEIGHTS


def test_admin_endpoint_changes_weights_and_shadow_at_run_time(serve_app):
    try:
        r = serve_app.http.put("/admin/routing", json={"weights": {"pruned": 1.0}, "shadow_fraction": 1.0},
                               headers=serve_app.admin)
        assert r.status_code == 200, r.text
        assert r.json()["routing"] == {"weights": {"dense": 0.0, "pruned": 1.0}, "shadow_fraction": 1.0}
        # Every ingress replica (two) takes the change: the one that answered the PUT at once, the
        # other within its health period (0.5 s).
        time.sleep(1.0)
        for r in _post_many(serve_app.url, 40, threads=4):
            assert (r.status_code, r.headers["x-variant"], r.headers["x-route-reason"]) == (200, "pruned", "weight")
        deadline = time.monotonic() + 30
        # Shadow counts are per replica; each of the two took about half of the 40.
        while (shadow := serve_app.routing()["shadow"])["completed"] < 5:  # shadows finish in the background
            assert time.monotonic() < deadline, shadow
            time.sleep(0.1)
        # Every shadowed text was "route me": the cosine between the artifacts' own dense and CPU graphs
        # for it is what both the mean and the minimum must be (dense.onnx stands in for torch, ~1e-6).
        from service.model.backends import OnnxBackend, cpu_variant_backend

        dense, cpu = OnnxBackend(serve_app.artifact_dir, variant="dense", threads=1), \
            cpu_variant_backend(serve_app.artifact_dir, threads=1)
        dense.load()
        cpu.load()
        expected = float(np.sum(dense.embed(["route me"]) * cpu.embed(["route me"])))
        assert shadow["failed"] == 0
        assert shadow["min_cosine"] == pytest.approx(expected, abs=1e-3)
        assert shadow["mean_cosine"] == pytest.approx(expected, abs=1e-3)
    finally:
        serve_app.http.put("/admin/routing", json={"weights": INITIAL_WEIGHTS, "shadow_fraction": 0.0},
                           headers=serve_app.admin)


def test_shed_load_falls_back_to_the_other_variant(tight_app):
    responses = _post_many(tight_app, 16, threads=16, body={"input": "burst"})
    assert {r.status_code for r in responses} == {200}
    routes = Counter((r.headers["x-variant"], r.headers["x-route-reason"]) for r in responses)
    assert routes[("dense", "fallback")] >= 1, routes
    assert set(routes) <= {("pruned", "weight"), ("dense", "fallback")}


def test_pinned_requests_are_shed_with_429_and_retry_after_never_fall_back(tight_app):
    responses = _post_many(tight_app, 16, threads=16, body={"input": "burst", "model": "twinserve-pruned"})
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 429} and codes[429] >= 1 and codes[200] >= 1, codes
    for r in responses:
        assert r.headers["x-variant"] == "pruned" and r.headers["x-route-reason"] == "override"
        if r.status_code == 429:
            assert r.headers["retry-after"] == "2"
            assert "shedding load" in r.json()["error"]["message"]


def test_altered_artifacts_refuse_to_start_with_a_clear_error(serve_app, tmp_path):
    from ray import serve

    from service.artifacts.manifest import load_manifest
    from service.serving.config import ServingConfig
    from service.serving.deployments import Dense
    from service.serving.router import Router

    broken = tmp_path / "broken"
    shutil.copytree(serve_app.artifact_dir.resolve(), broken)
    # The file the ingress loads: the manifest's CPU variant (an OpenVINO weights file or pruned.onnx).
    cv = load_manifest(broken).cpu_variant
    served = "pruned.onnx" if cv is None else next(f for f in cv.files if not f.endswith(".xml")) \
        if cv.runtime == "openvino" else cv.file
    with open(broken / served, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    cfg = ServingConfig(artifact_dir=broken, dense={"num_cpus": 0.25})
    # The ingress loads the CPU variant in its constructor: that is where it must refuse.
    app = Router.options(num_replicas=1, max_constructor_retry_count=1, ray_actor_options={"num_cpus": 0.25}).bind(
        dense=Dense.options(ray_actor_options={"num_cpus": 0.25}).bind(str(broken), cfg.dense), config=cfg)
    try:
        with pytest.raises(RuntimeError, match="Deploying application broken failed"):
            serve.run(app, name="broken", route_prefix="/broken")
        message = serve.status().applications["broken"].deployments["Router"].message  # what `serve status` shows
        assert "ArtifactIntegrityError" in message
        assert f"{served} has sha256" in message and "Rebuild with `twinserve prune --force`" in message
    finally:
        serve.delete("broken")


def test_truncate_mode_embeds_the_first_tokens_and_counts_them(tight_app, serve_app):
    from service.model.backends import OnnxBackend

    text = " ".join(f"word{i}" for i in range(100))
    r = httpx.post(f"{tight_app}/v1/embeddings", json={"input": [text, "short"], "model": "twinserve-dense",
                                                       "encoding_format": "float"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == 16 + 3
    ref = OnnxBackend(serve_app.artifact_dir, variant="dense", threads=1)
    ref.load()
    ref.tokenizer.max_tokens = 16
    expected = ref.embed([text, "short"])
    got = np.array([d["embedding"] for d in body["data"]])
    assert np.sum(got * expected, axis=1).min() > 0.999


def test_an_admin_change_reaches_every_ingress_replica_and_survives_a_restart(serve_app):
    """Two ingress replicas share one routing state: a change taken by one is in force on both within a
    second, and a replica that is killed comes back with it, not with the deploy's user_config."""
    from service import reliability as rel

    try:
        r = serve_app.http.put("/admin/routing", json={"weights": {"dense": 0.0}}, headers=serve_app.admin)
        assert r.status_code == 200 and r.json()["set_by"].startswith("admin endpoint"), r.text
        time.sleep(1.0)
        before = _ingress_replicas()
        assert len(before) == 2
        assert {res.headers["x-variant"] for res in _post_many(serve_app.url, 40, threads=4)} == {"pruned"}
        rel.kill_replicas("Router", "twinserve", count=1)
        from ray import serve

        def running() -> int:
            return serve.status().applications["twinserve"].deployments["Router"].replica_states.get("RUNNING", 0)

        deadline = time.monotonic() + 240  # a loaded 2-core machine can take minutes to start a replica
        while len(now := _ingress_replicas()) < 2 or now == before or running() < 2:  # Serve starts a replacement
            assert time.monotonic() < deadline, (before, now, running())
            time.sleep(0.5)
        time.sleep(1.0)
        responses = _post_many(serve_app.url, 60, threads=6)
        assert Counter((res.status_code, res.headers["x-variant"]) for res in responses) == {(200, "pruned"): 60}
    finally:
        serve_app.http.put("/admin/routing", json={"weights": INITIAL_WEIGHTS, "shadow_fraction": 0.0},
                           headers=serve_app.admin)
