"""The ingress deployment: FastAPI, the HTTP API of DESIGN.md, and dispatch by policy.

The router only dispatches: it validates the request, asks :func:`policy.choose` for a variant,
awaits that variant's handle (falling back to the other one when it is down or shedding load),
optionally sends a shadow copy in the background, and writes the answer. Model work, tokenising
for the model and batching happen in the variant replicas.
"""

# No `from __future__ import annotations` here: FastAPI must see real types on the route methods.

import asyncio
import hmac
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from service.model.tokenizer import TextTokenizer
from service.serving.config import VARIANTS, RoutingConfig, ServingConfig
from service.serving.metrics import serving_metrics
from service.serving.policy import (
    MODEL_NAMES,
    Route,
    RoutingError,
    VariantUnavailable,
    choose,
    dispatch,
    other,
)
from service.serving.schemas import (
    EmbeddingRequest,
    InferRequest,
    InputError,
    RoutingUpdate,
    decode_v2_texts,
    describe_validation_error,
    embedding_response,
    infer_response,
)

__all__ = ["Router", "api"]

log = logging.getLogger("ray.serve")

api = FastAPI(
    title="twinserve",
    description="One encoder, two variants (dense, pruned INT8), one endpoint: OpenAI embeddings and "
                "Open Inference Protocol v2.",
    version="0.1.0",
)

def _body(model: type, description: str) -> dict:
    """``openapi_extra`` for a route that reads its own body: the body's schema, for clients and fuzzers."""
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _openapi() -> dict:
    """FastAPI's document plus the request models, which the routes validate themselves (for the
    error messages and the body limit) and so FastAPI cannot see."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in (EmbeddingRequest, InferRequest, RoutingUpdate):
            s = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(s.pop("$defs", {}))
            schemas[model.__name__] = s
        api.openapi_schema = doc
    return api.openapi_schema


api.openapi = _openapi


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug still answers JSON, and the log names the route, not the body."""
    log.error("twinserve: unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path,
              exc_info=exc)
    return JSONResponse({"error": {"message": "internal error; the server log has the details",
                                   "type": "internal_error"}}, status_code=500)


@dataclass(frozen=True)
class _Failure:
    """A failed inference request, the same for both APIs; each endpoint writes it in its own format."""

    metric_status: str
    status: int
    message: str
    headers: dict[str, str]
    param: str | None = None
    code: str | None = None


_UNAVAILABLE = (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError, ActorDiedError,
                ActorUnavailableError)
_INPUT_NAME, _OUTPUT_NAME = "text", "embedding"
_REQUEST_FAILURES = (InputError, RoutingError, VariantUnavailable, TimeoutError)


