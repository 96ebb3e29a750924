"""One real Ray Serve instance per test session, deployed the way `serve deploy` does it.

The application is deployed from deploy/serve_config.yaml (artifact directory, ports and CPU
reservations replaced for the test) through the controller's `deploy_apps`, the call behind
`serve run config.yaml` and `serve deploy`; so a change of the Router's user_config is the same
in-place reconfigure production gets. Ray's metrics export port is fixed per session
(``ServeApp.metrics_port``) and its report interval lowered to 1 s, for the Prometheus test.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from service._platform import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "integration-test-token"
INITIAL_WEIGHTS = {"dense": 0.3, "pruned": 0.7}
# Exported as ray_twinserve_instance_price_usd_per_hour{variant}; the Prometheus test reads them back.
PRICES_USD_PER_HOUR = {"dense": 1.006, "pruned": 0.17}
# Ray exports custom metrics every metrics_report_interval_ms (default 10 s); 1 s keeps the
# Prometheus test short. A Ray system config, scoped to the session's Ray instance.
METRICS_REPORT_INTERVAL_MS = 1000


DEPLOY_TIMEOUT_S = 300  # a loaded 2-core machine can take minutes to start replicas


def deploy_and_wait(config: dict, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """``serve deploy`` the config and wait until every application is RUNNING.

    Ray's own ``deploy_apps(_blocking=True)`` gives up after a fixed 60 s; this waits longer and,
    when an application fails or times out, says why (the deployments' status messages).
    """
    from ray.serve._private.api import _get_global_client
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate(copy.deepcopy(config)))
    names = {a["name"] for a in config["applications"]}
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = {s.name: s.app_status for s in client.list_serve_statuses() if s.name in names}
        if len(statuses) == len(names) and all(s.status == ApplicationStatus.RUNNING for s in statuses.values()):
            break
        failed = {n: s.message for n, s in statuses.items() if s.status == ApplicationStatus.DEPLOY_FAILED}
        assert not failed, f"deploy failed: {failed}"
        assert time.monotonic() < deadline, f"not RUNNING after {timeout_s} s: {statuses}"
        time.sleep(0.5)
    client.wait_for_proxies_serving(wait_for_applications_running=True)




@dataclass
class ServeApp:
    url: str
    http: httpx.Client
    config: dict  # the ServeDeploySchema as a dict, as last deployed
    artifact_dir: Path
    metrics_port: int  # Ray's metrics export port (Prometheus text format at /metrics)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def routing(self) -> dict:
        r = self.http.get("/admin/routing", headers=self.admin)
        r.raise_for_status()
        return r.json()

    def deploy(self, user_config: dict | None = None) -> None:
        """Redeploy the config, changing only the Router's user_config (what `serve deploy` does)."""
        if user_config is not None:
            (router,) = [d for d in self.config["applications"][0]["deployments"] if d["name"] == "Router"]
            router["user_config"] = user_config
        deploy_and_wait(self.config)


@pytest.fixture(scope="session")
def serve_app(tiny_artifacts) -> ServeApp:
    import ray
    from ray import serve
    port, metrics_port = free_port(), free_port()
    cfg = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    cfg["http_options"].update(host="127.0.0.1", port=port)
    app = cfg["applications"][0]
    app["args"]["artifact_dir"] = str(tiny_artifacts)
    app["args"]["dense"]["num_cpus"] = 0.5
    app["args"]["router"]["num_cpus"] = 0.5  # two ingress replicas, one runtime thread each
    # Prices are per replica: the instance's price times the replica's share of it. The two ingress
    # replicas (the CPU variant) share one instance here, so each exports half of it.
    app["args"]["dense"]["price_usd_per_hour"] = PRICES_USD_PER_HOUR["dense"]
    app["args"]["pruned"]["price_usd_per_hour"] = PRICES_USD_PER_HOUR["pruned"] / app["args"]["router"]["num_replicas"]
    app["deployments"][0]["user_config"] = {"weights": dict(INITIAL_WEIGHTS), "shadow_fraction": 0.0}

    saved = {k: os.environ.get(k) for k in ("TWINSERVE_ADMIN_TOKEN", "PYTHONPATH")}
    # Inherited by the raylet and so by every replica and the build task.
    os.environ["TWINSERVE_ADMIN_TOKEN"] = ADMIN_TOKEN
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    # Logical CPUs: reservations only; the machine has 2 cores, shared.
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy_and_wait(cfg)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 60, poll_s=0.2)
        with httpx.Client(base_url=url, timeout=60) as http:
            yield ServeApp(url, http, cfg, Path(tiny_artifacts), metrics_port)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="session")
def tight_app(serve_app):
    """A second application on the same Serve instance: one ingress replica whose CPU variant takes one
    request at a time, and it truncates inputs to 16 tokens (and 200 characters) instead of rejecting them."""
    app = {
        "name": "tight", "route_prefix": "/tight", "import_path": "service.serving.app:build_app",
        "args": {
            "artifact_dir": str(serve_app.artifact_dir),
            # The CPU batch waits 0.5 s for company: one request in it, the rest shed.
            "pruned": {"max_batch_size": 32, "max_queued_requests": 1, "batch_wait_timeout_s": 0.5},
            "dense": {"num_cpus": 0.25, "max_batch_size": 32, "max_ongoing_requests": 64, "max_queued_requests": 64},
            "router": {"num_replicas": 1, "num_cpus": 0.25, "retry_after_s": 2},
            "limits": {"over_token_limit": "truncate", "max_tokens_per_input": 16, "max_chars_per_input": 200},
        },
        "deployments": [{"name": "Router", "user_config": {"weights": {"dense": 0.0, "pruned": 1.0}}}],
    }
    # Part of the session's config from now on, so a later `serve_app.deploy()` keeps it.
    serve_app.config["applications"].append(app)
    deploy_and_wait(serve_app.config)
    yield f"{serve_app.url}/tight"
    serve_app.config["applications"].remove(app)
    deploy_and_wait(serve_app.config)
