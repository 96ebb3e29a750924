"""The ingress deployment: the HTTP API, routing, and the CPU variant served in-process.

Per request: read and validate the body, cap each text's characters, tokenise once (the Rust
tokenizer's ``encode_batch``; off the event loop when the request is large), apply the token
limit, ask :func:`policy.choose` for a variant, and then either

* **pruned** (the CPU variant, :class:`~service.serving.variants.CpuVariant`): batch the token
  ids in this process and run the runtime the manifest names, off the event loop; or
* **dense** (:class:`~service.serving.variants.DenseVariant`): send the token ids (never the
  texts) to the Dense deployment by handle, cancelling the Ray request when it times out.

A routed request falls back to the other variant when its own is down, shedding load or failing
(:func:`policy.dispatch`); pinned requests never do. Health (:mod:`service.serving.health`) comes
from an out-of-band probe of the dense replicas with hysteresis, and from each variant's error
rate; marking a variant down moves new requests only. An optional shadow copy
(:mod:`service.serving.shadow`) goes to the other variant in the background. Weights and the
shadow fraction come from the application's one routing state
(:mod:`service.serving.routing_state`).

One ingress replica is one CPU-variant replica: ``router.num_replicas`` and ``router.num_cpus``
are the CPU variant's capacity and threads.

Why this file is over 350 lines: Ray Serve ships the ingress class by value and injects ``self``
only into routes declared on it; routes moved to mixins in another module answered 422 ("missing
query parameter self") in the replica (tried). So every route stays here, thin; what they share
lives beside it: error mapping and metadata in :mod:`~service.serving.api`, parsing in
:mod:`~service.serving.schemas`, routing rules and admin updates in :mod:`~service.serving.policy`,
health, shadow and the variants in their own modules.
"""

# No `from __future__ import annotations` here: FastAPI must see real types on the route methods.

import asyncio
import hmac
import logging
import random
import time

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from service.model.backends import OnnxBackend, cpu_variant_backend
from service.serving.api import (
    Failure,
    api,
    body_doc,
    failure_for,
    openai_error,
    route_headers,
    v2_error,
    v2_model_metadata,
)
from service.serving.auth import ApiKeys, AuthError
from service.serving.config import VARIANTS, RoutingConfig, ServingConfig
from service.serving.health import VariantHealth
from service.serving.metrics import keep_price_gauge, serving_metrics
from service.serving.policy import (
    MODEL_NAMES,
    Route,
    VariantUnavailable,
    choose,
    dispatch,
    other,
    updated_routing,
)
from service.serving.routing_state import routing_state
from service.serving.schemas import (
    EmbeddingRequest,
    InferRequest,
    InputError,
    RoutingUpdate,
    describe_validation_error,
    embedding_response,
    infer_response,
    parse_infer,
)
from service.serving.shadow import Shadow
from service.serving.variants import CpuVariant, DenseVariant

__all__ = ["Router", "api"]

log = logging.getLogger("ray.serve")

_INPUT_NAME, _OUTPUT_NAME = "text", "embedding"
# Requests with fewer characters than this are tokenised on the event loop: a thread hop costs more
# than encoding them (tens of microseconds); larger ones go to a thread so that one request of 32
# long texts does not hold every other request on this replica.
INLINE_TOKENISE_CHARS = 2048
# `created` of the models in GET /v1/models (OpenAI's field, Unix seconds): when this API first served them.
MODELS_CREATED = 1_764_460_800  # 2025-11-30


