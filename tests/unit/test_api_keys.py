"""API keys and per-key token buckets, without Ray (service/serving/auth.py)."""

from __future__ import annotations

import pytest

from service.serving.auth import ApiKeys, AuthError, TokenBucket, key_digest
from service.settings import Settings


def test_a_valid_bearer_key_gives_its_short_id_and_anything_else_is_401():
    keys = ApiKeys([key_digest("alpha-key"), key_digest("beta-key")])
    assert keys.check("Bearer beta-key") == key_digest("beta-key")[:8]
    assert keys.check("bearer  alpha-key ") == key_digest("alpha-key")[:8]
    for header in [None, "", "Bearer", "Basic alpha-key", "Bearer alpha", "Bearer ALPHA-KEY"]:
        with pytest.raises(AuthError) as e:
            keys.check(header)
        assert e.value.status == 401 and "alpha" not in str(e.value)  # never echoes what was sent


def test_keys_come_from_the_environment_or_a_file_of_digests(tmp_path, monkeypatch):
    monkeypatch.delenv("TWINSERVE_API_KEYS", raising=False)
    monkeypatch.delenv("TWINSERVE_API_KEYS_FILE", raising=False)
    assert ApiKeys.from_settings(Settings()) is None  # nothing configured: the endpoints are open
    monkeypatch.setenv("TWINSERVE_API_KEYS", "one, two,")
    assert len(ApiKeys.from_settings(Settings())) == 2
    f = tmp_path / "keys.sha256"
    f.write_text(f"# ops team\n{key_digest('three')}\n\n{key_digest('four').upper()}  # ci\n")
    monkeypatch.setenv("TWINSERVE_API_KEYS_FILE", str(f))
    keys = ApiKeys.from_settings(Settings())
    assert len(keys) == 4 and keys.check("Bearer four") == key_digest("four")[:8]
    f.write_text("three\n")  # a key where its digest belongs
    with pytest.raises(ValueError, match="line 1: expected a sha256 hex digest"):
        ApiKeys.from_settings(Settings())


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate_rps=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    now[0] = 0.5  # one token back
    assert bucket.take() == 0.0 and bucket.take() == pytest.approx(0.5)


def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not():
    now = [0.0]
    keys = ApiKeys([key_digest("a"), key_digest("b")], rate_rps=0.5, burst=1, clock=lambda: now[0])
    keys.check("Bearer a")
    with pytest.raises(AuthError) as e:
        keys.check("Bearer a")
    assert e.value.status == 429 and e.value.retry_after_s == 2
    assert keys.check("Bearer b") == key_digest("b")[:8]
