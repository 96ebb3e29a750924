"""The HTTP API on a real Ray Serve instance: official clients, equality with ONNX, bad inputs."""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest
import tritonclient.http as triton

from service.model.backends import OnnxBackend
from service.model.tokenizer import TextTokenizer

TEXTS = ["The cat sat on the mat.", "Serving two variants of one encoder behind a single endpoint.", "ok"]


@pytest.fixture(scope="module")
def reference(serve_app):
    """Embeddings computed in this process with ONNX Runtime straight from the artifacts."""
    out = {}
    for variant in ("pruned", "dense"):
        b = OnnxBackend(serve_app.artifact_dir, variant=variant, threads=1)
        b.load()
        out[variant] = b.embed(TEXTS)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("variant", ["pruned", "dense"])
@pytest.mark.parametrize("encoding_format", [None, "base64", "float"])
def test_openai_client_gets_the_artifacts_onnx_embeddings(serve_app, reference, variant, encoding_format):
    """None: the client asks for base64 itself and decodes it; explicit base64 comes back as strings."""
    client = openai.OpenAI(base_url=f"{serve_app.url}/v1", api_key="not-checked", max_retries=0)
    kw = {"encoding_format": encoding_format} if encoding_format else {}
    raw = client.embeddings.with_raw_response.create(model=f"twinserve-{variant}", input=TEXTS, **kw)
    resp = raw.parse()
    assert raw.headers["x-variant"] == variant and raw.headers["x-route-reason"] == "override"
    rows = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
    if encoding_format == "base64":
        rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]
    got = np.array(rows)
    assert got.shape == reference[variant].shape
    assert _cosines(got, reference[variant]).min() > 0.999
    assert resp.model == f"twinserve-{variant}"
    n_tokens = sum(TextTokenizer(serve_app.artifact_dir / "tokenizer.json").count(TEXTS))
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == n_tokens


def test_openai_client_single_string_on_the_routed_model(serve_app, reference):
    client = openai.OpenAI(base_url=f"{serve_app.url}/v1", api_key="x", max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="twinserve", input=TEXTS[0], user="alice")
    resp = raw.parse()
    variant = raw.headers["x-variant"]
    assert raw.headers["x-route-reason"] == "sticky" and len(resp.data) == 1
    assert _cosines([resp.data[0].embedding], reference[variant][:1])[0] > 0.999


@pytest.mark.parametrize("binary", [True, False])
def test_v2_client_gets_the_artifacts_onnx_embeddings(serve_app, reference, binary):
    client = triton.InferenceServerClient(url=serve_app.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("twinserve-pruned") and client.is_model_ready("twinserve")
    meta = client.get_model_metadata("twinserve-pruned")
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["outputs"][0]["datatype"] == "FP32"
    assert meta["outputs"][0]["shape"] == [-1, reference["pruned"].shape[1]]
    assert client.get_server_metadata()["name"] == "twinserve"

    inp = triton.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary_data=binary)
    out = triton.InferRequestedOutput("embedding", binary_data=binary)
    result = client.infer("twinserve-pruned", [inp], outputs=[out], request_id="req-1")
    got = result.as_numpy("embedding")
    assert got.dtype == np.float32 and got.shape == reference["pruned"].shape
    assert _cosines(got, reference["pruned"]).min() > 0.999
    assert result.get_response()["id"] == "req-1"


def test_v2_client_defaults_routed_model(serve_app, reference):
    client = triton.InferenceServerClient(url=serve_app.url.removeprefix("http://"))
    inp = triton.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([TEXTS[1].encode()], dtype=object))  # binary, the client's default
    got = client.infer("twinserve", [inp], headers={"X-Variant": "dense"}).as_numpy("embedding")
    assert _cosines(got, reference["dense"][1:2])[0] > 0.999


def test_v2_unknown_model_is_404(serve_app):
    r = serve_app.http.get("/v2/models/bert-large")
    assert r.status_code == 404 and "unknown model" in r.json()["error"]


LONG = "word " * 1000  # 1,000+ tokens in 5,000 characters: under the character cap, over the token limit


