"""Hostile input against the real Ray Serve application: zero 5xx, every rejection a 4xx with a JSON message.

Two fuzzers: schemathesis, from the service's own OpenAPI document (bodies that fit the schemas
and bodies that break them, for every operation), and hypothesis, with bodies no schema describes
(any JSON value, unicode edge cases and control characters, long strings, raw bytes that are not
UTF-8, duplicated keys). Then the cases a generator does not reach: a 10 MB body with and without
Content-Length, a client that dribbles its body, one that hangs up halfway.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

# The CI-sized suite sends at least this many fuzzed requests in all (the issue asks for 2,000).
SCHEMATHESIS_MIN_CASES = 1000
HYPOTHESIS_MIN_CASES = 1000


def _fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _assert_well_behaved(r: httpx.Response, what: str) -> None:
    """No 5xx; a 4xx carries a JSON body with a message in it."""
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        body = r.json()  # raises on a non-JSON rejection
        message = body.get("error") or body.get("detail")
        if isinstance(message, dict):
            message = message.get("message")
        assert message, f"{what}: {r.status_code} without a message: {body}"


# ---- schemathesis, from /openapi.json --------------------------------------------------------------

def test_schemathesis_fuzz_of_every_operation_gives_no_5xx(serve_app):
    schema = schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/embeddings", "POST /v2/models/{name}/infer", "PUT /admin/routing", "GET /v2/models/{name}"}
    counts: Counter[str] = Counter()
    # With the token, so the admin bodies get past authorisation into validation; restored below.
    initial = serve_app.routing()["routing"]
    with httpx.Client(base_url=serve_app.url, timeout=60, headers=serve_app.admin) as http:
        for op in operations:
            body_op = op.method.upper() in ("POST", "PUT")
            # Negative cases need something typed to break: a body. A path parameter is any string.
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 2 if body_op else 1]:
                run = _schemathesis_test(op, mode, http, serve_app.url, counts, 300 if body_op else 40)
                try:
                    run()
                finally:
                    http.put("/admin/routing", json=initial).raise_for_status()
    print("schemathesis cases:", dict(counts))
    assert sum(counts.values()) >= SCHEMATHESIS_MIN_CASES
    assert serve_app.http.post("/v1/embeddings", json={"input": "still here"}).status_code == 200


def _schemathesis_test(op, mode: GenerationMode, http: httpx.Client, url: str, counts: Counter,
                       max_examples: int):
    key = f"{op.method.upper()} {op.path} {mode.value}"

    @_fuzz(max_examples)
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        kw = case.as_transport_kwargs(base_url=url)
        r = http.request(kw["method"], kw["url"], headers=kw.get("headers"), params=kw.get("params"),
                         content=_encode(kw))
        counts[key] += 1
        _assert_well_behaved(r, f"{case.method} {case.formatted_path} {kw.get('json')!r:.200}")

    return run


def _encode(kw: dict) -> bytes | None:
    if "json" in kw:
        return json.dumps(kw["json"]).encode()
    data = kw.get("data") or kw.get("content")
    return data.encode() if isinstance(data, str) else data


# ---- hypothesis, bodies no schema describes ---------------------------------------------------------

_EDGE_TEXT = st.sampled_from([
    "", " ", "\x00", "\x00\x01\x1b[31m", "\u202e\u200b\ufeff", "\U0001F600" * 50, "a\u0301" * 100,
    "\ud7ff\ue000\uffff", "\U0010FFFF", "null", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\n\r\t" * 10,
])
_LONG_TEXT = st.builds(lambda word, n: word * n, st.sampled_from(["x", "word ", "\u00e9", "\U0001F600 "]),
                       st.integers(500, 20_000))
_TEXT = st.one_of(_EDGE_TEXT, _LONG_TEXT, st.text(max_size=300),
                  st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Mn", "So"]),
                          max_size=50))
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
                     lambda kids: st.lists(kids, max_size=6) | st.dictionaries(_TEXT, kids, max_size=4),
                     max_leaves=20)
_INPUT = st.one_of(_TEXT, st.lists(_TEXT, max_size=40), _JSON)


def _openai_body():
    extra = st.dictionaries(st.sampled_from(["model", "encoding_format", "dimensions", "user", "temperature"]),
                            st.one_of(_JSON, st.sampled_from(["twinserve", "twinserve-dense", "base64", "float"])),
                            max_size=3)
    return st.builds(lambda i, e: {"input": i, **e}, _INPUT, extra)


def _v2_body():
    plain = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=80).filter(str.strip)
    well_formed = st.lists(plain | _TEXT, min_size=1, max_size=5).map(
        lambda d: {"name": "text", "datatype": "BYTES", "shape": [len(d)], "data": d})
    tensor = well_formed | st.fixed_dictionaries(
        {"name": st.one_of(st.just("text"), _TEXT), "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "x"]),
         "shape": st.one_of(st.lists(st.integers(-2, 40), max_size=3), _JSON), "data": st.one_of(_INPUT, _JSON)})
    return st.fixed_dictionaries({"inputs": st.one_of(st.lists(tensor, max_size=2), _JSON)},
                                 optional={"parameters": _JSON, "outputs": _JSON, "id": _JSON})


def _raw(body_strategy):
    """JSON text of a body; sometimes with a duplicated key, sometimes cut short, sometimes bytes that are not UTF-8."""
    def dumps(body, how: str, junk: bytes) -> bytes:
        text = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        if how == "duplicate" and isinstance(body, dict) and body:
            key = next(iter(body))
            return b"{" + json.dumps(key).encode() + b': "dup", ' + text[1:]
        if how == "cut":
            return text[: len(text) // 2]
        if how == "junk":
            return text[:1] + junk + text[1:]
        return text
    return st.builds(dumps, body_strategy, st.sampled_from(["plain", "plain", "duplicate", "cut", "junk"]),
                     st.binary(min_size=1, max_size=20))


@pytest.mark.parametrize("path,strategy", [
    ("/v1/embeddings", _raw(_openai_body())),
    ("/v2/models/twinserve/infer", _raw(_v2_body())),
], ids=["openai", "v2"])
def test_hypothesis_bodies_give_no_5xx_and_json_rejections(serve_app, path, strategy):
    seen = Counter()
    with httpx.Client(base_url=serve_app.url, timeout=60) as http:
        @_fuzz(HYPOTHESIS_MIN_CASES // 2)
        @given(body=strategy, content_type=st.sampled_from(["application/json", "text/plain", None]))
        def run(body: bytes, content_type: str | None) -> None:
            r = http.post(path, content=body, headers={"content-type": content_type} if content_type else {})
            seen[r.status_code // 100 * 100] += 1
            _assert_well_behaved(r, f"{path} {body[:200]!r}")

        run()
    print(path, "status classes:", dict(seen))
    assert sum(seen.values()) >= HYPOTHESIS_MIN_CASES // 2
    assert seen[200] > 0 and seen[400] > 0  # the generator reached both the model and the rejections


def test_duplicated_keys_take_the_last_value_like_json_loads(serve_app):
    raw = b'{"input": "first", "input": ["second", "third"], "encoding_format": "float"}'
    r = serve_app.http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["data"]) == len(json.loads(raw)["input"]) == 2


# ---- what a generator does not reach ----------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_10mb_body_is_413_with_a_message(serve_app, chunked):
    body = json.dumps({"input": ["x" * 10_000] * 1_000}).encode()
    assert len(body) > 10_000_000
    content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    r = serve_app.http.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "over the limit of" in r.json()["error"]["message"]


def _raw_request(port: int, body: bytes, *, send: int | None = None, pause_s: float = 0.0,
                 pieces: int = 1) -> bytes:
    """A hand-written HTTP/1.1 POST; sends the first ``send`` bytes of the body in ``pieces`` with pauses."""
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    part = body[: len(body) if send is None else send]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head)
        step = max(1, -(-len(part) // pieces))
        for i in range(0, len(part), step):
            time.sleep(pause_s)
            s.sendall(part[i:i + step])
        if send is not None:
            return b""  # hang up with the body half sent
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_slow_body_client_does_not_hold_up_others(serve_app):
    port = int(serve_app.url.rsplit(":", 1)[1])
    body = json.dumps({"input": "sent one piece at a time", "encoding_format": "float"}).encode()
    done = {}

    def slow() -> None:
        done["slow"] = _raw_request(port, body, pieces=10, pause_s=0.3)
        done["slow_at"] = time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)  # the slow client is mid-body now
    r = serve_app.http.post("/v1/embeddings", json={"input": "a normal client"})
    fast_at = time.monotonic()
    t.join(60)
    assert r.status_code == 200
    assert fast_at < done["slow_at"], "the normal request waited for the slow client's body"
    assert done["slow"].startswith(b"HTTP/1.1 200"), done["slow"][:200]


def test_client_hanging_up_mid_body_leaves_the_service_serving(serve_app):
    port = int(serve_app.url.rsplit(":", 1)[1])
    body = json.dumps({"input": ["half of this body never arrives"] * 20}).encode()
    for _ in range(5):
        _raw_request(port, body, send=len(body) // 2)
    r = serve_app.http.post("/v1/embeddings", json={"input": "after the hang-ups"})
    assert r.status_code == 200
