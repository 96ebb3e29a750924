"""Request models of the HTTP API (OpenAI embeddings, Open Inference Protocol v2) and response builders.

Responses are built as plain dicts from numpy arrays: validating thousands of floats through
pydantic on the way out costs time and checks nothing the model did not already guarantee.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

__all__ = [
    "EmbeddingRequest",
    "InferRequest",
    "InputError",
    "RoutingUpdate",
    "decode_v2_texts",
    "describe_validation_error",
    "embedding_response",
    "infer_response",
    "parse_infer",
]


class InputError(ValueError):
    """Bad input a person can fix; answered with 4xx and this message."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``, as the OpenAI API defines it (text input only)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description="a text or a list of texts; token-id arrays are not accepted")
    model: str = Field("twinserve", description="twinserve (routed), twinserve-dense or twinserve-pruned")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = Field(None, description="must equal the model's dimension when given")
    user: str | None = Field(None, max_length=256, description="end-user id; makes routing sticky")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class InferTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: one BYTES input of texts, shape [N]."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class RoutingUpdate(BaseModel):
    """``PUT /admin/routing``: any subset of the Router's user_config."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] | None = None
    shadow_fraction: float | None = None


def describe_validation_error(e: ValidationError | list[dict]) -> str:
    """One line per problem, naming the field: what pydantic found, in words."""
    errors = e.errors() if isinstance(e, ValidationError) else e
    lines = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            lines.append(f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        if loc.startswith("input") and err.get("type") in ("string_type", "list_type"):
            lines.append("input must be a string or a list of strings")
            continue
        lines.append(f"{loc}: {err.get('msg', 'invalid')}")
    lines = list(dict.fromkeys(lines))
    if len(errors) > 5:
        lines.append(f"and {len(errors) - 5} more problems")
    return "; ".join(lines)


def decode_v2_texts(req: InferRequest, binary: bytes | None) -> list[str]:
    """The texts of the single BYTES input, from JSON ``data`` or the binary tensor extension."""
    if len(req.inputs) != 1:
        raise InputError(f"expected exactly one input (BYTES texts), got {len(req.inputs)}")
    t = req.inputs[0]
    if t.datatype != "BYTES":
        raise InputError(f"input {t.name!r} must have datatype BYTES (texts), got {t.datatype}")
    if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise InputError(f"input {t.name!r} must have shape [N] or [N, 1], got {t.shape}")
    n = t.shape[0]
    size = (t.parameters or {}).get("binary_data_size")
    if size is not None:
        if binary is None or not isinstance(size, int) or size != len(binary):
            raise InputError(f"input {t.name!r} announces {size} binary bytes, the body carries "
                             f"{0 if binary is None else len(binary)}")
        texts = _unpack_bytes(binary, t.name)
    elif t.data is None:
        raise InputError(f"input {t.name!r} has no data")
    else:
        texts = t.data
    if len(texts) != n:
        raise InputError(f"input {t.name!r} has shape {t.shape} but carries {len(texts)} elements")
    for i, x in enumerate(texts):
        if not isinstance(x, str):
            raise InputError(f"input {t.name!r} element {i} must be a string, got {type(x).__name__}")
    return texts


def _unpack_bytes(buf: bytes, name: str) -> list[str]:
    """Triton's binary BYTES layout: for each element a 4-byte little-endian length, then the bytes."""
    out, pos = [], 0
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise InputError(f"input {name!r}: truncated binary BYTES data")
        (length,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + length > len(buf):
            raise InputError(f"input {name!r}: truncated binary BYTES data")
        try:
            out.append(buf[pos: pos + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"input {name!r} element {len(out)} is not UTF-8 text") from None
        pos += length
    return out


def embedding_response(emb: np.ndarray, model: str, n_tokens: int, encoding_format: str) -> bytes:
    if encoding_format == "base64":
        items = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in emb]
    else:
        items = emb.tolist()
    data = [{"object": "embedding", "index": i, "embedding": x} for i, x in enumerate(items)]
    body = {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
    return json.dumps(body, separators=(",", ":")).encode()


def infer_response(emb: np.ndarray, model: str, request_id: str | None, output_name: str,
                   binary: bool) -> tuple[bytes, int | None]:
    """JSON body (and the JSON header's length when the tensor travels in binary after it)."""
    out: dict[str, Any] = {"name": output_name, "datatype": "FP32", "shape": list(emb.shape)}
    raw = None
    if binary:
        raw = np.ascontiguousarray(emb, dtype="<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
    else:
        out["data"] = emb.reshape(-1).tolist()
    body = {"model_name": model, "model_version": "1", "outputs": [out]}
    if request_id is not None:
        body["id"] = request_id
    head = json.dumps(body, separators=(",", ":")).encode()
    if raw is None:
        return head, None
    return head + raw, len(head)


def parse_infer(body: bytes, header_len: str | None, *, output_name: str) -> tuple[InferRequest, list[str], bool]:
    """A v2 infer request: the JSON part (all of ``body``, or its first ``Inference-Header-Content-Length``
    bytes when the binary extension carries the tensors after it), its texts, and whether the caller
    asked for the output in binary. Raises :class:`InputError` for what a client must fix."""
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
        if out.name != output_name:
            raise InputError(f"unknown output {out.name!r}; this model has one output, {output_name!r}")
        want_binary = bool((out.parameters or {}).get("binary_data", want_binary))
    return req, texts, want_binary
