"""Security on the real Ray Serve instance: the admin token and request bodies never reach the logs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

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
