"""Security on the real Ray Serve instance: the admin token and request bodies never reach the logs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import ADMIN_TOKEN


def _ray_logs_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path())  # this session's logs, every process


def test_tokens_and_request_bodies_never_reach_the_logs(serve_app):
    secret_text = f"confidential-{uuid.uuid4().hex}"
    wrong_token = f"guess-{uuid.uuid4().hex}"
    http = serve_app.http
    assert http.post("/v1/embeddings", json={"input": [secret_text]}).status_code == 200
    assert http.post("/v1/embeddings", json={"input": secret_text, "bogus": 1}).status_code == 400  # rejected
    assert http.post("/v2/models/twinserve/infer", json={"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": [secret_text]}]}).status_code == 200
    assert http.get("/admin/routing", headers={"Authorization": f"Bearer {wrong_token}"}).status_code == 401
    assert http.put("/admin/routing", json={"shadow_fraction": 0.0}, headers=serve_app.admin).status_code == 200
    time.sleep(2)  # log handlers flush per record; give the processes a moment

    logs = [p for p in _ray_logs_dir().rglob("*") if p.is_file()]
    assert any(b"/v1/embeddings" in p.read_bytes() for p in logs), "no access log found: the scan would be vacuous"
    for needle in (secret_text, wrong_token, ADMIN_TOKEN):
        leaked = [p.name for p in logs if needle.encode() in p.read_bytes()]
        assert not leaked, f"{needle[:12]}... found in {leaked}"


API_KEY = f"sk-twinserve-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def keyed_app(serve_app, tmp_path_factory):
    """A third application whose ingress takes API keys (one key, 1 request/s, burst 3). The replica
    reads the key's sha256 from TWINSERVE_API_KEYS_FILE (its runtime_env), so the key itself is in no
    config, no GCS entry and no log line, only in the client's hands."""
    from service.serving.auth import key_digest
    from tests.integration.conftest import deploy_and_wait

    keys_file = tmp_path_factory.mktemp("keys") / "api-keys.sha256"
    keys_file.write_text(key_digest(API_KEY) + "\n")
    env = {"TWINSERVE_API_KEYS_FILE": str(keys_file), "TWINSERVE_API_KEY_RATE_RPS": "1",
           "TWINSERVE_API_KEY_BURST": "3"}
    app = {
        "name": "keyed", "route_prefix": "/keyed", "import_path": "service.serving.app:build_app",
        "args": {"artifact_dir": str(serve_app.artifact_dir), "dense": {"num_cpus": 0.25},
                 "router": {"num_replicas": 1, "num_cpus": 0.25}},
        "deployments": [{"name": "Router", "ray_actor_options": {"num_cpus": 0.25,
                                                                 "runtime_env": {"env_vars": env}}}],
    }
    serve_app.config["applications"].append(app)
    deploy_and_wait(serve_app.config)
    yield f"{serve_app.url}/keyed"
    serve_app.config["applications"].remove(app)
    deploy_and_wait(serve_app.config)


def test_api_keys_gate_inference_for_the_openai_client_and_never_reach_the_logs(keyed_app, serve_app):
    import httpx
    import openai

    good = openai.OpenAI(base_url=f"{keyed_app}/v1", api_key=API_KEY, max_retries=0)
    assert len(good.embeddings.create(input=["hello"], model="twinserve-pruned").data) == 1
    assert next(m.id for m in good.models.list()) == "twinserve"
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{keyed_app}/v1", api_key=wrong, max_retries=0).embeddings.create(
            input="hi", model="twinserve")
    assert e.value.status_code == 401 and e.value.response.headers["www-authenticate"] == "Bearer"
    assert e.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{keyed_app}/v2/models/twinserve/infer", json={"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}, timeout=30)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    assert httpx.get(f"{keyed_app}/v2/health/ready", timeout=30).status_code == 200  # probes stay open
    # Over the key's rate (1/s, burst 3): 429 with Retry-After; the first answers still 200.
    codes = [httpx.post(f"{keyed_app}/v1/embeddings", json={"input": "x"}, timeout=30,
                        headers={"Authorization": f"Bearer {API_KEY}"}) for _ in range(8)]
    assert codes[-1].status_code == 429 and int(codes[-1].headers["retry-after"]) >= 1
    assert codes[-1].json()["error"]["code"] == "rate_limit_exceeded"
    time.sleep(2)
    logs = [p for p in _ray_logs_dir().rglob("*") if p.is_file()]
    for needle in (API_KEY, wrong):
        assert not [p.name for p in logs if needle.encode() in p.read_bytes()], f"{needle[:12]}... in the logs"