@pytest.mark.parametrize(("name", "kwargs", "status", "words"), [
    ("empty string", dict(json={"input": ""}), 400, "input 0 is empty"),
    ("blank in list", dict(json={"input": ["ok", "   "]}), 400, "input 1 is empty"),
    ("empty list", dict(json={"input": []}), 400, "input is empty"),
    ("number", dict(json={"input": 42}), 400, "input must be a string or a list of strings"),
    ("token ids", dict(json={"input": [101, 2023]}), 400, "input must be a string or a list of strings"),
    ("mixed list", dict(json={"input": ["a", None]}), 400, "input must be a string or a list of strings"),
    ("object", dict(json={"input": {"text": "a"}}), 400, "input must be a string or a list of strings"),
    ("missing input", dict(json={"model": "twinserve"}), 400, "input: Field required"),
    ("bad format", dict(json={"input": "a", "encoding_format": "hex"}), 400, "encoding_format"),
    ("unknown field", dict(json={"input": "a", "temperature": 0}), 400, "temperature"),
    ("over-long text", dict(json={"input": LONG}), 400, "tokens, over the limit of"),
    ("text over the character cap", dict(json={"input": ["fine", "x" * 9000]}), 400,
     "input 1 has 9000 characters, over the limit of 8192"),
    ("too many inputs", dict(json={"input": ["a"] * 33}), 400, "33 texts, over the limit of 32"),
    ("malformed JSON", dict(content=b'{"input": "a",', headers={"content-type": "application/json"}), 400,
     "not valid JSON"),
    ("not JSON at all", dict(content=b"hello", headers={"content-type": "text/plain"}), 400, "not valid JSON"),
    ("oversized body", dict(json={"input": ["x" * 60_000] * 20}), 413, "over the limit of 1048576"),
    ("unknown model", dict(json={"input": "a", "model": "gpt-4"}), 404, "unknown model 'gpt-4'"),
    ("bad X-Variant", dict(json={"input": "a"}, headers={"X-Variant": "gpu"}), 400, "X-Variant must be one of"),
    ("pin conflict", dict(json={"input": "a", "model": "twinserve-dense"}, headers={"X-Variant": "pruned"}),
     400, "contradicts"),
    ("wrong dimensions", dict(json={"input": "a", "dimensions": 7}), 400, "dimensions=7 is not supported"),
])
def test_bad_openai_inputs_answer_4xx_with_a_json_message(serve_app, name, kwargs, status, words):
    r = serve_app.http.post("/v1/embeddings", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"
    assert "x-route-reason" in r.headers


def _v2_body(**tensor):
    t = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"], **tensor}
    return {"inputs": [t]}


@pytest.mark.parametrize(("name", "kwargs", "status", "words"), [
    ("FP32 input", dict(json=_v2_body(datatype="FP32", data=[1.0])), 400, "must have datatype BYTES"),
    ("numbers as texts", dict(json=_v2_body(data=[3])), 400, "must be a string"),
    ("shape mismatch", dict(json=_v2_body(shape=[2])), 400, "carries 1 elements"),
    ("no inputs", dict(json={"inputs": []}), 400, "inputs"),
    ("empty text", dict(json=_v2_body(data=[""])), 400, "input 0 is empty"),
    ("unknown output", dict(json={**_v2_body(), "outputs": [{"name": "logits"}]}), 400, "unknown output"),
    ("malformed JSON", dict(content=b"{", headers={"content-type": "application/json"}), 400, "not valid JSON"),
    ("bad binary header", dict(content=b"{}", headers={"Inference-Header-Content-Length": "99"}), 400,
     "does not fit"),
])
def test_bad_v2_inputs_answer_4xx_with_a_json_message(serve_app, name, kwargs, status, words):
    r = serve_app.http.post("/v2/models/twinserve/infer", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_truncation_is_off_by_default_and_usage_counts_tokens(serve_app):
    r = serve_app.http.post("/v1/embeddings", json={"input": ["one two three", "four"], "encoding_format": "float"})
    assert r.status_code == 200
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 5 + 3  # [CLS] ... [SEP] around each text
    assert json.loads(r.content)["object"] == "list"


def test_admin_endpoint_needs_the_bearer_token(serve_app):
    assert serve_app.http.get("/admin/routing").status_code == 401
    r = serve_app.http.put("/admin/routing", json={"shadow_fraction": 0.5},
                           headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = serve_app.http.put("/admin/routing", json={"weights": {"dense": 0.4, "pruned": 0.4}}, headers=serve_app.admin)
    assert r.status_code == 400 and "weights must sum to 1.0" in r.json()["error"]
    assert serve_app.routing()["routing"]["weights"] == {"dense": 0.3, "pruned": 0.7}


def test_v1_models_lists_the_three_names_the_way_openai_clients_read_them(serve_app):
    from openai import OpenAI

    client = OpenAI(base_url=f"{serve_app.url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["twinserve", "twinserve-dense", "twinserve-pruned"]
    assert client.models.retrieve("twinserve-pruned").owned_by == "twinserve"
    r = serve_app.http.get("/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("method, path, status, shape", [
    ("GET", "/v1/nothing", 404, "openai"), ("GET", "/v1/embeddings", 405, "openai"),
    ("DELETE", "/v1/models", 405, "openai"), ("GET", "/v2/nothing/here", 404, "v2"), ("GET", "/", 404, "openai"),
])
def test_unknown_paths_and_methods_answer_the_api_json_not_fastapi_detail(serve_app, method, path, status, shape):
    r = serve_app.http.request(method, path)
    assert r.status_code == status
    body = r.json()
    assert "detail" not in body
    message = body["error"]["message"] if shape == "openai" else body["error"]
    assert path in message


def test_every_replica_leases_the_version_it_serves(serve_app):
    """The server resolved artifacts/<model> once; each replica that loaded that version holds a lease on
    it, so a publish and gc while the application runs cannot remove the files a restarted replica needs."""
    import os

    from service.artifacts import list_versions

    version = serve_app.artifact_dir.resolve()
    (served,) = [v for v in list_versions(serve_app.artifact_dir) if v.path == version]
    mine = f"pid {os.getpid()}"
    replicas = {lease.holder for lease in served.leases if lease.fresh and not lease.holder.endswith(mine)}
    assert len(replicas) >= 3, served.leases  # two ingress replicas (the CPU variant) and the dense one
    assert served.held