@serve.deployment(name="Router")
@serve.ingress(api)
class Router:
    def __init__(self, dense: DeploymentHandle, config: ServingConfig):
        from service.settings import Settings

        self.cfg = config
        r, limits = config.router, config.limits
        self._metrics = serving_metrics()
        threads = max(1, int(r.num_cpus))
        backend = (cpu_variant_backend(config.artifact_dir, threads=threads) if config.pruned.graph == "manifest"
                   else OnnxBackend(config.artifact_dir, variant="pruned", threads=threads))
        backend.load()  # verifies the manifest's sha256 of every file it reads; raises on a mismatch
        self.tokenizer = backend.tokenizer  # the one tokenizer.json both variants share
        model_limit = self.tokenizer.max_tokens
        if limits.max_tokens_per_input is not None and limits.max_tokens_per_input > model_limit:
            raise ValueError(
                f"limits.max_tokens_per_input ({limits.max_tokens_per_input}) is above the model's limit "
                f"of {model_limit} tokens (manifest.json max_tokens); lower it or leave it unset")
        self.max_tokens = limits.max_tokens_per_input or model_limit
        self.cpu = CpuVariant(backend, config.pruned, timeout_s=r.variant_timeout_s, on_batch=self._on_cpu_batch)
        self.dense = DenseVariant(dense, timeout_s=r.variant_timeout_s, probe_timeout_s=r.health_timeout_s)
        self.dim = self.cpu.dim
        self.routing = config.routing
        self._state = None  # the application's RoutingState actor, looked up on first use
        self._routing_version, self._routing_source = 0, "build_app args"
        settings = Settings()  # secrets from the environment only: never a bind argument in GCS
        token = settings.admin_token
        self._admin_token = token.get_secret_value().encode() if token else None
        self._keys = ApiKeys.from_settings(settings)
        self._rng = random.Random()
        self.shadow = Shadow(r.max_shadow_in_flight, self._metrics)
        self.health = VariantHealth(VARIANTS, misses_to_down=r.health_misses_to_down,
                                    successes_to_up=r.health_successes_to_up, window_s=r.error_window_s,
                                    max_error_rate=r.max_error_rate, min_requests=r.error_min_requests)
        self._monitor: asyncio.Task | None = None
        keep_price_gauge("pruned", config.pruned.price_usd_per_hour)
        ctx = serve.get_replica_context()
        self._app, self._replica = ctx.app_name, ctx.replica_id.unique_id
        log.info("twinserve ingress: CPU variant %s (%s, %s) in-process with %d threads, batches of up to %d "
                 "texts waiting %.1f ms; artifacts %s, token limit %d (%s), admin endpoint %s",
                 getattr(backend, "runtime", "onnxruntime"), backend.precision, backend.device,
                 backend.threads, config.pruned.max_batch_size, config.pruned.batch_wait_timeout_s * 1e3,
                 config.artifact_dir, self.max_tokens, limits.over_token_limit,
                 "enabled" if self._admin_token else "disabled (no TWINSERVE_ADMIN_TOKEN)")
        log.info("twinserve ingress: inference endpoints %s", f"need one of {len(self._keys)} API keys"
                 if self._keys else "are open (no TWINSERVE_API_KEYS or TWINSERVE_API_KEYS_FILE)")

    async def reconfigure(self, user_config: dict) -> None:
        """Ray Serve ``user_config``: weights and shadow fraction, applied without a restart.

        Goes through the application's routing state (:mod:`service.serving.routing_state`): a
        changed ``user_config`` replaces it for every replica; the same one again (this replica
        starting) keeps an admin change that is in force.
        """
        routing = RoutingConfig.model_validate(user_config)
        self._apply(*await self._routing_state().deploy.remote(routing.model_dump()))
        self._watch()  # health probes and routing sync from now on, not from the first request

    def _routing_state(self):
        if self._state is None:
            self._state = routing_state(self._app)
        return self._state

    def _apply(self, version: int, routing: dict | None, source: str) -> None:
        if routing is not None and version > self._routing_version:
            self.routing, self._routing_version, self._routing_source = (
                RoutingConfig.model_validate(routing), version, source)
            self.shadow.reset()  # the agreement figures describe the routing now in force
            log.info("twinserve router: routing set to %s (%s, version %d)", self.routing.model_dump(), source,
                     version)

    async def _sync_routing(self) -> None:
        self._apply(*await asyncio.wait_for(self._routing_state().get.remote(), self.cfg.router.health_timeout_s))

    # ---- request body and texts ----------------------------------------------------------------

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

    async def _token_ids(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Checked, capped, tokenised texts: token ids per text and the tokens the model sees (usage)."""
        limits = self.cfg.limits
        if not texts:
            raise InputError("input is empty; send a string or a non-empty list of strings", param="input")
        if len(texts) > limits.max_inputs_per_request:
            raise InputError(f"input has {len(texts)} texts, over the limit of {limits.max_inputs_per_request} "
                             "per request; split it into several requests", param="input")
        reject, cap = limits.over_token_limit == "reject", limits.max_chars_per_input
        capped = []
        for i, t in enumerate(texts):
            if not t.strip():
                raise InputError(f"input {i} is empty or only whitespace; send text to embed", param="input")
            if len(t) > cap:
                if reject:
                    raise InputError(f"input {i} has {len(t)} characters, over the limit of {cap}; shorten it "
                                     "or split it into several inputs", param="input")
                t = t[:cap]
            capped.append(t)
        if sum(map(len, capped)) < INLINE_TOKENISE_CHARS:
            ids = self.tokenizer.encode(capped)
        else:
            ids = await asyncio.to_thread(self.tokenizer.encode, capped)
        for i, x in enumerate(ids):
            if len(x) > self.max_tokens:
                if reject:
                    raise InputError(f"input {i} has {len(x)} tokens, over the limit of {self.max_tokens}; "
                                     "shorten it or split it into several inputs", param="input")
                ids[i] = self.tokenizer.truncate(x, self.max_tokens)
        return ids, sum(map(len, ids))

    # ---- the two variants ------------------------------------------------------------------------

    def _on_cpu_batch(self, n_texts: int, seconds: float) -> None:
        tags = {"variant": "pruned"}
        self._metrics.model_latency.observe(seconds, tags=tags)
        self._metrics.batch_size.observe(n_texts, tags=tags)

    async def _call(self, variant: str, ids: list[list[int]]) -> np.ndarray:
        """One variant's embeddings; every outcome but shedding goes into its error window."""
        try:
            emb = await (self.cpu if variant == "pruned" else self.dense).embed(ids)
        except VariantUnavailable as e:
            if not e.shed:
                self.health.record(variant, ok=False)
            raise
        except TimeoutError:
            self.health.record(variant, ok=False)
            raise
        self.health.record(variant, ok=True)
        return emb

    # ---- variant health ----------------------------------------------------------------------------

    def _watch(self) -> None:
        """Start the health monitor on first use (it needs the replica's running event loop)."""
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    async def _monitor_loop(self) -> None:
        while True:
            try:
                await self._sync_routing()  # admin changes taken by another replica
                up = await self.dense.probe()
                if self.health.probe("dense", up):
                    r = self.cfg.router
                    log.warning("twinserve router: dense variant is %s", "up again" if up else
                                f"down ({r.health_misses_to_down} probes unanswered within {r.health_timeout_s:g} s); "
                                "new routed requests go to the CPU variant")
                for v in VARIANTS:
                    self._metrics.variant_up.set(0.0 if self.health.is_down(v) else 1.0, tags={"variant": v})
            except Exception:  # the monitor must outlive any one probe's surprise
                log.exception("twinserve router: health probe failed")
            await asyncio.sleep(self.cfg.router.health_period_s)

    # ---- routing -----------------------------------------------------------------------------------

    def _route(self, model: str | None, request: Request, user: str | None) -> Route:
        return choose(weights=self.routing.weights, draw=self._rng.random(), model=model,
                      variant_header=request.headers.get("x-variant"),
                      user_key=request.headers.get("x-user-id") or user)

    async def _embed(self, route: Route, ids: list[list[int]]) -> tuple[np.ndarray, Route]:
        self._watch()
        emb, final = await dispatch(route, lambda v: self._call(v, ids), self.health.down())
        self._maybe_shadow(final, ids, emb)
        return emb, final

    def _authenticate(self, request: Request) -> str | None:
        """The caller's key id when API keys are on (raises AuthError without a valid one); else None."""
        return None if self._keys is None else self._keys.check(request.headers.get("authorization"))

    def _record(self, t0: float, route: Route | None, status: str, key: str | None = None) -> None:
        variant, reason = (route.variant, route.reason) if route else ("none", "none")
        self._metrics.requests.inc(tags={"variant": variant, "reason": reason, "status": status})
        if key is not None:
            self._metrics.key_requests.inc(tags={"key": key, "status": status})
        if status == "ok":
            self._metrics.e2e_latency.observe(time.perf_counter() - t0, tags={"variant": variant, "reason": reason})

    def _failure(self, e: Exception, t0: float, route: Route | None, key: str | None = None) -> Failure:
        """What a failed inference request answers, whichever API it came through; counted in the metrics."""
        f = failure_for(e, route, retry_after_s=self.cfg.router.retry_after_s,
                        timeout_s=self.cfg.router.variant_timeout_s)
        self._record(t0, route, f.metric_status, key)
        return f

    # ---- shadow ------------------------------------------------------------------------------------

    def _maybe_shadow(self, route: Route, ids: list[list[int]], primary: np.ndarray) -> None:
        if route.reason == "fallback" or self._rng.random() >= self.routing.shadow_fraction:
            return
        shadow = other(route.variant)
        self.shadow.send(shadow, lambda: self._call(shadow, ids), primary)

    # ---- OpenAI embeddings ---------------------------------------------------------------------------

    @api.post("/v1/embeddings", summary="OpenAI-compatible embeddings",
              openapi_extra=body_doc(EmbeddingRequest, "a text or a list of texts"))
    async def embeddings(self, request: Request) -> Response:
        t0 = time.perf_counter()
        route = key = None
        try:
            key = self._authenticate(request)
            body = await self._read_body(request)
            try:
                req = EmbeddingRequest.model_validate_json(body)
            except ValidationError as e:
                raise InputError(describe_validation_error(e)) from None
            ids, n_tokens = await self._token_ids(req.texts())
            route = self._route(req.model, request, req.user)
            if req.dimensions is not None and req.dimensions != self.dim:
                raise InputError(f"dimensions={req.dimensions} is not supported; this model returns "
                                 f"{self.dim} dimensions (omit the field)", param="dimensions")
            emb, route = await self._embed(route, ids)
            content = embedding_response(emb, f"twinserve-{route.variant}", n_tokens, req.encoding_format)
        except Exception as e:  # noqa: BLE001 - every failure is answered in JSON and counted
            return openai_error(self._failure(e, t0, route, key))
        self._record(t0, route, "ok", key)
        return Response(content, media_type="application/json", headers=route_headers(route))

    @staticmethod
    def _openai_model(name: str) -> dict:
        return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "twinserve"}

    def _denied(self, request: Request) -> Response | None:
        """The JSON answer to a request without a valid key (or over its rate), else None."""
        try:
            self._authenticate(request)
        except AuthError as e:
            return openai_error(self._failure(e, time.perf_counter(), None))
        return None

    @api.get("/v1/models", summary="OpenAI-compatible model list: the routed model and the two pinned ones")
    async def list_models(self, request: Request) -> Response:
        return self._denied(request) or JSONResponse(
            {"object": "list", "data": [self._openai_model(name) for name in MODEL_NAMES]})

    @api.get("/v1/models/{name}", summary="OpenAI-compatible model retrieval")
    async def retrieve_model(self, name: str, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        if name not in MODEL_NAMES:
            return openai_error(Failure("bad_request", 404, f"unknown model {name!r}; use one of "
                                        f"{', '.join(MODEL_NAMES)}", {}, param="model", code="model_not_found"))
        return JSONResponse(self._openai_model(name))

    # ---- Open Inference Protocol v2 ------------------------------------------------------------------

    async def _variant_metadata(self, variant: str) -> dict | None:
        return self.cpu.metadata() if variant == "pruned" else await self.dense.metadata()

    async def _ready(self, variant: str) -> bool:
        self._watch()
        if variant == "pruned":  # in this process: ready unless it keeps failing
            return not self.health.is_down("pruned")
        return await self.dense.probe()

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
            return v2_error(404, f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}")
        variant = MODEL_NAMES[name]
        meta = None
        for v in ([variant] if variant else ["pruned", "dense"]):
            meta = await self._variant_metadata(v)
            if meta:
                break
        if meta is None:
            return v2_error(503, f"model {name!r} is not ready yet; retry shortly",
                            headers={"Retry-After": str(self.cfg.router.retry_after_s)})
        return JSONResponse(v2_model_metadata(name, variant, meta, _INPUT_NAME, _OUTPUT_NAME))

    @api.get("/v2/models/{name}/ready", summary="v2 model readiness")
    async def model_ready(self, name: str) -> Response:
        if name not in MODEL_NAMES:
            return v2_error(404, f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}")
        variant = MODEL_NAMES[name]
        states = await asyncio.gather(*(self._ready(v) for v in ([variant] if variant else VARIANTS)))
        ok = any(states)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @api.post("/v2/models/{name}/infer", summary="v2 inference: BYTES texts in, FP32 embeddings out",
              openapi_extra=body_doc(InferRequest, "one BYTES input of texts (JSON data; or the binary extension)"))
    async def infer(self, name: str, request: Request) -> Response:
        t0 = time.perf_counter()
        route = key = None
        try:
            key = self._authenticate(request)
            body = await self._read_body(request)
            req, texts, want_binary = parse_infer(body, request.headers.get("inference-header-content-length"),
                                                  output_name=_OUTPUT_NAME)
            ids, _ = await self._token_ids(texts)
            user = (req.parameters or {}).get("user")
            route = self._route(name, request, user if isinstance(user, str) else None)
            emb, route = await self._embed(route, ids)
            content, json_len = infer_response(emb, name, req.id, _OUTPUT_NAME, want_binary)
        except Exception as e:  # noqa: BLE001 - every failure is answered in JSON and counted
            f = self._failure(e, t0, route, key)
            return v2_error(f.status, f.message, headers=f.headers)
        self._record(t0, route, "ok", key)
        headers = route_headers(route)
        if json_len is not None:
            headers["Inference-Header-Content-Length"] = str(json_len)
            return Response(content, media_type="application/octet-stream", headers=headers)
        return Response(content, media_type="application/json", headers=headers)

    # ---- admin -------------------------------------------------------------------------------------

    def _authorise(self, request: Request) -> JSONResponse | None:
        if self._admin_token is None:
            return v2_error(404, "the admin endpoint is disabled; set TWINSERVE_ADMIN_TOKEN on the router "
                                 "to enable it, or change routing with `serve deploy` (user_config)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._admin_token):
            return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def _admin_view(self) -> dict:
        return {
            "routing": self.routing.model_dump(),
            "replica": self._replica,
            "version": self._routing_version,
            "set_by": self._routing_source,
            "scope": f"every ingress replica within {self.cfg.router.health_period_s:g} s, kept across replica "
                     "restarts, until the next change here or a `serve deploy` with a changed user_config",
            "variants_down": sorted(self.health.down()),
            "shadow": self.shadow.view(),
        }

    @api.get("/admin/routing", summary="current weights, shadow fraction and shadow agreement (bearer token)")
    async def get_routing(self, request: Request) -> Response:
        return self._authorise(request) or JSONResponse(self._admin_view())

    @api.put("/admin/routing", summary="change weights and/or shadow fraction now (bearer token)",
             openapi_extra=body_doc(RoutingUpdate, "any subset of the routing config"))
    async def put_routing(self, request: Request) -> Response:
        if (denied := self._authorise(request)) is not None:
            return denied
        try:
            update = RoutingUpdate.model_validate_json(await self._read_body(request))
            routing = updated_routing(self.routing, update)
        except ValidationError as e:
            return v2_error(400, describe_validation_error(e))
        except InputError as e:
            return v2_error(e.status, str(e))
        self._apply(*await self._routing_state().set.remote(routing.model_dump(),
                                                            f"admin endpoint (replica {self._replica})"))
        self._watch()  # the other replicas pick it up on their period; this one has it now
        return JSONResponse(self._admin_view())