def _openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                  headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _v2_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@serve.deployment(name="Router")
@serve.ingress(api)
class Router:
    def __init__(self, dense: DeploymentHandle, pruned: DeploymentHandle, config: ServingConfig):
        from service.pruning.manifest import verify_artifacts
        from service.settings import Settings

        self.cfg = config
        self.handles = {"dense": dense, "pruned": pruned}
        manifest = verify_artifacts(config.artifact_dir, only=[  # the router counts tokens with it
            "tokenizer.json"])
        self.max_tokens = config.limits.max_tokens_per_input or manifest.max_tokens
        self.tokenizer = TextTokenizer(config.artifact_dir / manifest.tokenizer_file, manifest.max_tokens)
        self.routing = config.routing
        token = Settings().admin_token  # from the environment only: never a bind argument in GCS
        self._admin_token = token.get_secret_value().encode() if token else None
        self._rng = random.Random()
        self._shadow_tasks: set[asyncio.Task] = set()
        self._shadow_stats = {"completed": 0, "failed": 0, "skipped": 0, "cosine_sum": 0.0,
                              "cosine_min": None, "latency_s_sum": 0.0}
        self._meta: dict[str, dict] = {}
        self._down: dict[str, asyncio.Event] = {}  # set while a variant is marked down; made in the loop
        self._monitor: asyncio.Task | None = None
        self._metrics = serving_metrics()
        self._replica = serve.get_replica_context().replica_id.unique_id
        log.info("twinserve router: artifacts %s, token limit %d (%s), admin endpoint %s",
                 config.artifact_dir, self.max_tokens, config.limits.over_token_limit,
                 "enabled" if self._admin_token else "disabled (no TWINSERVE_ADMIN_TOKEN)")

    def reconfigure(self, user_config: dict) -> None:
        """Ray Serve ``user_config``: weights and shadow fraction, applied without a restart."""
        self.routing = RoutingConfig.model_validate(user_config)
        log.info("twinserve router: routing set to %s", self.routing.model_dump())

    # ---- helpers -------------------------------------------------------------------------------

    async def _read_body(self, request: Request) -> bytes:
        limit = self.cfg.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InputError(f"request body is {declared} bytes, over the limit of {limit}; "
                             "send fewer or shorter texts per request", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError(f"request body is over the limit of {limit} bytes; "
                                 "send fewer or shorter texts per request", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_texts(self, texts: list[str]) -> int:
        """Limits on inputs; returns the number of tokens the model will see (the usage count)."""
        limits = self.cfg.limits
        if not texts:
            raise InputError("input is empty; send a string or a non-empty list of strings", param="input")
        if len(texts) > limits.max_inputs_per_request:
            raise InputError(f"input has {len(texts)} texts, over the limit of {limits.max_inputs_per_request} "
                             "per request; split it into several requests", param="input")
        for i, t in enumerate(texts):
            if not t.strip():
                raise InputError(f"input {i} is empty or only whitespace; send text to embed", param="input")
        counts = self.tokenizer.count(texts)
        if limits.over_token_limit == "reject":
            for i, n in enumerate(counts):
                if n > self.max_tokens:
                    raise InputError(f"input {i} has {n} tokens, over the limit of {self.max_tokens}; shorten it "
                                     "or split it into several inputs", param="input")
        return sum(min(n, self.max_tokens) for n in counts)

    # ---- variant health -------------------------------------------------------------------------

    def _watch(self) -> None:
        """Start the health monitor on first use (it needs the replica's running event loop)."""
        if self._monitor is None or self._monitor.done():
            self._down = self._down or {v: asyncio.Event() for v in VARIANTS}
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(v) for v in VARIANTS))
            await asyncio.sleep(self.cfg.router.health_period_s)

    async def _probe(self, variant: str) -> None:
        """A metadata call per period. A dead replica does not fail the handle's calls: Ray queues them
        until a new replica is up; so down is "no answer within health_timeout_s", not an error."""
        up = await self._answers(variant, self.cfg.router.health_timeout_s)
        event = self._down[variant]
        if up == event.is_set():
            log.warning("twinserve router: %s variant is %s", variant, "up again" if up else
                        f"down (no answer to a probe within {self.cfg.router.health_timeout_s:g} s); "
                        "routed requests go to the other variant")
        if up:
            event.clear()
        else:
            event.set()
        self._metrics.variant_up.set(1.0 if up else 0.0, tags={"variant": variant})

    def _known_down(self) -> set[str]:
        return {v for v, e in self._down.items() if e.is_set()}

    async def _call(self, variant: str, texts: list[str], *, movable: bool = False) -> np.ndarray:
        """The variant's embeddings. ``movable`` (a request that may fall back): give up, and so fall
        back, as soon as the variant is marked down, rather than wait in its queue for a new replica."""
        response = self.handles[variant].embed.remote(texts)
        try:
            if not movable or variant not in self._down:
                return await asyncio.wait_for(response, self.cfg.router.variant_timeout_s)
            answer = asyncio.ensure_future(response)
            down = asyncio.ensure_future(self._down[variant].wait())
            try:
                done, _ = await asyncio.wait({answer, down}, timeout=self.cfg.router.variant_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                down.cancel()
            if answer in done:
                return answer.result()
            answer.cancel()
            response.cancel()
            if not done:
                raise TimeoutError
            raise VariantUnavailable(variant, "is down (no answer to the router's health probe)", shed=False)
        except BackPressureError:
            raise VariantUnavailable(variant, "is shedding load (its queue is full)", shed=True) from None
        except _UNAVAILABLE as e:
            raise VariantUnavailable(variant, f"is unavailable ({type(e).__name__})", shed=False) from None

    def _route(self, model: str | None, request: Request, user: str | None) -> Route:
        return choose(weights=self.routing.weights, draw=self._rng.random(), model=model,
                      variant_header=request.headers.get("x-variant"),
                      user_key=request.headers.get("x-user-id") or user)

    async def _embed(self, route: Route, texts: list[str]) -> tuple[np.ndarray, Route]:
        self._watch()
        emb, final = await dispatch(route, lambda v: self._call(v, texts, movable=v == route.variant and
                                                                 not route.pinned), self._known_down())
        self._maybe_shadow(final, texts, emb)
        return emb, final

    def _record(self, t0: float, route: Route | None, status: str) -> None:
        variant, reason = (route.variant, route.reason) if route else ("none", "none")
        self._metrics.requests.inc(tags={"variant": variant, "reason": reason, "status": status})
        if status == "ok":
            self._metrics.e2e_latency.observe(time.perf_counter() - t0, tags={"variant": variant, "reason": reason})

    @staticmethod
    def _route_headers(route: Route | None) -> dict[str, str]:
        return {"X-Variant": route.variant if route else "none", "X-Route-Reason": route.reason if route else "none"}

    def _unavailable_headers(self, route: Route | None) -> dict[str, str]:
        return {**self._route_headers(route), "Retry-After": str(self.cfg.router.retry_after_s)}

    def _failure(self, e: Exception, t0: float, route: Route | None) -> _Failure:
        """What a failed inference request answers, whichever API it came through; counted in the metrics."""
        retry_s, timeout_s = self.cfg.router.retry_after_s, self.cfg.router.variant_timeout_s
        if isinstance(e, InputError):
            f = _Failure("bad_request", e.status, str(e), self._route_headers(route), param=e.param)
        elif isinstance(e, RoutingError):  # raised while choosing, so there is no route yet
            unknown = str(e).startswith("unknown model")
            f = _Failure("bad_request", 404 if unknown else 400, str(e), self._route_headers(None),
                         param="model" if unknown else None, code="model_not_found" if unknown else None)
        elif isinstance(e, VariantUnavailable):
            f = _Failure("shed" if e.shed else "unavailable", 429 if e.shed else 503,
                         f"{e}; retry after {retry_s} s", self._unavailable_headers(route))
        else:  # TimeoutError
            f = _Failure("timeout", 503, f"no answer within {timeout_s} s; retry later",
                         self._unavailable_headers(route))
        self._record(t0, route, f.metric_status)
        return f

    # ---- shadow --------------------------------------------------------------------------------

    def _maybe_shadow(self, route: Route, texts: list[str], primary: np.ndarray) -> None:
        if route.reason == "fallback" or self._rng.random() >= self.routing.shadow_fraction:
            return
        shadow = other(route.variant)
        if len(self._shadow_tasks) >= self.cfg.router.max_shadow_in_flight:
            self._shadow_stats["skipped"] += 1
            self._metrics.shadow_requests.inc(tags={"variant": shadow, "status": "skipped"})
            return
        task = asyncio.get_running_loop().create_task(self._shadow(shadow, texts, primary))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, variant: str, texts: list[str], primary: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            emb = await self._call(variant, texts)
        except VariantUnavailable as e:
            status = "shed" if e.shed else "unavailable"
        except Exception:  # noqa: BLE001 - a shadow must never disturb serving; counted, logged
            log.exception("twinserve shadow request to %s failed", variant)
            status = "error"
        else:
            latency = time.perf_counter() - t0
            cos = np.sum(primary * emb, axis=1)  # both L2-normalised
            tags = {"variant": variant}
            self._metrics.shadow_latency.observe(latency, tags=tags)
            for c in cos.tolist():
                self._metrics.shadow_cosine.observe(c, tags=tags)
            s = self._shadow_stats
            s["completed"] += 1
            s["cosine_sum"] += float(cos.mean())
            s["cosine_min"] = min(float(cos.min()), s["cosine_min"] if s["cosine_min"] is not None else 1.0)
            s["latency_s_sum"] += latency
            status = "ok"
        if status != "ok":
            self._shadow_stats["failed"] += 1
        self._metrics.shadow_requests.inc(tags={"variant": variant, "status": status})

    # ---- OpenAI embeddings -----------------------------------------------------------------------

    @api.post("/v1/embeddings", summary="OpenAI-compatible embeddings",
              openapi_extra=_body(EmbeddingRequest, "a text or a list of texts"))
    async def embeddings(self, request: Request) -> Response:
        t0 = time.perf_counter()
        route = None
        try:
            body = await self._read_body(request)
            try:
                req = EmbeddingRequest.model_validate_json(body)
            except ValidationError as e:
                raise InputError(describe_validation_error(e)) from None
            texts = req.texts()
            n_tokens = self._check_texts(texts)
            route = self._route(req.model, request, req.user)
            emb, route = await self._embed(route, texts)
            if req.dimensions is not None and req.dimensions != emb.shape[1]:
                raise InputError(f"dimensions={req.dimensions} is not supported; this model returns "
                                 f"{emb.shape[1]} dimensions (omit the field)", param="dimensions")
            content = embedding_response(emb, f"twinserve-{route.variant}", n_tokens, req.encoding_format)
        except _REQUEST_FAILURES as e:
            f = self._failure(e, t0, route)
            return _openai_error(f.status, f.message, param=f.param, code=f.code, headers=f.headers)
        self._record(t0, route, "ok")
        return Response(content, media_type="application/json", headers=self._route_headers(route))

    # ---- Open Inference Protocol v2 ------------------------------------------------------------

    async def _variant_metadata(self, variant: str) -> dict | None:
        if variant not in self._meta:
            try:
                self._meta[variant] = await asyncio.wait_for(self.handles[variant].metadata.remote(), 5.0)
            except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
                return None
        return self._meta[variant]

    async def _answers(self, variant: str, timeout_s: float) -> bool:
        """Does a replica of the variant answer a metadata call within ``timeout_s``?"""
        try:
            await asyncio.wait_for(self.handles[variant].metadata.remote(), timeout_s)
            return True
        except BackPressureError:
            return True  # busy, not down: its queue is full and it says so at once
        except Exception:  # noqa: BLE001 - timeout, dead actor, anything: not answering
            return False

    async def _ready(self, variant: str) -> bool:
        return await self._answers(variant, 5.0)

    @api.get("/v2", summary="v2 server metadata")
    async def server_metadata(self) -> dict:
        return {"name": "twinserve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @api.get("/v2/health/live", summary="v2 liveness")
    async def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready", summary="v2 readiness: at least one variant answers")
    async def ready(self) -> Response:
        states = await asyncio.gather(*(self._ready(v) for v in VARIANTS))
        ok = any(states)
        return JSONResponse({"ready": ok, "variants": dict(zip(VARIANTS, states))}, status_code=200 if ok else 503)

    @api.get("/v2/models/{name}", summary="v2 model metadata")
    async def model_metadata(self, name: str) -> Response:
        if name not in MODEL_NAMES:
            return _v2_error(404, f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}")
        variant = MODEL_NAMES[name]
        meta = None
        for v in ([variant] if variant else list(VARIANTS)):
            meta = await self._variant_metadata(v)
            if meta:
                break
        if meta is None:
            return _v2_error(503, f"model {name!r} is not ready yet; retry shortly",
                             headers={"Retry-After": str(self.cfg.router.retry_after_s)})
        params: dict[str, Any] = {"routed": variant is None}
        if variant:
            params.update({k: meta[k] for k in ("device", "precision", "parameters", "layers")})
        return JSONResponse({
            "name": name, "versions": ["1"], "platform": meta["platform"] if variant else "twinserve-router",
            "inputs": [{"name": _INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": _OUTPUT_NAME, "datatype": "FP32", "shape": [-1, meta["dim"]]}],
            "parameters": params,
        })

    @api.get("/v2/models/{name}/ready", summary="v2 model readiness")
    async def model_ready(self, name: str) -> Response:
        if name not in MODEL_NAMES:
            return _v2_error(404, f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}")
        variant = MODEL_NAMES[name]
        states = await asyncio.gather(*(self._ready(v) for v in ([variant] if variant else VARIANTS)))
        ok = any(states)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @api.post("/v2/models/{name}/infer", summary="v2 inference: BYTES texts in, FP32 embeddings out",
              openapi_extra=_body(InferRequest, "one BYTES input of texts (JSON data; or the binary extension)"))
    async def infer(self, name: str, request: Request) -> Response:
        t0 = time.perf_counter()
        route = None
        try:
            body = await self._read_body(request)
            header_len = request.headers.get("inference-header-content-length")
            binary = None
            if header_len is not None:
                if not header_len.isdigit() or int(header_len) > len(body):
                    raise InputError(f"Inference-Header-Content-Length {header_len!r} does not fit a body of "
                                     f"{len(body)} bytes")
                body, binary = body[: int(header_len)], body[int(header_len):]
            try:
                req = InferRequest.model_validate_json(body)
            except ValidationError as e:
                raise InputError(describe_validation_error(e)) from None
            texts = decode_v2_texts(req, binary)
            want_binary = bool((req.parameters or {}).get("binary_data_output", False))
            for out in req.outputs or []:
                if out.name != _OUTPUT_NAME:
                    raise InputError(f"unknown output {out.name!r}; this model has one output, {_OUTPUT_NAME!r}")
                want_binary = bool((out.parameters or {}).get("binary_data", want_binary))
            self._check_texts(texts)
            user = (req.parameters or {}).get("user")
            route = self._route(name, request, user if isinstance(user, str) else None)
            emb, route = await self._embed(route, texts)
            content, json_len = infer_response(emb, name, req.id, _OUTPUT_NAME, want_binary)
        except _REQUEST_FAILURES as e:
            f = self._failure(e, t0, route)
            return _v2_error(f.status, f.message, headers=f.headers)
        self._record(t0, route, "ok")
        headers = self._route_headers(route)
        if json_len is not None:
            headers["Inference-Header-Content-Length"] = str(json_len)
            return Response(content, media_type="application/octet-stream", headers=headers)
        return Response(content, media_type="application/json", headers=headers)

    # ---- admin ---------------------------------------------------------------------------------

    def _authorise(self, request: Request) -> JSONResponse | None:
        if self._admin_token is None:
            return _v2_error(404, "the admin endpoint is disabled; set TWINSERVE_ADMIN_TOKEN on the router "
                                  "to enable it, or change routing with `serve deploy` (user_config)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._admin_token):
            return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def _admin_view(self) -> dict:
        s = self._shadow_stats
        n = s["completed"]
        return {
            "routing": self.routing.model_dump(),
            "replica": self._replica,
            "scope": "this router replica; `serve deploy` with a changed user_config changes every replica",
            "shadow": {"completed": n, "failed": s["failed"], "skipped": s["skipped"],
                       "in_flight": len(self._shadow_tasks),
                       "mean_cosine": s["cosine_sum"] / n if n else None, "min_cosine": s["cosine_min"],
                       "mean_latency_s": s["latency_s_sum"] / n if n else None},
        }

    @api.get("/admin/routing", summary="current weights, shadow fraction and shadow agreement (bearer token)")
    async def get_routing(self, request: Request) -> Response:
        return self._authorise(request) or JSONResponse(self._admin_view())

    @api.put("/admin/routing", summary="change weights and/or shadow fraction now (bearer token)",
             openapi_extra=_body(RoutingUpdate, "any subset of the routing config"))
    async def put_routing(self, request: Request) -> Response:
        if (denied := self._authorise(request)) is not None:
            return denied
        try:
            update = RoutingUpdate.model_validate_json(await self._read_body(request))
            new = self.routing.model_dump()
            if update.weights is not None:
                w = dict(update.weights)
                unknown = set(w) - set(VARIANTS)
                if unknown:
                    raise InputError(f"unknown variant(s) in weights: {', '.join(sorted(unknown))}; "
                                     f"use {', '.join(VARIANTS)}")
                if len(w) == 1:  # one weight given: the other is the rest
                    (k, v), = w.items()
                    w[other(k)] = round(1.0 - v, 12)
                new["weights"] = w
            if update.shadow_fraction is not None:
                new["shadow_fraction"] = update.shadow_fraction
            self.routing = RoutingConfig.model_validate(new)
        except ValidationError as e:
            return _v2_error(400, describe_validation_error(e))
        except InputError as e:
            return _v2_error(e.status, str(e))
        log.info("twinserve router: routing set to %s through the admin endpoint", self.routing.model_dump())
        return JSONResponse(self._admin_view())
