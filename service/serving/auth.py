"""Optional API keys and per-key rate limits for the inference endpoints (plain Python, no Ray).

Keys come from the environment (``TWINSERVE_API_KEYS``: comma-separated keys, or
``TWINSERVE_API_KEYS_FILE``: one sha256 hex digest of a key per line, ``#`` comments allowed), never
from a Serve config that lands in Ray's GCS. Only digests are held in memory. A request sends
``Authorization: Bearer <key>`` (what the ``openai`` client does with ``api_key``); the digest of
what it sent is compared with every known digest in constant time. Logs and metrics name a key by
its id, the first 8 hex digits of its digest, never the key.

With ``TWINSERVE_API_KEY_RATE_RPS`` set, each key also gets a token bucket per ingress replica
(``TWINSERVE_API_KEY_BURST`` requests deep): over it, 429 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ApiKeys", "AuthError", "TokenBucket", "key_digest"]


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class AuthError(Exception):
    """A request without a valid key (401) or over its key's rate (429 with ``retry_after_s``)."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.retry_after_s = status, retry_after_s


class TokenBucket:
    """``rate_rps`` tokens a second, at most ``burst`` stored; one token per request."""

    def __init__(self, rate_rps: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate_rps <= 0 or burst < 1:
            raise ValueError(f"rate must be positive and burst at least 1, got {rate_rps} and {burst}")
        self.rate_rps, self.burst, self._clock = rate_rps, burst, clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> float:
        """0.0 when a token was taken; otherwise seconds until the next one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_rps)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_rps


class ApiKeys:
    """The accepted keys, as sha256 digests, and their rate limits."""

    def __init__(self, digests: Iterable[str], *, rate_rps: float | None = None, burst: int = 10,
                 clock: Callable[[], float] = time.monotonic):
        self._digests = [bytes.fromhex(d) for d in digests]
        if any(len(d) != 32 for d in self._digests):
            raise ValueError("every API key digest must be a sha256: 64 hex digits")
        self.rate_rps, self.burst, self._clock = rate_rps, burst, clock
        self._buckets: dict[str, TokenBucket] = {}

    @classmethod
    def from_settings(cls, settings) -> ApiKeys | None:
        """The keys the settings name; None when none are configured (the endpoints are open)."""
        digests = []
        if settings.api_keys is not None:
            digests += [key_digest(k.strip()) for k in settings.api_keys.get_secret_value().split(",") if k.strip()]
        if settings.api_keys_file is not None:
            path = Path(settings.api_keys_file)
            try:
                lines = path.read_text().splitlines()
            except OSError as e:
                raise ValueError(f"TWINSERVE_API_KEYS_FILE {path}: {e.strerror}") from None
            for n, line in enumerate(lines, 1):
                line = line.split("#", 1)[0].strip().lower()
                if not line:
                    continue
                if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
                    raise ValueError(f"TWINSERVE_API_KEYS_FILE {path} line {n}: expected a sha256 hex digest "
                                     "(64 hex digits; `printf %s KEY | sha256sum`), not a key")
                digests.append(line)
        if not digests:
            return None
        return cls(digests, rate_rps=settings.api_key_rate_rps, burst=settings.api_key_burst)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> str:
        """The key id of a valid ``Authorization: Bearer <key>``; raises :class:`AuthError` otherwise."""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AuthError(401, "missing API key: send Authorization: Bearer <key>")
        digest = hashlib.sha256(given.strip().encode("utf-8")).digest()
        match = False
        for known in self._digests:  # every one, so the time does not say which matched
            match |= hmac.compare_digest(digest, known)
        if not match:
            raise AuthError(401, "invalid API key")
        key_id = digest.hex()[:8]
        if self.rate_rps is not None:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = TokenBucket(self.rate_rps, self.burst, self._clock)
            wait_s = bucket.take()
            if wait_s > 0:
                raise AuthError(429, f"API key {key_id} is over its rate of {self.rate_rps:g} requests/s; "
                                     f"retry after {math.ceil(wait_s)} s", retry_after_s=math.ceil(wait_s))
        return key_id
