"""The FastAPI application the ingress serves, and the error shapes of its two APIs.

The routes themselves are methods of :class:`service.serving.router.Router` (Ray Serve's
``@serve.ingress``); this module holds what they share: the app and its OpenAPI document, the JSON
error bodies, which exception answers which status (:func:`failure_for`), and the handler that
turns a bug into a JSON 500 instead of a stack trace.
"""

# No `from __future__ import annotations` here: FastAPI must see real types.

import functools
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.serving.auth import AuthError
from service.serving.policy import Route, RoutingError, VariantFailed, VariantUnavailable
from service.serving.schemas import EmbeddingRequest, InferRequest, InputError, RoutingUpdate

__all__ = ["Failure", "api", "body_doc", "failure_for", "openai_error", "route_headers", "v2_error",
           "v2_model_metadata"]

log = logging.getLogger("ray.serve")

api = FastAPI(
    title="twinserve",
    description="One encoder, two variants (dense, pruned INT8), one endpoint: OpenAI embeddings and "
                "Open Inference Protocol v2.",
    version="0.1.0",
)


def body_doc(model: type, description: str) -> dict:
    """``openapi_extra`` for a route that reads its own body: the body's schema, for clients and fuzzers."""
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document plus the request models, which the routes validate themselves (for the
    error messages and the body limit) and so FastAPI cannot see.

    It takes the app rather than reading this module's ``api``: Serve ships the ingress class to
    its replicas by value, the app with it, while this module is imported afresh there, with an
    ``api`` that has no routes (the served /openapi.json had no paths).
    """
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in (EmbeddingRequest, InferRequest, RoutingUpdate):
            s = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(s.pop("$defs", {}))
            schemas[model.__name__] = s
        app.openapi_schema = doc
    return app.openapi_schema


api.openapi = functools.partial(_openapi, api)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and methods (and any other HTTP error FastAPI raises) in the API's own JSON shapes,
    not FastAPI's ``{"detail": ...}``: ``{"error": "..."}`` under /v2, OpenAI's shape elsewhere."""
    if exc.status_code == 404:
        message = (f"no such endpoint: {request.method} {request.url.path}; the API is POST /v1/embeddings, "
                   "GET /v1/models and the Open Inference Protocol under /v2 (see /docs)")
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; see /docs for the methods it takes"
    else:
        message = str(exc.detail)
    headers = dict(exc.headers or {})
    if request.url.path.startswith("/v2"):
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)
    kind = "invalid_request_error" if exc.status_code < 500 else "internal_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=exc.status_code, headers=headers)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug still answers JSON, and the log names the route, not the body."""
    log.error("twinserve: unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path,
              exc_info=exc)
    return JSONResponse({"error": {"message": "internal error; the server log has the details",
                                   "type": "internal_error"}}, status_code=500)


@dataclass(frozen=True)
class Failure:
    """A failed inference request, the same for both APIs; each endpoint writes it in its own format."""

    metric_status: str
    status: int
    message: str
    headers: dict[str, str]
    param: str | None = None
    code: str | None = None


def openai_error(f: Failure) -> JSONResponse:
    kind = "invalid_request_error" if f.status < 500 else (
        "internal_error" if f.status == 500 else "service_unavailable")
    return JSONResponse({"error": {"message": f.message, "type": kind, "param": f.param, "code": f.code}},
                        status_code=f.status, headers=f.headers)


def v2_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def route_headers(route: Route | None) -> dict[str, str]:
    """``X-Variant`` / ``X-Route-Reason`` of an answer; ``none`` when no variant was chosen."""
    return {"X-Variant": route.variant if route else "none", "X-Route-Reason": route.reason if route else "none"}


def failure_for(e: Exception, route: Route | None, *, retry_after_s: int, timeout_s: float) -> Failure:
    """What a failed inference request answers, whichever API it came through (a bug is logged)."""
    retry = {**route_headers(route), "Retry-After": str(retry_after_s)}
    if isinstance(e, AuthError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {"Retry-After": str(e.retry_after_s)}
        return Failure("unauthorised" if e.status == 401 else "rate_limited", e.status, str(e), headers,
                       code="invalid_api_key" if e.status == 401 else "rate_limit_exceeded")
    if isinstance(e, InputError):
        return Failure("bad_request", e.status, str(e), route_headers(route), param=e.param)
    if isinstance(e, RoutingError):  # raised while choosing, so there is no route yet
        unknown = str(e).startswith("unknown model")
        return Failure("bad_request", 404 if unknown else 400, str(e), route_headers(None),
                       param="model" if unknown else None, code="model_not_found" if unknown else None)
    if isinstance(e, VariantFailed):
        return Failure("error", 500, f"{e}; the server log has the details", route_headers(route))
    if isinstance(e, VariantUnavailable):
        return Failure("shed" if e.shed else "unavailable", 429 if e.shed else 503,
                       f"{e}; retry after {retry_after_s} s", retry)
    if isinstance(e, TimeoutError):
        return Failure("timeout", 503, f"no answer within {timeout_s} s; retry later", retry)
    # a bug: still JSON, still counted
    log.error("twinserve: unexpected %s answering an inference request", type(e).__name__, exc_info=e)
    return Failure("error", 500, "internal error; the server log has the details", route_headers(route))


def v2_model_metadata(name: str, variant: str | None, meta: dict, input_name: str, output_name: str) -> dict:
    """``GET /v2/models/{name}``: from the variant's own metadata (``variant`` None: the routed model)."""
    params: dict = {"routed": variant is None}
    if variant:
        params.update({k: meta[k] for k in ("device", "precision", "parameters", "layers")})
    return {
        "name": name, "versions": ["1"], "platform": meta["platform"] if variant else "twinserve-router",
        "inputs": [{"name": input_name, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": output_name, "datatype": "FP32", "shape": [-1, meta["dim"]]}],
        "parameters": params,
    }
