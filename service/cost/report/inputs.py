"""What the report reads besides capacity files: the manifest, bench results, Prometheus (live shadow
agreement) and the serving config's routing weights."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from pydantic import ValidationError

from service._schema import load_json
from service.cost.prometheus import Fetch, PromQL, PrometheusError, http_get
from service.cost.report.schema import DEFAULT_SHADOW_METRIC, LiveShadow, ReportError


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path):
    from service.artifacts.manifest import ArtifactIntegrityError, load_manifest

    try:
        return load_manifest(path if path.is_dir() else path.parent)
    except ArtifactIntegrityError as e:
        raise ReportError(str(e)) from None


def read_bench(path: Path):
    from service.bench import BenchResult

    return load_json(path, BenchResult, what="twinserve bench result", error=ReportError,
                     missing="run `twinserve bench` first")


def query_shadow_agreement(prometheus_url: str, *, metric: str = DEFAULT_SHADOW_METRIC, window: str = "1h",
                           fetch: Fetch = http_get) -> dict[str, LiveShadow]:
    """Mean live shadow cosine and sample count per shadow variant over ``window`` (Prometheus HTTP API)."""
    prom = PromQL(prometheus_url, fetch)
    queries = {
        "mean": f"sum by (variant) (increase({metric}_cosine_sum_total[{window}])) / "
                f"sum by (variant) (increase({metric}_texts_total[{window}]))",
        "count": f"sum by (variant) (increase({metric}_texts_total[{window}]))",
    }
    got: dict[str, dict[str, float]] = {}
    for key, q in queries.items():
        try:
            result = prom.query_raw(q)
        except PrometheusError as e:
            raise ReportError(str(e)) from None
        got[key] = {}
        for item in result:
            v = float(item["value"][1])
            if math.isfinite(v):
                got[key][item.get("metric", {}).get("variant", "unknown")] = v
    out = {}
    for variant in sorted(set(got["mean"]) | set(got["count"])):
        out[variant] = LiveShadow(mean_cosine=got["mean"].get(variant), samples=got["count"].get(variant),
                                  query=queries["mean"])
    return out


def dense_share_from_serve_config(path: str | Path) -> float:
    """The dense routing weight of a Ray Serve config (``deploy/serve_config.yaml``).

    The Router deployment's ``user_config`` wins, as it does when the config is deployed; without one,
    the application's ``args.routing``; without either, the serving default.
    """
    import yaml

    from service.serving.config import RoutingConfig

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"serving config {path} not found; pass --dense-share instead") from None
    except yaml.YAMLError as e:
        raise ReportError(f"{path} is not YAML: {e}") from None
    apps = [a for a in (doc or {}).get("applications") or [] if isinstance(a, dict)]
    ours = [a for a in apps if str(a.get("import_path", "")).startswith("service.serving.app:")] or apps
    if not ours:
        raise ReportError(f"{path} has no applications; pass --dense-share instead")
    app = ours[0]
    routing = next((d.get("user_config") for d in app.get("deployments") or []
                    if d.get("name") == "Router" and d.get("user_config") is not None), None)
    if routing is None:
        routing = (app.get("args") or {}).get("routing") or {}
    try:
        return RoutingConfig.model_validate(routing).weights.dense
    except ValidationError as e:
        raise ReportError(f"{path}: the Router's routing config is invalid: {e}") from None
