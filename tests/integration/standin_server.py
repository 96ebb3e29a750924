"""A stand-in for twinserve's HTTP API (NOT the real service): fake embeddings, real HTTP, on a free port.

It speaks the contract the load tests rely on (``POST /v1/embeddings``, OpenAI-shaped body,
X-Variant / X-Route-Reason response headers, X-Variant override) so the open-loop generator, the
capacity search and ``twinserve loadtest``'s sweep can be tested end to end without Ray or a model. Each variant serves one request at a
time with a small fixed service time, so it saturates like a real single-worker server.
"""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service._platform import free_port

SERVICE_TIME_S = {"dense": 0.004, "pruned": 0.002}


def make_app(service_time_s: dict[str, float] | None = None) -> FastAPI:
    service_time_s = {**SERVICE_TIME_S, **(service_time_s or {})}
    app = FastAPI()
    locks = {v: asyncio.Lock() for v in service_time_s}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await request.json()
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return JSONResponse({"error": {"message": "input must be a non-empty string or list of strings"}}, 400)
        forced = request.headers.get("x-variant")
        variant, reason = (forced, "override") if forced in service_time_s else ("pruned", "weight")
        async with locks[variant]:
            await asyncio.sleep(service_time_s[variant])
        data = [{"object": "embedding", "index": i, "embedding": [0.5, 0.5, 0.5, 0.5]} for i in range(len(texts))]
        return JSONResponse(
            {"object": "list", "data": data, "model": f"twinserve-{variant}",
             "usage": {"prompt_tokens": 0, "total_tokens": 0}},
            headers={"X-Variant": variant, "X-Route-Reason": reason})

    return app


class StandinServer:
    def __init__(self, service_time_s: dict[str, float] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(make_app(service_time_s), host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StandinServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("stand-in server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


if __name__ == "__main__":
    import sys

    with StandinServer() as s:
        print(s.url, flush=True)
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 60)
